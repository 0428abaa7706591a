"""distill's training epoch against the hand-written one, in one process, epoch by epoch.

`whole_run_overhead.py` runs each side in its own process; on a shared machine the
processes see different neighbours, and single pairs there range over +-25 %. This runs
the same KD job both ways in one process, alternating whole epochs (distill's
`Trainer._train_epoch`, then the hand-written loop of `whole_run_overhead.child_hand`), so
both meet the same machine, and then records one epoch of each with `torch.profiler` to
compare the operators they run.

Reported: the median epoch of each and the median of the paired ratios; the total self CPU
time of the operators in one profiled epoch of each; the operators whose count differs.

    python benchmarks/epoch_same_process.py [--epochs 14] [--threads N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from common import add_threads, apply_threads, fresh_dir
from whole_run_overhead import STUDENT, TEACHER, hand_epoch, trainer_for


def _hand(data, teacher: torch.nn.Module):
    from distill.models import build_model

    student = build_model(STUDENT["name"], data.input_shape, data.num_classes, STUDENT["args"])
    opt = torch.optim.Adam(student.parameters(), lr=0.003, fused=True)
    return hand_epoch(student, teacher, opt, data.train.inputs, data.train.targets)


def _ops(fn) -> dict[str, tuple[int, float]]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as p:
        fn()
    return {e.key: (e.count, e.self_cpu_time_total) for e in p.key_averages()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=14)
    ap.add_argument("--out", type=Path, default=None)
    add_threads(ap)
    args = ap.parse_args()
    if args.epochs < 3:
        ap.error(f"--epochs {args.epochs}: needs at least 3 (the first 2 are warm-up, not timed)")
    threads = apply_threads(args.threads)
    from distill.core.checkpoint import save_weights
    from distill.data import load_dataset
    from distill.loop.loss_sums import LossSums
    from distill.models import build_model

    root = fresh_dir(args.out, "epoch-same-process-")
    work = root / "work"
    work.mkdir(parents=True, exist_ok=True)
    data = load_dataset("mnist1d")
    torch.manual_seed(0)
    teacher = build_model(TEACHER["name"], data.input_shape, data.num_classes, TEACHER["args"])
    save_weights(root / "teacher.safetensors", teacher)
    teacher.eval().requires_grad_(False)
    t = trainer_for(work, 10_000, 1, 1)
    t.losses = LossSums()
    hand = _hand(data, teacher)

    def distill_epoch() -> None:
        t._train_epoch()
        t.state["epoch"] += 1
        t.state["batch"] = 0

    d, h = [], []
    for e in range(args.epochs):
        t0 = time.perf_counter()
        distill_epoch()
        d.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        hand(e)
        h.append(time.perf_counter() - t0)
    d, h = d[2:], h[2:]  # the first epochs warm up both
    ops_d, ops_h = _ops(distill_epoch), _ops(lambda: hand(0))
    differ = {
        k: [ops_d.get(k, (0, 0))[0], ops_h.get(k, (0, 0))[0]]
        for k in sorted(set(ops_d) | set(ops_h))
        if ops_d.get(k, (0, 0))[0] != ops_h.get(k, (0, 0))[0]
    }
    report = {
        "benchmark": "epoch_same_process",
        "threads": threads,
        "epochs_timed": len(d),
        "median_epoch_ms": {
            "distill": 1e3 * statistics.median(d),
            "hand": 1e3 * statistics.median(h),
        },
        "epoch_ratio": statistics.median(a / b for a, b in zip(d, h)),
        "profiled_self_cpu_ms": {
            "distill": sum(v[1] for v in ops_d.values()) / 1e3,
            "hand": sum(v[1] for v in ops_h.values()) / 1e3,
        },
        "operator_counts_that_differ": differ,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
