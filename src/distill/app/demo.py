"""`distill demo`: a teacher, a student from scratch and the same student distilled, side by side.

All three runs share one recipe (data, optimizer, schedule, epochs, seed); the only
difference between the two students is the objective. The table reports what a user
deciding whether to ship the student needs: accuracy, size, speed and agreement with
the teacher.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

from distill.app.build import build, weights_path
from distill.app.run import run_experiment
from distill.core.config import parse_config
from distill.core.errors import ensure_complete
from distill.core.table import format_table
from distill.evaluate import predict_logits
from distill.metrics import agreement
from distill.models.weights import restore_weights
from distill.profile import count_parameters, file_size, latency_ms

# One recipe per dataset. The setting is the everyday reason to distil: plenty of inputs,
# few labels. Only `train_samples` training samples keep their labels; the rest stay as
# unlabelled inputs (`unlabeled: true`). Teacher and scratch student learn from the labels
# alone; the KD student also learns from the teacher's outputs on every input. All three
# see the same batches, augmentations, optimizer, schedule and seed. How this setting was
# chosen (and where KD does not pay) is measured in docs/does-distillation-pay.md.
_AUG = [{"name": "shift", "args": {"max_shift": 3}}, {"name": "noise", "args": {"std": 0.1}}]
_KD = {"task_weight": 0.1, "terms": [{"loss": "kd", "weight": 0.9, "args": {"temperature": 4.0}}]}
RECIPES: dict[str, dict[str, Any]] = {
    "mnist1d": {
        "data": {"name": "mnist1d", "train_samples": 1000, "unlabeled": True, "augment": _AUG},
        "teacher": {"name": "convnet", "args": {"channels": [32, 64, 64]}},
        "student": {"name": "convnet", "args": {"channels": [8, 16, 16]}},
        "kd": _KD,
        "train": {
            "epochs": 60,
            "batch_size": 64,
            "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 0.0005},
            "schedule": {"name": "cosine", "warmup_steps": 50},
        },
    },
    "digits": {
        "data": {"name": "digits", "train_samples": 300, "unlabeled": True},
        "teacher": {
            "name": "convnet",
            "args": {"channels": [32, 64], "kernel_size": 3, "hidden": 128},
        },
        "student": {"name": "mlp", "args": {"hidden": [16]}},
        "kd": _KD,
        "train": {
            "epochs": 60,
            "batch_size": 64,
            "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 0.0005},
            "schedule": {"name": "cosine", "warmup_steps": 20},
        },
    },
}


def demo_configs(
    dataset: str, out: Path, seed: int = 0, epochs: int | None = None, progress: bool = False
) -> dict[str, dict[str, Any]]:
    """The three configs (as plain dicts, exactly what YAML would hold) the demo runs."""
    r = copy.deepcopy(RECIPES[dataset])
    train = {**r["train"], "seed": seed, "progress": progress}
    if epochs is not None:
        train["epochs"] = epochs
    common = {"data": r["data"], "train": train}
    return {
        "teacher": {
            **common,
            "name": "teacher",
            "run_dir": str(out / "teacher"),
            "scheme": "supervised",
            "student": r["teacher"],
        },
        "student-scratch": {
            **common,
            "name": "student-scratch",
            "run_dir": str(out / "student-scratch"),
            "scheme": "supervised",
            "student": r["student"],
        },
        "student-kd": {
            **common,
            "name": "student-kd",
            "run_dir": str(out / "student-kd"),
            "scheme": "offline",
            "student": r["student"],
            "objective": r["kd"],
            "teacher": {**r["teacher"], "weights": str(out / "teacher")},
        },
    }


def _profile(cfg_dict: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Rebuild a finished run's model with its best weights; measure its cost."""
    cfg = parse_config({**cfg_dict, "scheme": "supervised", "objective": {}, "teacher": None})
    built = build(cfg)
    path = weights_path(cfg_dict["run_dir"])
    restore_weights(built.student, path, cfg_dict["name"])
    lat = latency_ms(built.student, built.data.input_shape, batch_size=1)
    cost = {
        "params": count_parameters(built.student),
        "size_bytes": file_size(path),
        "latency_ms": lat["p50_ms"],
    }
    return built, cost


def run_demo(
    dataset: str = "mnist1d",
    out: Path = Path("runs/demo"),
    seed: int = 0,
    epochs: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train the three models, then measure each one's best weights on the test set."""
    configs = demo_configs(dataset, Path(out), seed, epochs, progress)
    results = {}
    for i, (name, c) in enumerate(configs.items()):
        if progress:  # which of the three models the epoch lines below belong to
            print(f"demo: training {name} ({i + 1} of {len(configs)})", file=sys.stderr)
        results[name] = ensure_complete(run_experiment(parse_config(c), overwrite=True), name)
    profiled = {name: _profile(cfg) for name, cfg in configs.items()}
    test = profiled["teacher"][0].data.test
    logits = {name: predict_logits(built.student, test) for name, (built, _) in profiled.items()}
    rows = [
        {
            "model": name,
            "test_acc": results[name]["test_acc"],
            **cost,
            "agreement": agreement(logits[name], logits["teacher"]),
            "run_dir": configs[name]["run_dir"],
        }
        for name, (_, cost) in profiled.items()
    ]
    train = profiled["teacher"][0].data.train
    labelled = int((train.targets >= 0).sum())
    return {
        "dataset": dataset,
        "seed": seed,
        "epochs": configs["teacher"]["train"]["epochs"],
        "train_labelled": labelled,
        "train_unlabelled": len(train) - labelled,
        "test_samples": len(test),
        "kd_gain": results["student-kd"]["test_acc"] - results["student-scratch"]["test_acc"],
        "rows": rows,
    }


def format_demo(result: dict[str, Any]) -> str:
    headers = [
        "model",
        "test acc",
        "params",
        "size on disk",
        "CPU latency / sample",
        "agreement w/ teacher",
    ]
    rows = [
        [
            r["model"],
            f"{100 * r['test_acc']:.1f}%",
            f"{r['params']:,}",
            f"{r['size_bytes'] / 1024:.1f} KiB",
            f"{1000 * r['latency_ms']:.0f} us",
            f"{100 * r['agreement']:.1f}%",
        ]
        for r in result["rows"]
    ]
    head = (
        f"distill demo: {result['dataset']}, seed {result['seed']}, {result['epochs']} epochs per model; "
        f"{result['train_labelled']} labelled + {result['train_unlabelled']} unlabelled training inputs, "
        f"{result['test_samples']} test samples\n"
    )
    tail = (
        f"\ndistillation vs scratch (same student, recipe and seed): {100 * result['kd_gain']:+.1f} points of test accuracy"
        "\n(latency: median of 200 batch-1 calls on 1 thread; size: the student's safetensors file)"
        "\nfor the spread over seeds run: python benchmarks/demo_seeds.py"
    )
    return head + format_table(headers, rows) + tail
