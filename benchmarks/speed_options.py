"""What `train.compile` and `train.channels_last` buy on this machine, each against the default.

Two pairs of `distill` runs, each pair interleaved epoch by epoch (the order alternating) and
started afresh from one seed in every round; times are training epochs only:

1. compile: live-teacher KD on MNIST-1D (the `kd_overhead.py` job: 34k-parameter 1-D CNN
   teacher, 2.9k-parameter student, batch 100, Adam, T = 4), eager vs `torch.compile`
   (inductor). The first epoch, which pays for compilation (once per process: later rounds
   reuse the compiled code), is reported on its own; the ratio is over the remaining
   (steady-state) epochs.
2. channels_last: a 2-D CNN (channels 32, 64; 3x3) trained on the 8x8 digits, batch 64,
   NCHW vs NHWC.

    python benchmarks/speed_options.py [--epochs 8] [--rounds 3]

Ratios are medians over rounds of paired ratios (option / default; < 1 means faster). The
last line printed is one JSON object with every ratio and time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import add_threads, apply_threads  # noqa: E402  (benchmarks/common.py)
from kd_overhead import TEACHER, config
from paired import EpochRunner, median_ratio

from distill.app.build import load_data, load_model
from distill.core.checkpoint import save_weights
from distill.core.config import parse_config


def kd_config(work: Path, teacher: Path, epochs: int, seed: int, compiled: bool) -> dict:
    cfg = config("distill_live", epochs, work / f"kd-{compiled}-{time.perf_counter_ns()}", teacher)
    cfg["train"]["seed"] = seed
    cfg["train"]["compile"] = {"enabled": compiled}
    return cfg


def cnn_config(work: Path, epochs: int, seed: int, nhwc: bool) -> dict:
    return {
        "name": "cnn2d",
        "run_dir": str(work / f"cnn-{nhwc}-{time.perf_counter_ns()}"),
        "scheme": "supervised",
        "data": {"name": "digits"},
        "student": {"name": "convnet", "args": {"channels": [32, 64], "kernel_size": 3}},
        "train": {
            "epochs": epochs,
            "batch_size": 64,
            "progress": False,
            "device": "cpu",
            "seed": seed,
            "optimizer": {"name": "adam", "lr": 0.003},
            "channels_last": nhwc,
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    add_threads(ap)
    args = ap.parse_args()
    apply_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="speed-options-"))
    teacher_path = work / "teacher.safetensors"
    base = parse_config(config("distill_live", 1, work / "base", teacher_path))
    torch.manual_seed(0)
    teacher = load_model(
        base.teacher.model_copy(update={"weights": None}), load_data(base.data), "teacher"
    )
    save_weights(teacher_path, teacher)  # random init: speed does not care
    kinds = ["kd_eager", "kd_compiled", "cnn_nchw", "cnn_nhwc"]
    first: dict[str, list[float]] = {k: [] for k in kinds}
    steady: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        runners = {
            "kd_eager": EpochRunner(kd_config(work, teacher_path, args.epochs, r, False)),
            "kd_compiled": EpochRunner(kd_config(work, teacher_path, args.epochs, r, True)),
            "cnn_nchw": EpochRunner(cnn_config(work, args.epochs, r, False)),
            "cnn_nhwc": EpochRunner(cnn_config(work, args.epochs, r, True)),
        }
        spent = {k: [] for k in kinds}
        for epoch in range(args.epochs):
            for kind in kinds if epoch % 2 == 0 else reversed(kinds):
                spent[kind].append(runners[kind].epoch())
        for kind in kinds:
            first[kind].append(spent[kind][0])
            steady[kind].append(sum(spent[kind][1:]))
        print(
            f"round {r + 1}: "
            + ", ".join(f"{k} {first[k][-1]:.2f}s + {steady[k][-1]:.2f}s" for k in kinds),
            flush=True,
        )
    result = {
        "benchmark": "speed_options",
        "epochs": args.epochs,
        "rounds": args.rounds,
        "torch": torch.__version__,
        "compiled_vs_eager_steady": median_ratio(steady, "kd_compiled", "kd_eager"),
        # compilation happens once per process: later rounds reuse the compiled code
        "compile_seconds": first["kd_compiled"][0] - first["kd_eager"][0],
        "channels_last_vs_default": median_ratio(steady, "cnn_nhwc", "cnn_nchw"),
        "median_steady_seconds": {k: statistics.median(v) for k, v in steady.items()},
        "median_first_epoch_seconds": {k: statistics.median(v) for k, v in first.items()},
        "teacher": TEACHER,
    }
    print(
        f"torch.compile / eager (steady epochs): {result['compiled_vs_eager_steady']:.3f}, "
        f"compiling took {result['compile_seconds']:.1f}s (once per process); "
        f"channels_last / default: {result['channels_last_vs_default']:.3f}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
