"""What the benchmark scripts share: the thread count, taken from the command line or the
environment, never fixed in a script (a fixed count can be many times slower on a busy
machine)."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path


def add_threads(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get("DISTILL_BENCH_THREADS", "0")) or None,
        help="torch threads (default: $DISTILL_BENCH_THREADS, else torch's own default)",
    )


def apply_threads(threads: int | None) -> int:
    """Set torch's thread count when one was given; return the count in use (for reports)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def fresh_dir(out: Path | None, prefix: str) -> Path:
    """A new folder for this call's runs: under `out` when given (made if missing), else
    under the system's temporary folder. A second call with the same `--out` gets its own
    folder, so it neither collides with the runs of the first ("already holds a run") nor
    touches what they wrote."""
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=out))
