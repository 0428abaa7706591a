"""Data-free schemes: their losses against the formulas, each player's gradient reaching only
its own parameters, BatchNorm-statistic inversion, and no real training input ever read."""

from __future__ import annotations

import pytest
import torch
from helpers import make_teacher, synthetic_cfg

from distill.app.build import build
from distill.core.checkpoint import save_weights
from distill.core.config import parse_config
from distill.core.errors import ConfigError
from distill.data import load_batch
from distill.schemes.data_free import (
    BatchNormStatistics,
    Generator,
    dafl_losses,
    total_variation,
)

CONV = {"name": "convnet", "args": {"channels": [4, 8], "kernel_size": 3}}


def _digits(tmp_path, scheme: str, args: dict):
    """A data-free run on the 8x8 digits with a random-init conv teacher (it has BatchNorm)."""
    base = {"name": "digits", "options": {}}
    one = parse_config(synthetic_cfg(tmp_path / "t", data=base, student=CONV))
    weights = tmp_path / "teacher.safetensors"
    save_weights(weights, build(one).student)
    cfg = synthetic_cfg(tmp_path / "run", data=base, student=CONV)
    cfg["scheme"] = {"name": scheme, "args": args}
    cfg["teacher"] = {**CONV, "weights": str(weights)}
    cfg["objective"] = {"task_weight": 0.0}
    built = build(parse_config(cfg))
    return built, load_batch(built.data.train, torch.arange(16))


def _grads(loss, params):
    return torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)


def test_dafl_losses_follow_the_formulas():
    torch.manual_seed(0)
    logits, feats = torch.randn(6, 4), torch.randn(6, 5)
    out = dafl_losses(logits, feats)
    p = logits.softmax(-1)
    torch.testing.assert_close(out["one_hot"], -p.log()[torch.arange(6), p.argmax(-1)].mean())
    torch.testing.assert_close(out["activation"], -feats.abs().sum(-1).mean())
    pbar = p.mean(0)
    torch.testing.assert_close(out["info_entropy"], (pbar * pbar.log()).sum())
    # uniform mean prediction: the entropy term reaches its minimum, -log(classes)
    balanced = dafl_losses(torch.eye(4) * 50, None)
    assert abs(float(balanced["info_entropy"]) + torch.log(torch.tensor(4.0))) < 1e-4
    assert float(balanced["activation"]) == 0.0


def test_batchnorm_statistic_loss_is_zero_on_the_teachers_own_statistics():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv1d(2, 4, 3),
        torch.nn.BatchNorm1d(4),
        torch.nn.ReLU(),
        torch.nn.Conv1d(4, 3, 3),
        torch.nn.BatchNorm1d(3),
    ).eval()
    x = torch.randn(32, 2, 12)
    stats = BatchNormStatistics(model)
    # store, layer by layer, the (biased) statistics each BatchNorm sees on x
    for bn in stats.layers:
        seen: list[torch.Tensor] = []
        handle = bn.register_forward_hook(lambda m, i, o, seen=seen: seen.append(i[0].detach()))
        model(x)
        handle.remove()
        bn.running_mean.copy_(seen[0].mean((0, 2)))
        bn.running_var.copy_(seen[0].var((0, 2), unbiased=False))
    with stats:
        model(x)
    assert float(stats.pop().detach()) < 1e-5
    with stats:
        model(x * 2 + 1)
    assert float(stats.pop().detach()) > 0.5  # other inputs: other statistics
    with pytest.raises(ConfigError, match="no BatchNorm"):
        BatchNormStatistics(torch.nn.Linear(3, 3))


def test_total_variation_of_signals_and_images():
    ramp = torch.arange(5.0).view(1, 1, 5)
    assert float(total_variation(ramp)) == 1.0  # every neighbour differs by 1
    image = torch.zeros(1, 1, 3, 3)
    image[..., 1, :] = 3.0  # a bright row: only vertical differences, all six of size 3
    assert float(total_variation(image)) == pytest.approx(3.0)


@pytest.mark.parametrize("shape", [(1, 40), (1, 8, 8), (3, 7, 9), (8,)])
def test_generator_makes_standardised_inputs_of_any_shape(shape):
    gen = Generator(shape, latent=16, hidden=8)
    x = gen.sample(32, seed=0, device=torch.device("cpu")).detach()
    assert x.shape == (32, *shape)
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1) < 0.1
    torch.testing.assert_close(x, gen.sample(32, seed=0, device=torch.device("cpu")))


@pytest.mark.parametrize("scheme", ["dafl", "dfad"])
def test_generator_and_student_losses_reach_only_their_own_parameters(tmp_path, scheme):
    built, batch = _digits(tmp_path, scheme, {"latent": 8, "hidden": 8})
    s = built.scheme
    out = s.step(batch, 0)
    student, generator = list(built.student.parameters()), list(s.generator.parameters())
    # DAFL's generator loss with its default weights (no activation layer configured)
    dafl = out.get("one_hot", 0) + 5.0 * out.get("info_entropy", 0)
    gen_loss = out["generator"] if scheme == "dfad" else dafl
    student_loss = out["disagreement"] if scheme == "dfad" else out["kd"]
    assert all(g is None for g in _grads(gen_loss, student))
    assert all(g is None for g in _grads(student_loss, generator))
    assert any(g is not None and g.abs().sum() > 0 for g in _grads(gen_loss, generator))
    assert any(g is not None and g.abs().sum() > 0 for g in _grads(student_loss, student))
    assert not any(p.requires_grad for p in built.teacher.parameters())
    # the total's gradient: the generator's share equals its own loss's
    for total, own in zip(_grads(out["loss"], generator), _grads(gen_loss, generator)):
        torch.testing.assert_close(total, own)


