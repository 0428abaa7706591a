"""Helpers shared by the benchmark scripts (run as `python benchmarks/NAME.py`)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from distill.app.build import build
from distill.core.config import parse_config
from distill.core.logs import MetricsLog
from distill.loop.trainer import Trainer


def median_ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of the paired ratio times[a][r] / times[b][r]: each round's two
    times were measured side by side, so machine drift between rounds cancels."""
    return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))


class EpochRunner:
    """One `distill` run from a config dict, advanced an epoch at a time (what `Trainer.fit`
    does, unrolled), so that several runs can be interleaved epoch by epoch."""

    def __init__(self, cfg: dict[str, Any]):
        run_dir = Path(cfg["run_dir"])
        built = build(parse_config(cfg))
        self.built = built
        self.trainer = Trainer(
            built.scheme, built.data.train, built.data.val, built.cfg.train, run_dir=run_dir
        )
        cache = getattr(built.scheme, "teacher_cache", None)
        if cache is not None:
            cache.ensure()  # built once, before the timed loop (reused across runs)
        run_dir.mkdir(parents=True)
        self.log = MetricsLog(run_dir)

    def epoch(self) -> float:
        """Train one epoch (timed), then evaluate and checkpoint it (not timed)."""
        start = time.perf_counter()
        self.trainer._train_epoch()
        spent = time.perf_counter() - start
        self.trainer._end_epoch(self.log)
        return spent
