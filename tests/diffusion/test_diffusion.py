"""Diffusion distillation: DDIM and v-parameterisation identities, progressive distillation's
target against two teacher steps, step halving, the data-free student's isolation from
real data, and the sample-quality metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import REPO, synthetic_cfg

from distill.app.build import build
from distill.app.run import run_experiment
from distill.core.config import load_config, parse_config
from distill.core.errors import ConfigError
from distill.data import load_batch
from distill.diffusion.core import (
    MLPDenoiser,
    alpha_sigma,
    ddim_step,
    diffuse,
    predict_x,
    progressive_target,
    sample,
)
from distill.diffusion.metrics import frechet_distance, mmd
from distill.schemes.diffusion import halving_rounds

ROOT = REPO
MLP = {"name": "mlp_denoiser", "args": {"width": 32, "depth": 1}}


def _teacher(seed: int = 0) -> MLPDenoiser:
    torch.manual_seed(seed)
    return MLPDenoiser((2,), width=32, depth=2).eval()


def test_v_parameterisation_and_ddim_reach_a_known_clean_point():
    x, eps = torch.randn(5, 2), torch.randn(5, 2)
    t = torch.rand(5) * 0.98 + 0.01
    z, v = diffuse(x, t, eps)
    a, s = alpha_sigma(t)
    torch.testing.assert_close(a**2 + s**2, torch.ones(5))  # variance preserving
    torch.testing.assert_close(a[:, None] * z - s[:, None] * v, x)  # x = alpha z - sigma v

    class Oracle(torch.nn.Module):  # the exact v for data concentrated on x
        def forward(self, z_, t_):
            a_, s_ = alpha_sigma(t_)
            e = (z_ - a_[:, None] * x) / s_[:, None]
            return a_[:, None] * e - s_[:, None] * x

    torch.manual_seed(0)
    out = sample(Oracle(), 5, (2,), steps=7, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("i", [1, 3, 8])
def test_progressive_target_is_two_teacher_steps_in_one(i):
    """From z_t, one DDIM step with x_hat = x~ lands exactly where the teacher's two steps
    (t -> t - 1/2N -> t - 1/N) land (Salimans & Ho 2022, Algorithm 2)."""
    teacher, n = _teacher(), 8
    z = torch.randn(6, 2, generator=torch.Generator().manual_seed(i))
    t = torch.full((6,), i / n)
    with torch.no_grad():
        target = progressive_target(teacher, z, t, n)
        mid = ddim_step(teacher, z, t, t - 0.5 / n)
        two = ddim_step(teacher, mid, t - 0.5 / n, t - 1.0 / n)
    a_t, s_t = (u[:, None] for u in alpha_sigma(t))
    a_s, s_s = (u[:, None] for u in alpha_sigma(t - 1.0 / n))
    one = a_s * target + s_s * (z - a_t * target) / s_t  # DDIM with x_hat = x~
    torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-5)
    if i == 1:  # the last step lands on the clean sample: x~ is the teacher's end point
        torch.testing.assert_close(target, two, rtol=1e-5, atol=1e-5)


def test_step_halving_bookkeeping():
    assert halving_rounds(256, 4) == [(256, 128), (128, 64), (64, 32), (32, 16), (16, 8), (8, 4)]
    assert halving_rounds(8, 4) == [(8, 4)]
    for bad in ((256, 3), (12, 4), (4, 4)):
        with pytest.raises(ValueError, match="cannot halve"):
            halving_rounds(*bad)
    # the example's rounds halve from 256 to 4, each teaching the next
    cfg = load_config(ROOT / "examples/diffusion/digits_progressive.yaml")
    steps = [s.scheme.args["teacher_steps"] for s in cfg.stages]
    assert [(t, t // 2) for t in steps] == halving_rounds(256, 4)
    assert all(s.teacher == "previous" and s.init == "previous" for s in cfg.stages[1:])


def _points_cfg(tmp_path, scheme: str, args: dict, teacher: Path | None = None, **train) -> dict:
    cfg = synthetic_cfg(tmp_path / scheme, data={"name": "digits_2d", "options": {}})
    cfg["scheme"] = {"name": scheme, "args": {"rescale": False, "eval_samples": 100, **args}}
    cfg["student"] = MLP
    cfg["train"] = {**cfg["train"], "monitor": "nll", "epochs": 2, "batch_size": 128, **train}
    if teacher is not None:
        cfg["teacher"] = {**MLP, "weights": str(teacher)}
    return cfg


def test_progressive_student_trains_on_the_half_grid(tmp_path):
    ddpm = run_experiment(parse_config(_points_cfg(tmp_path, "ddpm", {"sample_steps": 16})))
    assert ddpm["complete"] and ddpm["test_steps"] == 16 and ddpm["test_mmd"] >= -0.01
    weights = tmp_path / "ddpm/checkpoints/best.safetensors"
    cfg = _points_cfg(tmp_path, "progressive", {"teacher_steps": 16}, weights)
    built = build(parse_config(cfg))
    assert built.scheme.steps == 8
    seen = []
    original = built.scheme.teacher.forward

    def spy(z, t):
        seen.append(t.clone())
        return original(z, t)

    built.scheme.teacher.forward = spy
    batch = load_batch(built.data.train, torch.arange(64))
    out = built.scheme.step(batch, step=0)
    assert torch.isfinite(out["loss"])
    t_student = seen[0] * 8  # the first teacher call is at the student's t: i / 8
    torch.testing.assert_close(t_student, t_student.round())
    assert t_student.min() >= 1 and t_student.max() <= 8
    torch.testing.assert_close(seen[1], seen[0] - 1 / 16)  # the teacher's half step
    result = run_experiment(parse_config(cfg))
    assert result["test_steps"] == 8 and result["teacher_test_steps"] == 16
    with pytest.raises(ConfigError, match="train.monitor: nll"):
        build(parse_config({**cfg, "train": {**cfg["train"], "monitor": "acc"}}))


def test_data_free_student_never_reads_the_dataset(tmp_path):
    ddpm = run_experiment(parse_config(_points_cfg(tmp_path, "ddpm", {})))
    assert ddpm["complete"]
    weights = tmp_path / "ddpm/checkpoints/best.safetensors"
    cfg = _points_cfg(
        tmp_path, "dkdm", {"teacher_steps": 4, "pool": 8, "student_steps": 4}, weights
    )
    losses = []
    for poison in (False, True):
        built = build(parse_config(cfg))
        batch = load_batch(built.data.train, torch.arange(16))
        if poison:  # nonsense inputs and labels: a data-free scheme must not notice
            batch = {
                **batch,
                "input": torch.full_like(batch["input"], float("nan")),
                "target": torch.full_like(batch["target"], 99),
            }
        run = [float(built.scheme.step(batch, s)["loss"].detach()) for s in range(6)]
        losses.append(run)
        pool = built.scheme.pool
        assert pool.i.min() >= 1 and pool.i.max() <= 4  # every entry on the 4-step grid
        assert built.scheme.evaluate(None, batch_size=8, device="cpu")["nll"] >= 0
    assert losses[0] == losses[1] and all(torch.isfinite(torch.tensor(losses[0])))
    # the pool moves one teacher step per training step and restarts at t = 1
    built = build(parse_config(cfg))
    built.scheme.step(batch, 0)
    before = built.scheme.pool.i.clone()
    built.scheme.step(batch, 1)
    after = built.scheme.pool.i
    expect = torch.where(before == 1, torch.full_like(before, 4), before - 1)
    assert torch.equal(after, expect)
    result = run_experiment(parse_config(cfg))
    assert result["complete"] and "test_mmd" in result and result["test_steps"] == 4


def test_quality_metrics():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, 2, generator=gen), torch.randn(400, 2, generator=gen)
    assert abs(mmd(a, b)) < 0.01 and mmd(a, b + 2.0) > 0.3
    x = torch.randn(4000, 3, generator=gen)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    shift = torch.tensor([1.0, 2.0, 0.0])
    assert frechet_distance(x, x + shift) == pytest.approx(5.0, abs=1e-6)  # ||mu_a - mu_b||^2
    scaled = frechet_distance(x, 2 * x)  # same mean: Tr(C + 4C - 2 * 2C) = Tr(C) ~ 3
    assert scaled == pytest.approx(3.0, rel=0.1)


def test_denoiser_predicts_v_with_a_useful_x():
    teacher = _teacher()
    z, t = torch.randn(4, 2), torch.full((4,), 0.3)
    a, s = alpha_sigma(t)
    torch.testing.assert_close(
        predict_x(teacher, z, t), a[:, None] * z - s[:, None] * teacher(z, t)
    )


DIFFUSION_EXAMPLES = sorted((ROOT / "examples" / "diffusion").glob("*.yaml"))


@pytest.mark.parametrize("path", DIFFUSION_EXAMPLES, ids=[p.stem for p in DIFFUSION_EXAMPLES])
def test_diffusion_example_validates_and_trains(path, tmp_path):
    """Each example runs (teachers replaced by untrained weights of their shape), every
    progressive round for one epoch, the others for three steps."""
    from distill.app.validate import validate
    from distill.core.checkpoint import save_weights
    from distill.models import build_model

    cfg = load_config(path)
    overrides = [f"run_dir={tmp_path / 'run'}", "train.progress=false"]
    for role in ("teacher", "student"):
        spec = getattr(cfg, role)
        if spec is not None and spec.weights is not None:
            model = build_model(
                spec.name, (2,) if cfg.data.name == "digits_2d" else (1, 8, 8), 10, spec.args
            )
            save_weights(tmp_path / f"{role}.safetensors", model)
            overrides.append(f"{role}.weights={tmp_path / f'{role}.safetensors'}")
    overrides.append("scheme.args.eval_samples=50")
    if cfg.stages:
        overrides.append("train.epochs=1")
        for i in range(len(cfg.stages)):
            overrides += [f"stages.{i}.train.epochs=1", f"stages.{i}.scheme.args.eval_samples=50"]
        cfg = load_config(path, overrides)
        assert validate(cfg) == []
        result = run_experiment(cfg)
        assert result["complete"] and [s["test_steps"] for s in result["stages"]] == [
            s.scheme.args["teacher_steps"] // 2 for s in cfg.stages
        ]
        return
    cfg = load_config(path, [*overrides, "train.max_steps=3"])
    assert validate(cfg) == []
    result = run_experiment(cfg)
    assert result["steps"] == 3 and (tmp_path / "run/checkpoints/last.safetensors").is_file()