@pytest.mark.parametrize("scheme", ["dafl", "dfad"])
def test_generator_rests_between_its_steps(tmp_path, scheme):
    built, batch = _digits(tmp_path, scheme, {"latent": 8, "hidden": 8, "generator_every": 3})
    generator = list(built.scheme.generator.parameters())
    assert any(g is not None for g in _grads(built.scheme.step(batch, 3)["loss"], generator))
    assert all(g is None for g in _grads(built.scheme.step(batch, 4)["loss"], generator))


@pytest.mark.parametrize("scheme", ["dafl", "dfad", "deep_inversion"])
def test_data_free_schemes_never_read_real_training_inputs(tmp_path, scheme):
    args = {"bank": 32, "iterations": 3, "chunk": 16} if scheme == "deep_inversion" else {}
    built, batch = _digits(tmp_path, scheme, args)
    if scheme == "deep_inversion":
        built.scheme.on_fit_start(10, 5)
    garbage = {**batch, "input": torch.full_like(batch["input"], float("nan"))}
    garbage["target"] = torch.full_like(batch["target"], 99)
    for name in ("input", "target"):
        assert not torch.equal(garbage[name], batch[name])
    torch.manual_seed(0)
    real = built.scheme.step(batch, 2)
    torch.manual_seed(0)
    fake = built.scheme.step(garbage, 2)
    for key, value in real.items():
        torch.testing.assert_close(fake[key], value, msg=key)


def test_deep_inversion_synthesises_the_assigned_classes_once(tmp_path):
    args = {"bank": 40, "iterations": 150, "chunk": 20, "lr": 0.1}
    built, _ = _digits(tmp_path, "deep_inversion", args)
    s, teacher = built.scheme, built.teacher
    noise = torch.randn(20, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    before = s.inversion_loss(noise, s.bank.targets[:20])
    s.on_fit_start(10, 5)
    assert bool(s.bank.ready)
    after = s.inversion_loss(s.bank.inputs[:20], s.bank.targets[:20])
    assert float(after["loss"]) < 0.7 * float(before["loss"])
    assert float(after["bn"]) < float(before["bn"])
    with torch.no_grad():
        hits = (teacher(s.bank.inputs).argmax(-1) == s.bank.targets).float().mean()
    assert float(hits) >= 0.5  # chance is 0.1 (a random-init teacher, 150 iterations)
    assert float(after["ce"]) < float(before["ce"])
    assert s.bank.targets.tolist() == [i % 10 for i in range(40)]
    kept = s.bank.inputs.clone()
    s.on_fit_start(10, 5)  # a resumed run keeps its bank (a checkpointed buffer)
    assert torch.equal(kept, s.bank.inputs)
    assert "bank.inputs" in built.scheme.modules.state_dict()


def test_schemes_that_need_batchnorm_or_a_teacher_say_so(tmp_path):
    weights = make_teacher(tmp_path / "mlp.safetensors")
    cfg = synthetic_cfg(tmp_path / "run")
    cfg["scheme"] = {"name": "deep_inversion", "args": {}}
    cfg["teacher"] = {"name": "mlp", "args": {"hidden": [32, 32]}, "weights": str(weights)}
    with pytest.raises(ConfigError, match="no BatchNorm"):
        build(parse_config(cfg))
    cfg["scheme"] = {"name": "dafl", "args": {}}
    cfg["objective"] = {"terms": [{"loss": "kd", "weight": 1.0}]}
    with pytest.raises(ConfigError, match="objective.terms"):
        build(parse_config(cfg))


def test_dfad_disagreement_follows_its_two_forms():
    from distill.schemes.data_free import disagreement

    torch.manual_seed(0)
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    torch.testing.assert_close(disagreement(s, t, "l1", 1.0), (s - t).abs().mean())
    q, log_p = (t / 2).softmax(-1), (s / 2).log_softmax(-1)
    expected = 4.0 * (q * (q.log() - log_p)).sum(-1).mean()  # T^2 KL(teacher || student)
    torch.testing.assert_close(disagreement(s, t, "kl", 2.0), expected)
    assert float(disagreement(t, t, "kl", 2.0)) == pytest.approx(0.0, abs=1e-6)


def test_deep_inversion_loss_is_its_weighted_sum(tmp_path):
    args = {"bank": 8, "bn_weight": 0.5, "tv_weight": 0.2, "l2_weight": 0.3}
    built, _ = _digits(tmp_path, "deep_inversion", args)
    s, teacher = built.scheme, built.teacher
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    y = torch.arange(8) % 10
    out = s.inversion_loss(x, y)
    with BatchNormStatistics(teacher) as stats:
        logits = teacher(x)
    bn = stats.pop()
    ce = torch.nn.functional.cross_entropy(logits, y)
    expected = ce + 0.5 * bn + 0.2 * total_variation(x) + 0.3 * x.pow(2).mean()
    torch.testing.assert_close(out["loss"], expected)
    torch.testing.assert_close(out["bn"], bn)
