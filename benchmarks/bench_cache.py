"""A `distill bench` under augmentation: the augmentation-exact teacher cache, shared by every
method of a seed, against the live teacher.

The digits as an image folder (`distill sample-data`), random crops and flips (seeded per
sample); a ResNet teacher (widths 64/128/256, 2 blocks per stage: about 40x the student's
compute) trained once; 5 logit methods (kd, dkd, dist, ttm, ls_kd) plus the
bench's scratch student, x 3 seeds, 10 epochs, one job at a time. The same bench runs twice:
`train.cache.mode: auto` (the teacher's outputs on every epoch's views computed once per
seed, reused by the 5 methods) and `off` (live teacher). Reported: the total wall time of
each and their ratio (target <= 0.75), and whether every run's test accuracy is identical
to its live-teacher twin's.

    python benchmarks/bench_cache.py [--out DIR] [--epochs 10]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from distill.data.samples import write_digits

TEACHER = {"name": "resnet", "args": {"widths": [64, 128, 256], "blocks_per_stage": 2}}
METHODS = {
    "dkd": {"task_weight": 1.0, "terms": [{"loss": "dkd", "weight": 1.0}]},
    "dist": {"task_weight": 1.0, "terms": [{"loss": "dist", "weight": 1.0}]},
    "ttm": {"task_weight": 0.1, "terms": [{"loss": "ttm", "weight": 0.9}]},
    "ls_kd": {"task_weight": 0.1, "terms": [{"loss": "ls_kd", "weight": 0.9}]},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_data/bench_cache")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    data = write_digits(out / "data", hf=False)
    options = {
        "train": str(data / "digits_png" / "train"),
        "test": str(data / "digits_png" / "test"),
        "mode": "L",
        "train_transforms": [{"random_crop": {"size": 8, "padding": 1}}, "hflip"],
    }
    teacher_cfg = {
        "name": "teacher",
        "run_dir": str(out / "teacher"),
        "scheme": "supervised",
        "data": {"name": "image_folder", "options": options},
        "student": TEACHER,
        "train": {"epochs": 15, "batch_size": 64, "progress": False},
    }
    if not (out / "teacher" / "results.json").is_file():
        (out / "teacher.yaml").write_text(yaml.safe_dump(teacher_cfg))
        subprocess.run(["distill", "run", str(out / "teacher.yaml"), "--overwrite"], check=True)
    times, acc = {}, {}
    for mode in ("auto", "off"):
        base = {
            "name": f"bench-{mode}",
            "data": {"name": "image_folder", "options": options},
            "teacher": {**TEACHER, "weights": str(out / "teacher")},
            "student": {"name": "convnet", "args": {"channels": [8, 16]}},
            "train": {
                "epochs": args.epochs,
                "batch_size": 64,
                "progress": False,
                "cache": {"mode": mode, "dir": str(out / f"cache-{mode}")},
            },
        }
        (out / f"base-{mode}.yaml").write_text(yaml.safe_dump(base))
        spec = {
            "name": f"cache {mode}",
            "base": str(out / f"base-{mode}.yaml"),
            "out": str(out / f"bench-{mode}"),
            "jobs": 1,
            "seeds": [0, 1, 2],
            "methods": METHODS,
        }
        (out / f"spec-{mode}.yaml").write_text(yaml.safe_dump(spec))
        for stale in (out / f"bench-{mode}", out / f"cache-{mode}"):
            shutil.rmtree(stale, ignore_errors=True)
        start = time.perf_counter()
        subprocess.run(["distill", "bench", str(out / f"spec-{mode}.yaml")], check=True)
        times[mode] = time.perf_counter() - start
        acc[mode] = {
            str(p.parent.relative_to(out / f"bench-{mode}")): json.loads(p.read_text())["test_acc"]
            for p in sorted((out / f"bench-{mode}").rglob("results.json"))
            if "seed" in p.parent.name
        }
        print(f"cache {mode}: {times[mode]:.1f} s for {len(acc[mode])} runs", file=sys.stderr)
    same = {k: acc["auto"][k] == acc["off"].get(k) for k in acc["auto"]}
    print(
        json.dumps(
            {
                "seconds_cached": times["auto"],
                "seconds_live": times["off"],
                "ratio": times["auto"] / times["off"],
                "runs": len(same),
                "identical_test_acc": all(same.values()),
                "differing": [k for k, v in same.items() if not v],
            }
        )
    )


if __name__ == "__main__":
    main()
