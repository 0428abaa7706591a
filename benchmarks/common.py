"""What the benchmark scripts share: the thread count, taken from the command line or the
environment, never fixed in a script (a fixed count can be many times slower on a busy
machine)."""

from __future__ import annotations

import argparse
import os


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
