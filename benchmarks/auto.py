"""Does `distill auto` find what an exhaustive grid finds, for a fraction of its compute?

    python benchmarks/auto.py --datasets digits mnist1d folder table --out runs/bench-auto

For each dataset (scikit-learn's digits; MNIST-1D in the demo's setting, 1,001 labels and
2,600 unlabelled signals; the digits written as an image folder; the breast-cancer table
written as a CSV of raw features) the script trains a teacher, then:

1. runs the grid on the largest student that fits the budget (a quarter of the teacher's
   parameters): every method auto searches, at its defaults, and scratch, each over 3
   seeds, the best single method chosen on validation;
2. runs `distill auto` on the same student (one candidate) and epochs, with a third of the
   grid's wall time as its `--time`;
3. reads the test split once for both and prints, per dataset: the test accuracy (mean
   of 3 seeds) of the student auto hands over ("auto"; scratch when distillation does not
   beat it beyond seed noise) and of the best distilled configuration its search found
   ("found"), the grid's best method's, scratch's, the difference auto - grid, both wall
   times, and the samples that went through the teacher against a live teacher in every
   run.

Results go to <out>/<dataset>/ and a table to stdout and <out>/results.json. The numbers
in the README and docs/auto.md come from this script.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import fresh_dir  # noqa: E402


def _write_table(folder: Path) -> Path:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    path = folder / "breast_cancer.csv"
    header = ",".join(f"f{i}" for i in range(x.shape[1])) + ",label\n"
    path.write_text(header + "".join(",".join(map(str, r)) + f",{t}\n" for r, t in zip(x, y)))
    return path


def _datasets(root: Path) -> dict[str, dict]:
    """name -> (data section, teacher model, epochs)."""
    from distill.data.samples import write_digits

    sample = root / "sample"
    if not (sample / "digits_png").is_dir():
        write_digits(sample, hf=False)
    return {
        "digits": {
            "data": {"name": "digits"},
            "teacher": {"name": "mlp", "args": {"hidden": [256, 128]}},
            "epochs": 20,
        },
        "mnist1d": {
            "data": {
                "name": "mnist1d",
                "train_samples": 1000,
                "unlabeled": True,
                "augment": [
                    {"name": "shift", "args": {"max_shift": 3}},
                    {"name": "noise", "args": {"std": 0.1}},
                ],
            },
            "teacher": {"name": "convnet", "args": {"channels": [32, 64, 64]}},
            "epochs": 30,
        },
        "folder": {
            "data": {
                "name": "image_folder",
                "options": {
                    "train": str(sample / "digits_png/train"),
                    "test": str(sample / "digits_png/test"),
                    "mode": "L",
                },
            },
            "teacher": {"name": "convnet", "args": {"channels": [32, 64]}},
            "epochs": 15,
        },
        "table": {
            "data": {"name": "table", "options": {"train": str(_write_table(root))}},
            "teacher": {"name": "mlp", "args": {"hidden": [128, 128]}},
            "epochs": 30,
        },
    }


def _teacher(spec: dict, folder: Path) -> Path:
    from distill.app.run import run_experiment
    from distill.core.config import parse_config

    data = dict(spec["data"])
    if data["name"] == "table":
        data["options"] = {**data["options"], "scale": "standard"}
    cfg = {
        "name": "teacher",
        "run_dir": str(folder / "teacher"),
        "scheme": "supervised",
        "data": data,
        "student": spec["teacher"],
        "train": {
            "epochs": spec["epochs"],
            "batch_size": 64,
            "progress": False,
            "optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 5e-4},
            "schedule": {"name": "cosine", "warmup_steps": 50},
        },
    }
    result = run_experiment(parse_config(cfg))
    print(f"  teacher: test {100 * result['test_acc']:.1f}%", flush=True)
    return folder / "teacher"


def _settings(spec: dict, teacher_dir: Path, out: Path, **more):
    """Settings as `distill auto` reads them, with the preprocessing it chooses (tables
    standardised), so the grid trains on exactly the data auto does."""
    from distill.app.auto import AutoSettings, choose_preprocessing
    from distill.core.config import validated

    settings = validated(
        {
            "teacher": {**spec["teacher"], "weights": str(teacher_dir)},
            "data": spec["data"],
            "epochs": spec["epochs"],
            "out": str(out),
            "seeds": 3,
            **more,
        },
        AutoSettings,
        "bench",
    )
    return choose_preprocessing(settings)


def _largest_student(settings, data):
    """The largest student that fits the budget, measured (what the grid and auto share)."""
    from distill.app.auto import candidates as cands

    _, teacher = cands.profile_teacher(settings, data)
    return cands.choose(cands.propose(settings, data, teacher), teacher, settings)[0]


def _grid(settings, student, pairing, data) -> tuple[list, float]:
    """Every searched method at its defaults, and scratch, x 3 seeds, on `student`."""
    from distill.app.auto.finals import Arm, run_arms, test_arms
    from distill.app.auto.space import methods_for, objective_for

    arms = [
        Arm(
            key=method,
            role="scratch" if method == "scratch" else "finalist",
            student=student,
            method=method,
            objective=objective_for(method, None, pairing),
            lr=settings.lr,
        )
        for method in ["scratch", *methods_for(pairing, None)]
    ]
    started = time.perf_counter()
    run_arms(arms, [], settings)
    wall = time.perf_counter() - started
    test_arms(arms, data)
    return arms, wall


def prepare(name: str, spec: dict, root: Path):
    """The dataset's folder, its trained teacher (run dir and model), the data auto reads,
    and the budget: a quarter of the teacher's parameters."""
    from distill.app.build import load_data, load_model

    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    print(f"{name}:", flush=True)
    teacher_dir = _teacher(spec, folder)
    probe = _settings(spec, teacher_dir, folder / "probe")
    data = load_data(probe.data)
    teacher_model = load_model(probe.teacher, data, "teacher")
    budget = {"max_params": sum(p.numel() for p in teacher_model.parameters()) // 4}
    return folder, teacher_dir, data, teacher_model, budget


def bench(name: str, spec: dict, root: Path) -> dict:
    from distill.app.auto import auto
    from distill.app.auto.space import pair_layers
    from distill.models import build_model

    folder, teacher_dir, data, teacher_model, budget = prepare(name, spec, root)
    grid_settings = _settings(spec, teacher_dir, folder / "grid", budget=budget)
    student = _largest_student(grid_settings, data)
    model = build_model(
        student.spec["name"], data.input_shape, data.num_classes, student.spec["args"]
    )
    pairing = pair_layers(model, teacher_model, data.num_classes)
    arms, grid_wall = _grid(grid_settings, student, pairing, data)
    best = max(arms, key=lambda a: statistics.mean(a.val))
    scratch = next(a for a in arms if a.role == "scratch")
    started = time.perf_counter()
    result = auto(
        _settings(
            spec, teacher_dir, folder / "auto", budget=budget, time_s=grid_wall / 3,
            max_candidates=1, compress="off",  # the grid's one student, nothing else
        )
    )  # fmt: skip
    auto_wall = time.perf_counter() - started
    summary = json.loads((folder / "auto" / "auto.json").read_text())
    handed = summary["handed_over"]["from_run"]
    auto_arm = next(a for a in summary["comparison"] if handed in a["run_dirs"])
    # what the search found, before the verdict's noise rule (it may hand over scratch)
    found = max(
        (a for a in summary["comparison"] if a["role"] != "scratch"),
        key=lambda a: a["val"]["mean"],
    )
    row = {
        "dataset": name,
        "student": student.label,
        "auto": auto_arm["key"],
        "auto_test": 100 * auto_arm["test"]["mean"],
        "grid_best": best.key,
        "grid_best_test": 100 * float(np.mean(best.test)),
        "scratch_test": 100 * float(np.mean(scratch.test)),
        "auto_minus_grid": 100 * (auto_arm["test"]["mean"] - float(np.mean(best.test))),
        "auto_minus_scratch": 100 * (auto_arm["test"]["mean"] - float(np.mean(scratch.test))),
        "searched_best": found["key"],
        "searched_best_test": 100 * found["test"]["mean"],
        "searched_minus_grid": 100 * (found["test"]["mean"] - float(np.mean(best.test))),
        "auto_wall_s": auto_wall,
        "grid_wall_s": grid_wall,
        "compute_ratio": auto_wall / grid_wall,
        "auto_trials": summary["trials"],
        "teacher_passes_cached": summary["teacher_passes"]["cached"],
        "teacher_passes_live": summary["teacher_passes"]["live"],
        "verdict": result.verdict,
    }
    print(json.dumps(row, indent=1), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["digits", "mnist1d", "folder", "table"])
    ap.add_argument("--out", type=Path, default=Path("runs/bench-auto"))
    args = ap.parse_args()
    root = fresh_dir(args.out, "auto-")
    specs = _datasets(root)
    rows = [bench(name, specs[name], root) for name in args.datasets]
    (root / "results.json").write_text(json.dumps(rows, indent=2))
    print(f"\n{'dataset':8s} {'auto':>7s} {'found':>7s} {'grid':>7s} {'scratch':>7s} {'diff':>6s} "
          f"{'auto s':>7s} {'grid s':>7s} {'ratio':>5s} {'teacher passes':>22s}")  # fmt: skip
    for r in rows:
        print(
            f"{r['dataset']:8s} {r['auto_test']:7.2f} {r['searched_best_test']:7.2f} "
            f"{r['grid_best_test']:7.2f} "
            f"{r['scratch_test']:7.2f} {r['auto_minus_grid']:+6.2f} {r['auto_wall_s']:7.0f} "
            f"{r['grid_wall_s']:7.0f} {r['compute_ratio']:5.2f} "
            f"{r['teacher_passes_cached']:>10,} / {r['teacher_passes_live']:<10,}"
        )
    print(f"results: {root / 'results.json'}")


if __name__ == "__main__":
    main()
