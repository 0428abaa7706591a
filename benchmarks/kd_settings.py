"""When does distillation pay on MNIST-1D? Scratch vs KD students over seeds, per setting.

    python benchmarks/kd_settings.py base few1000 few1000-unlabeled-aug --seeds 0 1 2

Every setting trains one teacher (seed 0) on exactly the data the students get, then,
for each seed, a scratch student (labels only) and a KD student (0.1 CE + 0.9 KD, T=4
unless the setting says otherwise) with the same recipe and seed. Printed: teacher test
accuracy, and mean +- sample std of student test accuracy over seeds.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

from distill.app.run import run_experiment
from distill.core.config import parse_config

TEACHER = {"name": "convnet", "args": {"channels": [32, 64, 64]}}
SMALL = {"channels": [8, 16, 16]}  # 2.9k parameters
WIDE = {"channels": [16, 32, 32]}  # 9.6k parameters
AUG = [{"name": "shift", "args": {"max_shift": 3}}, {"name": "noise", "args": {"std": 0.1}}]
BASE = {
    "data": {"name": "mnist1d"},
    "train": {
        "epochs": 30,
        "batch_size": 64,
        "progress": False,
        "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 0.0005},
        "schedule": {"name": "cosine", "warmup_steps": 50},
    },
}

# name: (overrides of BASE, student args, KD temperature)
SETTINGS = {
    "base": ({}, SMALL, 4.0),
    "aug60": ({"data": {"augment": AUG}, "train": {"epochs": 60}}, SMALL, 4.0),
    "aug60-wide": ({"data": {"augment": AUG}, "train": {"epochs": 60}}, WIDE, 4.0),
    "few1000": ({"data": {"train_samples": 1000}, "train": {"epochs": 100}}, SMALL, 4.0),
    "few1000-T2": ({"data": {"train_samples": 1000}, "train": {"epochs": 100}}, SMALL, 2.0),
    "few1000-wide": ({"data": {"train_samples": 1000}, "train": {"epochs": 100}}, WIDE, 4.0),
    "few1000-aug": (
        {"data": {"train_samples": 1000, "augment": AUG}, "train": {"epochs": 100}},
        SMALL,
        4.0,
    ),
    "few1000-unlabeled": (
        {"data": {"train_samples": 1000, "unlabeled": True}, "train": {"epochs": 60}},
        SMALL,
        4.0,
    ),
    "few1000-unlabeled-aug": (
        {
            "data": {"train_samples": 1000, "unlabeled": True, "augment": AUG},
            "train": {"epochs": 60},
        },
        SMALL,
        4.0,
    ),
}


def merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = (
            merge(out[k], v)
            if isinstance(v, dict) and isinstance(out.get(k), dict)
            else copy.deepcopy(v)
        )
    return out


def run(cfg: dict, run_dir: Path) -> dict:
    return run_experiment(
        parse_config({**cfg, "name": run_dir.name, "run_dir": str(run_dir)}), overwrite=True
    )


def measure(name: str, seeds: list[int], out: Path) -> dict:
    overrides, student, temperature = SETTINGS[name]
    common = merge(BASE, overrides)
    teacher_dir = out / name / "teacher"
    teacher = run(merge(common, {"scheme": "supervised", "student": TEACHER}), teacher_dir)
    kd = {
        "task_weight": 0.1,
        "terms": [{"loss": "kd", "weight": 0.9, "args": {"temperature": temperature}}],
    }
    accs: dict[str, list[float]] = {"scratch": [], "kd": []}
    for seed in seeds:
        cfg = merge(
            common, {"student": {"name": "convnet", "args": student}, "train": {"seed": seed}}
        )
        accs["scratch"].append(
            run(merge(cfg, {"scheme": "supervised"}), out / name / f"scratch-{seed}")["test_acc"]
        )
        kd_cfg = merge(
            cfg,
            {
                "scheme": "offline",
                "objective": kd,
                "teacher": {**TEACHER, "weights": str(teacher_dir)},
            },
        )
        accs["kd"].append(run(kd_cfg, out / name / f"kd-{seed}")["test_acc"])
    return {"setting": name, "teacher": teacher["test_acc"], **accs}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("settings", nargs="+", choices=list(SETTINGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/kd-settings")
    args = parser.parse_args()
    for name in args.settings:
        r = measure(name, args.seeds, Path(args.out))
        stats = {
            k: (100 * statistics.mean(r[k]), 100 * statistics.stdev(r[k]) if len(r[k]) > 1 else 0.0)
            for k in ("scratch", "kd")
        }
        print(
            f"{name:24s} teacher {100 * r['teacher']:.1f}  scratch {stats['scratch'][0]:.1f} +- {stats['scratch'][1]:.1f}"
            f"  KD {stats['kd'][0]:.1f} +- {stats['kd'][1]:.1f}  gain {stats['kd'][0] - stats['scratch'][0]:+.1f}",
            flush=True,
        )
        print(json.dumps(r))


if __name__ == "__main__":
    main()
