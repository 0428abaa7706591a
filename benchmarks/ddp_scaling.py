"""Data parallelism: the same KD run on 1 process and on N torchrun processes (gloo on CPU).

MNIST-1D, the 34k-parameter ConvNet teacher (random init: speed only), the 2.9k-parameter
student, global batch 100, 10 epochs, cached teacher. Three launches a round: 1 process,
N processes with the student replicated (data parallel), and N processes with it sharded
(`train.distributed.student: shard`, FSDP). Each launch is timed by its own training loop
(`seconds` in results.json) and end to end; the final weights of the N-process runs are
compared with the 1-process run. 1 process uses all `--threads`; N processes split them.

    python benchmarks/ddp_scaling.py [--nproc 2] [--threads 2] [--epochs 10] [--rounds 2]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import yaml

from distill.app.build import build, load_data, load_model
from distill.core.checkpoint import load_checkpoint, save_weights
from distill.core.config import parse_config
from distill.core.distributed import run_command


def write_config(work: Path, name: str, epochs: int, student: str = "replicate") -> Path:
    cfg = {
        "name": name,
        "run_dir": str(work / name),
        "scheme": "offline",
        "data": {"name": "mnist1d"},
        "teacher": {
            "name": "convnet",
            "args": {"channels": [32, 64, 64]},
            "weights": str(work / "teacher.safetensors"),
        },
        "student": {"name": "convnet", "args": {"channels": [8, 16, 16]}},
        "objective": {
            "task_weight": 0.1,
            "terms": [{"loss": "kd", "weight": 0.9, "args": {"temperature": 4.0}}],
        },
        "train": {
            "epochs": epochs,
            "batch_size": 100,
            "progress": False,
            "device": "cpu",
            "optimizer": {"name": "adam", "lr": 0.003},
            "cache": {"dir": str(work / "cache")},
            "distributed": {"student": student},
        },
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def launch(config: Path, nproc: int, threads: int) -> tuple[float, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(max(threads // nproc, 1))}
    cmd = run_command(str(config), nproc, "--overwrite")
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    results = json.loads((config.parent / config.stem / "results.json").read_text())
    return results["seconds"], wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ddp-scaling-"))
    configs = {
        "one": write_config(work, "one", args.epochs),
        "many": write_config(work, "many", args.epochs),
        "sharded": write_config(work, "sharded", args.epochs, student="shard"),
    }
    base = parse_config(yaml.safe_load(configs["one"].read_text()))
    data = load_data(base.data)
    torch.manual_seed(0)
    save_weights(
        work / "teacher.safetensors",
        load_model(base.teacher.model_copy(update={"weights": None}), data, "t"),
    )
    build(base).scheme.teacher_cache.ensure()  # built once, outside the timings
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in configs}
    for r in range(args.rounds):
        order = [("one", 1), ("many", args.nproc), ("sharded", args.nproc)]
        for name, n in order if r % 2 == 0 else reversed(order):
            times[name].append(launch(configs[name], n, args.threads))
            print(
                f"round {r + 1} {name} ({n} proc): loop {times[name][-1][0]:.2f}s, "
                f"launch {times[name][-1][1]:.2f}s",
                flush=True,
            )

    def weights(name: str) -> dict[str, torch.Tensor]:
        return load_checkpoint(work / name / "checkpoints" / "last.safetensors")["modules"]

    a = weights("one")
    diffs = {
        name: max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
        for name, b in ((n, weights(n)) for n in ("many", "sharded"))
    }
    loop = {k: statistics.median(t for t, _ in v) for k, v in times.items()}
    wall = {k: statistics.median(w for _, w in v) for k, v in times.items()}
    result = {
        "benchmark": "ddp_scaling",
        "nproc": args.nproc,
        "threads": args.threads,
        "epochs": args.epochs,
        "loop_speedup": loop["one"] / loop["many"],
        "launch_speedup": wall["one"] / wall["many"],
        "loop_seconds": loop,
        "launch_seconds": wall,
        "sharded_vs_replicated_loop": loop["sharded"] / loop["many"],
        "samples_per_second": {k: args.epochs * len(data.train) / v for k, v in loop.items()},
        "max_abs_weight_difference": diffs["many"],
        "max_abs_weight_difference_sharded": diffs["sharded"],
    }
    print(
        f"{args.nproc} processes vs 1: loop x{result['loop_speedup']:.2f}, "
        f"launch x{result['launch_speedup']:.2f}; final weights differ by at most "
        f"{diffs['many']:.2e}; sharded / replicated loop time "
        f"{result['sharded_vs_replicated_loop']:.2f} (weights differ by {diffs['sharded']:.2e})"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
