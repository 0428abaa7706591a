"""Every distillation method in examples/ x seeds on the MNIST-1D pair, under one recipe.

    python benchmarks/methods.py --seeds 0 1 2 --jobs 2            # all methods (~40 min on 2 cores)
    python benchmarks/methods.py --methods kd dkd crd --seeds 0 1   # a subset

Each example config is run as written (the demo's data and recipe: 1,001 labels + 2,600
unlabelled MNIST-1D signals, shift/noise augmentation, 60 epochs of AdamW) with its
method's loss weights; only the seed and the run dir change. Teachers are trained once
(seed 0) per teacher architecture; each student architecture gets a scratch baseline
with the same seeds. Prints mean +- sample std of test accuracy per method, the gain over
scratch for the same student, and writes runs/bench-methods/results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).parent.parent


def _run(cfg: dict) -> float:
    torch.set_num_threads(1)  # one core per job
    from distill.app.run import run_experiment
    from distill.core.config import parse_config

    return run_experiment(parse_config(cfg), overwrite=True)["test_acc"]


def _key(spec: dict) -> str:
    return json.dumps({"name": spec["name"], "args": spec.get("args", {})}, sort_keys=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", nargs="*", help="example names (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", default="runs/bench-methods")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    paths = sorted((ROOT / "examples").glob("*.yaml"))
    examples = {
        p.stem: yaml.safe_load(p.read_text())
        for p in paths
        if not args.methods or p.stem in args.methods
    }

    # 1. One teacher per teacher architecture (seed 0), trained on the same data and recipe.
    teachers = {}
    for cfg in examples.values():
        if "teacher" in cfg:
            teachers.setdefault(_key(cfg["teacher"]), cfg)
    teacher_dirs = {}
    jobs = []
    for i, (key, cfg) in enumerate(teachers.items()):
        run_dir = out / f"teacher-{i}"
        teacher_dirs[key] = str(run_dir)
        spec = {k: v for k, v in cfg["teacher"].items() if k != "weights"}
        jobs.append(
            {
                **{k: cfg[k] for k in ("data", "train")},
                "name": f"teacher-{i}",
                "run_dir": str(run_dir),
                "scheme": "supervised",
                "student": spec,
            }
        )
    with ProcessPoolExecutor(args.jobs) as pool:
        teacher_acc = dict(
            zip(
                teacher_dirs,
                pool.map(_run, [{**j, "train": {**j["train"], "progress": False}} for j in jobs]),
            )
        )
    for key, acc in teacher_acc.items():
        print(f"teacher {key}: {100 * acc:.1f}%", flush=True)

    # 2. Scratch baselines per student architecture, and every method, for every seed.
    students = {_key(cfg["student"]): cfg for cfg in examples.values()}
    runs = []  # (label, student_key, seed, cfg)
    for key, cfg in students.items():
        for seed in args.seeds:
            runs.append(
                (
                    "scratch",
                    key,
                    seed,
                    {
                        **{k: cfg[k] for k in ("data", "student")},
                        "train": cfg["train"],
                        "scheme": "supervised",
                        "name": "scratch",
                    },
                )
            )
    for name, cfg in examples.items():
        for seed in args.seeds:
            cfg = dict(cfg)
            if "teacher" in cfg:
                cfg["teacher"] = {**cfg["teacher"], "weights": teacher_dirs[_key(cfg["teacher"])]}
            runs.append((name, _key(cfg["student"]), seed, cfg))
    configs = []
    for i, (label, _, seed, cfg) in enumerate(runs):
        configs.append(
            {
                **cfg,
                "name": f"{label}-{seed}",
                "run_dir": str(out / f"{i:03d}-{label}-{seed}"),
                "train": {**cfg["train"], "seed": seed, "progress": False},
            }
        )
    with ProcessPoolExecutor(args.jobs) as pool:
        accs = list(pool.map(_run, configs))

    results: dict[tuple[str, str], list[float]] = {}
    for (label, skey, _, _), acc in zip(runs, accs):
        results.setdefault((label, skey), []).append(100 * acc)
    print(f"\nMNIST-1D, seeds {args.seeds} (test accuracy, mean +- std):")
    print(f"{'method':14s} {'student':42s} {'acc':>13s}  {'vs scratch':>10s}")
    for (label, skey), values in results.items():
        mean = statistics.mean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        base = statistics.mean(results[("scratch", skey)])
        student = json.loads(skey)
        desc = f"{student['name']} {student['args']}"
        print(f"{label:14s} {desc:42s} {mean:6.1f} +- {std:4.1f}  {mean - base:+10.1f}", flush=True)
    (out / "results.json").write_text(
        json.dumps(
            {
                "teachers": teacher_acc,
                "runs": [{"label": lab, "student": s, "acc": v} for (lab, s), v in results.items()],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
