"""Helpers shared by the benchmark scripts (run as `python benchmarks/NAME.py`)."""

from __future__ import annotations

import statistics


def median_ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of the paired ratio times[a][r] / times[b][r]: each round's two
    times were measured side by side, so machine drift between rounds cancels."""
    return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))
