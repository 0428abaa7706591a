"""Adversarial schemes: discriminator/student losses against their formulas, each player's
gradient reaching only its own parameters, PGD inside its ball, ARD's loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import make_teacher, synthetic_cfg

from distill.app.build import build
from distill.core.config import parse_config
from distill.data import load_batch
from distill.robustness import pgd
from distill.schemes.adversarial import Discriminator, discriminator_losses


def _built(tmp_path, scheme: str, args: dict, teacher: bool = True, terms=None):
    cfg = synthetic_cfg(tmp_path / "run")
    cfg["scheme"] = {"name": scheme, "args": args}
    if teacher:
        weights = make_teacher(tmp_path / "teacher.safetensors")
        cfg["teacher"] = {"name": "mlp", "args": {"hidden": [32, 32]}, "weights": str(weights)}
    cfg["objective"] = {"task_weight": 0.5, "terms": terms or []}
    built = build(parse_config(cfg))
    return built, load_batch(built.data.train, torch.arange(16))


def _grads(loss, params):
    return [g for g in torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)]


def test_discriminator_losses_follow_the_formulas():
    torch.manual_seed(0)
    disc = Discriminator(5, hidden=8)
    real, fake = torch.randn(7, 5), torch.randn(7, 5, requires_grad=True)
    l_d, l_adv = discriminator_losses(disc, real, fake)
    d_real, d_fake = torch.sigmoid(disc(real)), torch.sigmoid(disc(fake))
    # L_D = -E log D(T(x)) - E log(1 - D(S(x)));  L_adv = -E log D(S(x))
    expected_d = -(d_real.log().mean() + (1 - d_fake).log().mean())
    torch.testing.assert_close(l_d, expected_d, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(l_adv, -d_fake.log().mean(), rtol=1e-5, atol=1e-6)
    params = list(disc.parameters())
    assert all(g is None for g in _grads(l_adv, params))  # fooling D does not train D
    assert _grads(l_d, [fake]) == [None]  # D's loss does not move the student's outputs


@pytest.mark.parametrize(
    "args",
    [
        {"compare": "logits", "temperature": 2.0},
        {"compare": "features", "student_layer": "blocks.0", "teacher_layer": "blocks.1"},
    ],
)
def test_discriminator_and_student_phases_update_only_their_own_parameters(tmp_path, args):
    kd = [{"loss": "kd", "weight": 0.5, "args": {"temperature": 2.0}}]
    built, batch = _built(tmp_path, "adversarial", args, terms=kd)
    scheme = built.scheme
    out = scheme.step(batch, 0)
    disc = list(scheme.disc.parameters())
    student_side = list(built.student.parameters()) + list(scheme.proj.parameters())
    assert all(g is None for g in _grads(out["disc"], student_side))
    assert all(g is None for g in _grads(out["adv"], disc))
    assert all(g is not None and g.abs().sum() > 0 for g in _grads(out["disc"], disc))
    student_grads = _grads(out["adv"], list(built.student.parameters()))
    assert sum(float(g.abs().sum()) for g in student_grads if g is not None) > 0
    assert not any(p.requires_grad for p in built.teacher.parameters())
    assert {"kd", "disc", "adv"} <= set(out)
    # one optimizer step on the total: the discriminator's loss falls on a fixed batch
    opt = torch.optim.Adam(scheme.disc.parameters(), lr=0.01)
    before = float(out["disc"].detach())
    for _ in range(20):
        opt.zero_grad()
        scheme.step(batch, 0)["disc"].backward()
        opt.step()
    assert float(scheme.step(batch, 0)["disc"].detach()) < before


def test_pgd_stays_inside_its_ball_and_raises_the_loss():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    x, y = torch.rand(32, 6), torch.randint(0, 3, (32,))
    gen = torch.Generator().manual_seed(0)
    for clamp in (None, (0.0, 1.0)):
        adv = pgd(model, x, y, 0.05, steps=7, generator=gen, clamp=clamp)
        assert float((adv - x).abs().max()) <= 0.05 + 1e-6
        if clamp:
            assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
        with torch.no_grad():
            assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)
    # any loss of the logits, e.g. the divergence from fixed targets
    q = torch.softmax(torch.randn(32, 3), -1)

    def kl(z):
        return F.kl_div(F.log_softmax(z, -1), q, reduction="batchmean")

    adv = pgd(model, x, y, 0.05, steps=7, generator=gen, loss_fn=kl)
    assert float((adv - x).abs().max()) <= 0.05 + 1e-6
    with torch.no_grad():
        assert kl(model(adv)) > kl(model(x))


def test_ard_loss_is_task_on_clean_plus_kl_at_the_perturbation(tmp_path):
    args = {"eps": 0.2, "steps": 3, "temperature": 2.0, "kd_weight": 0.7}
    built, batch = _built(tmp_path, "ard", args)
    scheme, student, teacher = built.scheme, built.student, built.teacher
    student.train()
    out = scheme.step(batch, 5)
    assert student.training  # the attack ran in eval mode and gave the mode back
    x = batch["input"]
    with torch.no_grad():
        q = torch.softmax(teacher(x) / 2.0, -1)
    x_adv = scheme.perturb(x, batch["target"], q, 5)  # the same draw: seeded by the step
    assert float((x_adv - x).abs().max()) <= 0.2 + 1e-6
    kd = 4.0 * F.kl_div(F.log_softmax(student(x_adv) / 2.0, -1), q, reduction="batchmean")
    task = 0.5 * F.cross_entropy(student(x), batch["target"])
    torch.testing.assert_close(out["kd_adv"], kd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss"], task + 0.7 * kd, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # the perturbation raises the divergence it maximises
        clean = F.kl_div(F.log_softmax(student(x) / 2.0, -1), q, reduction="batchmean")
    assert kd / 4.0 > clean


def test_pgd_at_trains_on_its_own_adversarial_inputs(tmp_path):
    built, batch = _built(tmp_path, "pgd_at", {"eps": 0.2, "steps": 2}, teacher=False)
    scheme, student = built.scheme, built.student
    out = scheme.step(batch, 1)
    x_adv = scheme.perturb(batch["input"], batch["target"], None, 1)
    expected = 0.5 * F.cross_entropy(student(x_adv), batch["target"])
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-6)
    assert scheme.args.attack == "ce"  # no teacher to diverge from
