"""Do the checkpoint writes, done on a background thread while the next epoch trains, slow
that epoch down? The job of `whole_run_overhead.py` (MNIST-1D KD, 25 epochs, validation
every epoch) runs through `distill run` in fresh processes, in three variants, their order
alternating from round to round:

- `default`: the resume checkpoint and the best weights written every epoch (the writer's
  thread overlaps the next epoch's training);
- `no_fsync`: the same writes with `os.fsync` a no-op (tells the disk wait from the rest);
- `last_only`: `train.checkpoint_every` = the epoch count (one resume checkpoint, at the end).

Reported: the median over rounds of the time spent in the training epochs (no end-of-epoch
work in it) per variant, and, from the `default` runs, each background job's wall and CPU
time (`time.thread_time` on the writer's thread), by kind.

    python benchmarks/writer_overlap.py [--rounds 6] [--epochs 25] [--threads N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import add_threads, fresh_dir
from whole_run_overhead import TEACHER, child_distill

VARIANTS = ("default", "no_fsync", "last_only")


def _timed_jobs(jobs: list) -> None:
    """Wrap every job the background writer is given with a wall and thread-CPU clock."""
    from distill.core import writer

    submit = writer.BackgroundWriter.submit

    def timed_submit(self, job):
        def timed():
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return job()
            finally:
                kind = getattr(job, "__qualname__", "job").replace(".<locals>", "")
                jobs.append((kind, time.perf_counter() - t0, time.thread_time() - c0))

        return submit(self, timed)

    writer.BackgroundWriter.submit = timed_submit


def child(variant: str, work: Path, args: argparse.Namespace) -> dict:
    from distill.app.startup import settle_startup

    settle_startup()  # as `distill run` starts
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    jobs: list = []
    _timed_jobs(jobs)
    if variant == "no_fsync":
        os.fsync = lambda fd: None
    every = args.epochs if variant == "last_only" else 1
    run = argparse.Namespace(epochs=args.epochs, eval_every=1, checkpoint_every=every, seed=0)
    work.mkdir(parents=True, exist_ok=True)
    return {**child_distill(work, run), "jobs": jobs}


def _summary(jobs: list) -> dict:
    kinds: dict[str, list] = {}
    for kind, wall, cpu in jobs:
        kinds.setdefault(kind, []).append((wall, cpu))
    return {
        k: {
            "count": len(v),
            "wall_ms": round(1e3 * statistics.median(w for w, _ in v), 2),
            "cpu_ms": round(1e3 * statistics.median(c for _, c in v), 2),
        }
        for k, v in kinds.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--child", choices=VARIANTS)
    ap.add_argument("--work", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    add_threads(ap)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.work, args)))
        return
    root = fresh_dir(args.out, "writer-overlap-")
    import torch

    from distill.core.checkpoint import save_weights
    from distill.data import load_dataset
    from distill.models import build_model

    data = load_dataset("mnist1d")
    torch.manual_seed(0)
    teacher = build_model(TEACHER["name"], data.input_shape, data.num_classes, TEACHER["args"])
    save_weights(root / "teacher.safetensors", teacher)
    train: dict[str, list[float]] = {v: [] for v in VARIANTS}
    jobs: list = []
    for r in range(args.rounds):
        for v in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
            cmd = [sys.executable, __file__, "--child", v, "--work", str(root / f"{v}-{r}")]
            cmd += ["--epochs", str(args.epochs)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{v} failed:\n{done.stderr[-3000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            train[v].append(row["train"])
            if v == "default":
                jobs += row["jobs"]
        print(f"round {r}: " + ", ".join(f"{v} {train[v][-1]:.2f} s" for v in VARIANTS))
    out = {
        "benchmark": "writer_overlap",
        "epochs": args.epochs,
        "rounds": args.rounds,
        "train_seconds_median": {v: statistics.median(x) for v, x in train.items()},
        "default_over_last_only": statistics.median(
            a / b for a, b in zip(train["default"], train["last_only"])
        ),
        "writer_jobs_default": _summary(jobs),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
