"""CUDA paths: mixed precision, device placement of every scheme's modules, resume on GPU.

Skipped where no CUDA device is present (CI); run on a GPU machine with
`python -m pytest -q tests/test_gpu.py`.
"""

from __future__ import annotations

import pytest
import torch
from helpers import kd_cfg, make_teacher, synthetic_cfg

from distill.build import build
from distill.checkpoint import load_checkpoint
from distill.config import parse_config
from distill.run import run_experiment

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

MLP_T = {"name": "mlp", "args": {"hidden": [32, 32]}}


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_offline_kd_on_cuda(tmp_path, precision):
    teacher = make_teacher(tmp_path / "t.safetensors")
    cfg = kd_cfg(tmp_path / "run", teacher)
    cfg["train"] = {**cfg["train"], "device": "cuda", "precision": precision}
    result = run_experiment(parse_config(cfg))
    assert result["complete"] and result["test_acc"] > 0.5
    state = load_checkpoint(tmp_path / "run/checkpoints/last.safetensors")
    assert state["trainer"]["epoch"] == 3


def test_resume_on_cuda_matches_uninterrupted(tmp_path):
    teacher = make_teacher(tmp_path / "t.safetensors")
    base = kd_cfg(tmp_path / "a", teacher)
    base["train"] = {**base["train"], "device": "cuda", "deterministic": True}
    full = run_experiment(parse_config(base))
    cut = {**base, "run_dir": str(tmp_path / "b"), "train": {**base["train"], "max_steps": 17}}
    run_experiment(parse_config(cut))
    resumed = run_experiment(parse_config({**base, "run_dir": str(tmp_path / "b")}), resume=True)
    assert resumed["test_acc"] == pytest.approx(full["test_acc"], abs=1e-6)


SCHEMES = [
    ("dml", {"num_peers": 2}, {}),
    ("one", {"shared": ["blocks.0"]}, {}),
    ("okddip", {}, {}),
    ("ffl", {"layer": "blocks.1"}, {}),
    ("byot", {"heads": ["blocks.0"]}, {}),
    ("pskd", {}, {}),
    ("mean_teacher", {}, {"augment": [{"name": "noise", "args": {"std": 0.1}}]}),
    ("consistency", {}, {"augment": [{"name": "noise", "args": {"std": 0.1}}]}),
    ("cskd", {}, {"augment": [{"name": "noise", "args": {"std": 0.1}}]}),
    ("bake", {}, {}),
    ("sd_dropout", {}, {}),
    ("uskd", {"feature": "blocks.0"}, {}),
    ("dtskd", {"layers": ["blocks.0", "blocks.1"]}, {}),
    ("multi_teacher", {"weighting": "rl"}, {}),
    ("multi_teacher", {"weighting": "gate"}, {}),
    ("multi_teacher", {"weighting": "validation"}, {}),
]


@pytest.mark.parametrize(
    "scheme,args,data", SCHEMES, ids=[f"{s}-{a.get('weighting', '')}" for s, a, _ in SCHEMES]
)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_scheme_on_cuda(tmp_path, scheme, args, data, precision):
    cfg = synthetic_cfg(tmp_path / "run")
    cfg["scheme"] = {"name": scheme, "args": args}
    cfg["student"] = {"name": "mlp", "args": {"hidden": [16, 16]}}
    cfg["data"] = {**cfg["data"], **data}
    cfg["train"] = {**cfg["train"], "device": "cuda", "precision": precision}
    if scheme == "multi_teacher":
        cfg["teachers"] = [
            {**MLP_T, "weights": str(make_teacher(tmp_path / f"t{i}.safetensors"))}
            for i in range(2)
        ]
    built = build(parse_config(cfg))
    built.scheme.to(torch.device("cuda"))
    tensors = list(built.scheme.modules.parameters()) + list(built.scheme.modules.buffers())
    assert all(t.is_cuda for t in tensors)
    result = run_experiment(parse_config(cfg))
    assert result["complete"] and result["test_acc"] > 0.4
