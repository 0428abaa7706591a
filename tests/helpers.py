"""Tiny configs on the synthetic dataset, shared by the tests, and the paths they read.

The tests are arranged as the package is (`tests/losses/` for `distill/losses/`, ...);
this module and `conftest.py` sit at the top of `tests/`, which is on the import path."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.app.build import build
from distill.core.checkpoint import save_weights
from distill.core.config import parse_config

TESTS_DIR = Path(__file__).resolve().parent  # tests/: helpers, fault_losses, fsdp_worker
REPO = TESTS_DIR.parent  # the repository: configs/, examples/, docs/, src/


def synthetic_cfg(run_dir: Path, **overrides) -> dict:
    cfg = {
        "name": "t",
        "run_dir": str(run_dir),
        "scheme": "supervised",
        "data": {
            "name": "synthetic",
            "options": {"num_samples": 400, "num_features": 8, "num_classes": 3},
        },
        "student": {"name": "mlp", "args": {"hidden": [16]}},
        "train": {
            "epochs": 3,
            "batch_size": 32,
            "progress": False,
            "optimizer": {"name": "adamw", "lr": 0.01},
            "schedule": {"name": "cosine", "warmup_steps": 3},
        },
    }
    for key, value in overrides.items():
        cfg[key] = value if not isinstance(value, dict) else {**cfg.get(key, {}), **value}
    return copy.deepcopy(cfg)


def make_teacher(path: Path, args: dict | None = None) -> Path:
    """Random-init MLP teacher weights for the synthetic data (enough to exercise KD mechanics)."""
    cfg = parse_config(
        synthetic_cfg(
            path.parent / "unused", student={"name": "mlp", "args": args or {"hidden": [32, 32]}}
        )
    )
    save_weights(path, build(cfg).student)
    return path


def save_random_model(path: Path, name: str, input_shape, num_classes: int, args: dict) -> Path:
    """Random-init weights of a table model, saved by distill (with their checksum)."""
    from distill.models import build_model

    torch.manual_seed(0)
    save_weights(path, build_model(name, input_shape, num_classes, args))
    return path


def kd_cfg(run_dir: Path, teacher: Path, **overrides) -> dict:
    cfg = synthetic_cfg(
        run_dir,
        scheme="offline",
        teacher={"name": "mlp", "args": {"hidden": [32, 32]}, "weights": str(teacher)},
        objective={
            "task_weight": 0.5,
            "terms": [{"loss": "kd", "weight": 0.5, "args": {"temperature": 2.0}}],
        },
    )
    cfg.update(overrides)
    return cfg


def run_fsdp_worker(nproc: int, **env: str) -> None:
    """Run tests/fsdp_worker.py under torchrun with `nproc` ranks; fail with its stderr."""
    import os
    import subprocess
    import sys

    worker = os.path.join(os.path.dirname(__file__), "fsdp_worker.py")
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nnodes=1"]
    cmd = [sys.executable, *launcher, f"--nproc_per_node={nproc}", worker]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=full_env)
    assert out.returncode == 0 and "FSDP-WORKER-OK" in out.stdout, out.stderr[-3000:]


def stand_in_weights(cfg, tmp_path: Path) -> list[str]:
    """Overrides pointing every configured teacher at untrained weights of its shape."""
    overrides = []
    entries = [("teacher", cfg.teacher)] + [
        (f"teachers.{i}", t) for i, t in enumerate(cfg.teachers)
    ]
    for role, spec in entries:
        if spec is None or spec.weights is None:
            continue
        data = cfg.data.model_dump()
        if getattr(spec, "classes", None):
            data["classes"] = spec.classes
        one = parse_config(
            {
                "scheme": "supervised",
                "data": data,
                "student": {"name": spec.name, "args": spec.args},
            }
        )
        path = tmp_path / f"{role}.safetensors"
        save_weights(path, build(one).student)
        overrides.append(f"{role}.weights={path}")
    return overrides


def mount_tmpfs(where: Path, options: str) -> None:
    """A real tmpfs of the given mount options at `where` (a full or read-only disk for the
    file-system tests); skipped with the reason where this machine cannot mount one."""
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()[:100]})")


POS = ["good", "great", "fine", "lovely", "superb"]
NEG = ["bad", "awful", "poor", "dreadful", "worse"]
FILLER = [
    "the",
    "a",
    "movie",
    "film",
    "plot",
    "actor",
    "scene",
    "was",
    "is",
    "very",
    "quite",
    "and",
    "but",
    "it",
    "this",
    "that",
]


def write_reviews(root: Path) -> Path:
    """reviews.csv (text, sentiment name: a sentiment word among filler) and a WordLevel
    tokenizer folder `tok/` in `root`, built offline."""
    import csv
    import random

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)

    def sentence(label: int) -> str:
        words = [rng.choice(FILLER) for _ in range(rng.randint(5, 12))]
        words.insert(rng.randrange(len(words)), rng.choice(POS if label else NEG))
        return " ".join(words)

    with open(root / "reviews.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["review", "sentiment"])
        for label in [rng.randint(0, 1) for _ in range(600)]:
            w.writerow([sentence(label), "positive" if label else "negative"])
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    for word in POS + NEG + FILLER:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]"
    )
    fast.save_pretrained(root / "tok")
    return root


def reviews_data(root: Path, **extra) -> dict:
    """The data section that reads `write_reviews`'s CSV, tokenised to 16 tokens."""
    return {
        "name": "table",
        "options": {
            "train": str(root / "reviews.csv"),
            "text": "review",
            "label": "sentiment",
            "tokenizer": str(root / "tok"),
            "max_length": 16,
            **extra,
        },
    }


def stand_in_vision(monkeypatch, seen):
    """timm and torchvision cannot run on this machine (torchvision's compiled operators do
    not load against the CPU torch build, and timm needs torchvision), so these tests put
    stand-in modules with the same entry points (timm.create_model,
    torchvision.models.get_model) in sys.modules and check what distill passes them."""
    import types

    def small(num_classes, in_chans):
        return torch.nn.Sequential(
            torch.nn.Conv2d(in_chans, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(8, num_classes),
        )

    def create_model(name, pretrained, num_classes, in_chans, **kw):
        seen.append(("timm", name, pretrained, num_classes, in_chans, kw))
        return small(num_classes, in_chans)

    def get_model(name, weights, num_classes, **kw):
        seen.append(("torchvision", name, weights, num_classes, kw))
        return small(num_classes, 3)

    timm = types.ModuleType("timm")
    timm.create_model = create_model
    tv = types.ModuleType("torchvision")
    tv.models = types.SimpleNamespace(get_model=get_model)
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setitem(sys.modules, "torchvision", tv)
