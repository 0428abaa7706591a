"""Mechanics of every scheme on tiny models, and a short run of each from its example config."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, make_teacher, stand_in_weights, synthetic_cfg
from torch import nn

from distill.app.build import build
from distill.app.run import run_experiment
from distill.app.stages import PIPELINE_ARGS, expand
from distill.app.validate import validate
from distill.core.checkpoint import load_checkpoint, load_weights
from distill.core.config import load_config, parse_config
from distill.core.errors import CheckpointError, ConfigError
from distill.schemes import SCHEMES, list_schemes
from distill.schemes.multi_teacher import WEIGHTINGS
from distill.schemes.self_kd import bake_targets, uskd_losses

ROOT = REPO
EXAMPLES = sorted((ROOT / "examples" / "schemes").glob("*.yaml"))
MLP_T = {"name": "mlp", "args": {"hidden": [32, 32]}}


def _cfg(tmp_path: Path, scheme: str, args: dict | None = None, **extra) -> dict:
    cfg = synthetic_cfg(tmp_path / "run")
    cfg["scheme"] = {"name": scheme, "args": args or {}}
    cfg["student"] = {"name": "mlp", "args": {"hidden": [16, 16]}}
    cfg.update(extra)
    return cfg


def _batch(built, n: int = 16) -> dict:
    from distill.data import load_batch

    return load_batch(built.data.train, torch.arange(n))


# ----------------------------------------------------------------------------- catalogue
def test_every_scheme_has_an_example_and_is_listed():
    more = [
        p
        for d in ("llm", "embed", "diffusion", "paradigms", "dense")
        for p in sorted((ROOT / "examples" / d).glob("*.yaml"))
        if p.stem not in ("federated", "interpret")  # configs of their own commands
    ]
    used = {load_config(p).scheme.name for p in [*EXAMPLES, *more]}
    missing = set(SCHEMES) - used - {"supervised", "offline"}
    if "lifelong" in used:  # each stage of a lifelong run is an lwf run
        missing.discard("lwf")
    assert not missing, f"schemes without an example: {sorted(missing)}"
    names = [r["name"] for r in list_schemes()]
    assert names == list(SCHEMES)
    assert all(r["paper"] for r in list_schemes())


def test_every_multi_teacher_weighting_has_an_example():
    used = {load_config(p).scheme.args.get("weighting") for p in EXAMPLES}
    assert set(WEIGHTINGS) <= used


def _small_setup(cfg) -> list[str]:
    """Overrides shrinking work a scheme does once before its first step (DeepInversion's
    bank: 200 Adam steps on every chunk of a training-set-sized bank, ~75 s here), so a
    3-step run checks the example's wiring rather than the synthesis's length."""
    names = SCHEMES[cfg.scheme.name].arg_names
    if {"bank", "iterations"} <= set(names):
        return ["scheme.args.bank=64", "scheme.args.iterations=2"]
    return []


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_scheme_example_validates_and_trains(path, tmp_path):
    cfg = load_config(path)
    overrides = [f"run_dir={tmp_path / 'run'}", "train.progress=false"]
    overrides += stand_in_weights(cfg, tmp_path)
    if cfg.scheme.name in PIPELINE_ARGS or cfg.stages:  # every stage for one epoch
        overrides.append("train.epochs=1")
        overrides += [f"stages.{i}.train.epochs=1" for i in range(len(cfg.stages))]
        cfg = load_config(path, overrides)
        assert validate(cfg) == []
        result = run_experiment(cfg)
        assert result["complete"] and len(result["stages"]) == len(expand(cfg)) >= 2
        assert (tmp_path / "run/checkpoints/best.safetensors").is_file()
        return
    cfg = load_config(path, [*overrides, *_small_setup(cfg), "train.max_steps=3"])
    assert validate(cfg) == []
    result = run_experiment(cfg)
    assert result["steps"] == 3
    state = load_checkpoint(tmp_path / "run/checkpoints/last.safetensors")
    assert state["trainer"]["step"] == 3


# ----------------------------------------------------------------------------- online
def test_dml_peers_learn_from_detached_predictions(tmp_path):
    built = build(parse_config(_cfg(tmp_path, "dml", {"num_peers": 2, "temperature": 2.0})))
    scheme, batch = built.scheme, _batch(built)
    models = [built.student, *scheme.peers]
    losses = scheme.step(batch, 0)
    grads = torch.autograd.grad(losses["loss"], list(built.student.parameters()))
    # the student's gradient comes only from its own task loss and its own KL terms
    logits = [m(batch["input"]) for m in models]
    q = [F.softmax(z.detach() / 2.0, -1) for z in logits]
    own = (
        built.objective.task_loss(logits[0], batch["target"])
        + torch.stack(
            [
                4.0 * F.kl_div(F.log_softmax(logits[0] / 2.0, -1), q[j], reduction="batchmean")
                for j in (1, 2)
            ]
        ).mean()
    )  # DML: the mean KL to the other peers (Zhang et al. 2018, eq. for K peers)
    expected = torch.autograd.grad(own, list(built.student.parameters()))
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-4)


def test_dml_with_teacher_trains_it(tmp_path):
    teacher = make_teacher(tmp_path / "t.safetensors")
    cfg = _cfg(tmp_path, "dml", teacher={**MLP_T, "weights": str(teacher)})
    built = build(parse_config(cfg))
    assert built.scheme.peers[0] is built.teacher
    assert all(p.requires_grad for p in built.teacher.parameters())


def test_one_branches_share_the_trunk_and_vanish_at_export(tmp_path):
    cfg = _cfg(tmp_path, "one", {"branches": 3, "shared": ["blocks.0"]})
    built = build(parse_config(cfg))
    scheme, batch = built.scheme, _batch(built)
    trunk = built.student.blocks[0]
    # a branch's output equals: the student's trunk, then the branch's own upper layers
    scheme.train(False)
    branch = scheme.branches[0]
    expected = branch.head(branch.blocks[1](trunk(batch["input"])))
    torch.testing.assert_close(branch(batch["input"]), expected)
    scheme.train(True)
    calls = []
    hook = trunk.register_forward_hook(lambda *_: calls.append(1))
    losses = scheme.step(batch, 0)
    hook.remove()
    assert len(calls) == 1  # the trunk ran once for all three branches
    losses["loss"].backward()
    assert trunk[0].weight.grad is not None
    keys = set(built.scheme.modules.state_dict())
    assert not any(".fallback" in k for k in keys)  # the shared trunk is stored once
    cfg["train"]["epochs"] = 1
    run_experiment(parse_config(cfg))
    state, _ = load_weights(tmp_path / "run/checkpoints/best.safetensors")
    assert set(state) == set(built.student.state_dict())


def test_one_refuses_a_shared_module_that_returns_no_tensor():
    from distill.schemes.online import _check_tensor_outputs

    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair, self.fc = Pair(), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.pair(x)[0])

    net = Net()
    _check_tensor_outputs(net, {"fc": net.fc}, torch.zeros(2, 4))  # a tensor: accepted
    with pytest.raises(ConfigError, match=r"'pair': 'tuple'.*share the module around"):
        _check_tensor_outputs(net, {"pair": net.pair}, torch.zeros(2, 4))
    assert not net.pair._forward_hooks and not net.fc._forward_hooks  # the check left none


def test_okddip_attention_is_a_distribution(tmp_path):
    built = build(parse_config(_cfg(tmp_path, "okddip", {"num_peers": 3})))
    losses = built.scheme.step(_batch(built), 0)
    assert {"peer_kd", "leader_kd", "attention_ce"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    s, batch = built.scheme, _batch(built)
    knowledge = [t.run(batch["input"]) for t in s._taps]
    alpha = s.attention(knowledge)
    assert alpha.shape == (16, 3, 3) and (alpha >= 0).all()
    torch.testing.assert_close(alpha.sum(-1), torch.ones(16, 3))  # each row a distribution
    # the attention is trained (through attention_ce), so the rows are not fixed weights
    losses["attention_ce"].backward()
    assert all(e.weight.grad is not None and e.weight.grad.abs().sum() > 0 for e in s.embed)


def test_ffl_fuses_peer_features(tmp_path):
    built = build(parse_config(_cfg(tmp_path, "ffl", {"layer": "blocks.1"})))
    losses = built.scheme.step(_batch(built), 0)
    losses["loss"].backward()
    assert built.scheme.fusion.fc.weight.grad is not None
    assert {"fused_to_peers", "peers_to_fused", "task_fused"} <= set(losses)
    s, batch = built.scheme, _batch(built)
    s.fusion.eval()  # (batch norm on running statistics: the same in both computations)
    knowledge = [t.run(batch["input"]) for t in s._taps]
    feats = [k.feats[n] for k, n in zip(knowledge, s.layers)]
    fused = s.fusion(feats)
    for i in range(len(feats)):  # the fused classifier reads every model's feature
        moved = [f + 1.0 if j == i else f for j, f in enumerate(feats)]
        assert not torch.allclose(s.fusion(moved), fused)
    t = s.args.temperature
    p_f = F.softmax(fused / t, -1)
    to_peers = sum(
        t * t * F.kl_div(F.log_softmax(k.logits / t, -1), p_f, reduction="batchmean")
        for k in knowledge
    )
    ensemble = torch.stack([F.softmax(k.logits / t, -1) for k in knowledge]).mean(0)
    to_fused = t * t * F.kl_div(F.log_softmax(fused / t, -1), ensemble, reduction="batchmean")
    again = s.step(batch, 0)
    torch.testing.assert_close(again["fused_to_peers"], to_peers, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again["peers_to_fused"], to_fused, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- self
def test_byot_heads_absent_from_exported_student(tmp_path):
    cfg = _cfg(tmp_path, "byot", {"heads": ["blocks.0"], "feature": "head:input"})
    cfg["train"]["epochs"] = 1
    result = run_experiment(parse_config(cfg))
    assert result["complete"]
    state, _ = load_weights(tmp_path / "run/checkpoints/best.safetensors")
    assert not any(k.startswith("heads") for k in state)
    student_keys = set(
        build(parse_config({**cfg, "run_dir": str(tmp_path / "x")})).student.state_dict()
    )
    assert set(state) == student_keys
    full = load_checkpoint(tmp_path / "run/checkpoints/last.safetensors")["modules"]
    assert any(k.startswith("heads.") for k in full)  # heads are trained and resumable


def test_pskd_target_mixing_schedule(tmp_path):
    built = build(parse_config(_cfg(tmp_path, "pskd", {"alpha_final": 0.8})))
    s = built.scheme
    s.on_fit_start(total_steps=100, steps_per_epoch=10)  # 10 epochs
    assert s.alpha(0) == pytest.approx(0.08)
    assert s.alpha(55) == pytest.approx(0.8 * 6 / 10)
    assert s.alpha(99) == pytest.approx(0.8)
    batch = _batch(built, 4)
    c = built.data.num_classes
    onehot = F.one_hot(batch["target"], c).float()
    torch.testing.assert_close(s.targets(batch, 55, c), onehot)  # nothing remembered yet
    past = torch.softmax(torch.randn(4, c), -1)
    s.memory.write(batch["index"], past)
    torch.testing.assert_close(s.targets(batch, 55, c), 0.52 * onehot + 0.48 * past)
    s.step(batch, 60)  # writes this step's predictions for the next epoch
    assert not torch.allclose(s.memory.probs[batch["index"]], past)


def test_mean_teacher_ema_arithmetic(tmp_path):
    built = build(parse_config(_cfg(tmp_path, "mean_teacher", {"decay": 0.9})))
    s = built.scheme
    before = [p.clone() for p in s.ema.parameters()]
    with torch.no_grad():
        for p in built.student.parameters():
            p.add_(1.0)
    s.after_optimizer_step(1000)  # past the warm-up: d = 0.9
    for e, b, p in zip(s.ema.parameters(), before, built.student.parameters()):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * p)
    s.after_optimizer_step(0)  # first step: d = min(0.9, 1/10)
    p0 = next(built.student.parameters())
    e0 = next(s.ema.parameters())
    assert not e0.requires_grad
    assert s.eval_model() is s.ema
    torch.testing.assert_close(e0, 0.1 * (0.9 * before[0] + 0.1 * p0) + 0.9 * p0)


def test_temporal_ensembling_average_and_bias_correction(tmp_path):
    built = build(parse_config(_cfg(tmp_path, "temporal_ensembling", {"momentum": 0.6})))
    s, batch = built.scheme, _batch(built, 8)
    first = s.step(batch, 0)
    assert float(first["temporal"]) == 0.0  # nothing to compare with on the first visit
    p1 = torch.softmax(built.student(batch["input"]), -1).detach()
    target, seen = s.targets(batch["index"])
    assert seen.all()
    torch.testing.assert_close(target, p1, atol=1e-5, rtol=1e-4)  # (0.4 p1) / (1 - 0.6)
    s.step(batch, 1)
    target2, _ = s.targets(batch["index"])
    torch.testing.assert_close(
        target2, (0.6 * 0.4 * p1 + 0.4 * p1) / (1 - 0.36), atol=1e-5, rtol=1e-4
    )


def test_consistency_needs_augmentation(tmp_path):
    with pytest.raises(ConfigError, match="data.augment"):
        build(parse_config(_cfg(tmp_path, "consistency")))


def test_cskd_partners_share_the_class(tmp_path):
    built = build(parse_config(_cfg(tmp_path, "cskd")))
    batch = _batch(built, 32)
    partners = built.scheme.partners(batch, 7)
    targets = built.data.train.targets
    assert torch.equal(targets[partners], batch["target"])
    assert (partners != batch["index"]).all()
    assert torch.equal(partners, built.scheme.partners(batch, 7))  # reproducible per step


def test_bake_targets_are_the_propagated_series():
    torch.manual_seed(0)
    f, p = torch.randn(6, 4), torch.softmax(torch.randn(6, 3), -1)
    q = bake_targets(f, p, omega=0.5, tau=0.5)
    fn = F.normalize(f, dim=1)
    sim = fn @ fn.t() / 0.5
    sim.fill_diagonal_(-math.inf)
    a = torch.softmax(sim, 1)
    series = sum((0.5 * a).matrix_power(t) @ p for t in range(60)) * 0.5
    torch.testing.assert_close(q, series, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(q.sum(1), torch.ones(6))


def test_uskd_soft_labels():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 1.0, 0.5]])
    weak = torch.zeros(2, 4)
    y = torch.tensor([0, 1])
    target, non_target, weak_loss = uskd_losses(logits, weak, y)
    p = torch.softmax(logits, -1)
    pt = p[torch.arange(2), y]
    soft = pt**2 + 1 - (pt**2).mean()
    assert target == pytest.approx(float(-(soft * torch.log(pt)).mean()), rel=1e-5)
    # row 0 non-targets (classes 1, 2, 3) rank 1, 2, 3 -> Zipf 1, 1/2, 1/3 normalised
    z = torch.tensor([1, 1 / 2, 1 / 3])
    z = z / z.sum()
    ls0 = torch.log_softmax(logits[0, 1:], -1)
    # row 1 non-targets (classes 0, 2, 3) rank 3, 1, 2
    z1 = torch.tensor([1 / 3, 1, 1 / 2])
    z1 = z1 / z1.sum()
    ls1 = torch.log_softmax(logits[1, [0, 2, 3]], -1)
    expected = -((z * ls0).sum() + (z1 * ls1).sum()) / 2
    assert non_target == pytest.approx(float(expected), rel=1e-5)
    assert weak_loss == pytest.approx(math.log(4), rel=1e-5)  # uniform weak head


@pytest.mark.parametrize(
    "scheme,args",
    [
        ("sd_dropout", {"feature": "head:input", "classifier": "head"}),
        ("uskd", {"feature": "blocks.0"}),
        ("dtskd", {"layers": ["blocks.0", "blocks.1"]}),
        ("bake", {"feature": "head:input"}),
        ("cskd", {}),
        ("pskd", {}),
        ("okddip", {}),
        ("dml", {"target": "ensemble", "num_peers": 2}),
    ],
)
def test_self_and_online_schemes_train_end_to_end(tmp_path, scheme, args):
    cfg = _cfg(tmp_path, scheme, args)
    result = run_experiment(parse_config(cfg))
    assert result["complete"] and result["test_acc"] > 0.75  # 3 easy classes (chance 1/3)


def test_scheme_args_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="has no argument 'tempreature'"):
        build(parse_config(_cfg(tmp_path, "dml", {"tempreature": 2})))
    with pytest.raises(ConfigError, match="the student has no module 'nope'"):
        build(parse_config(_cfg(tmp_path, "one", {"shared": ["nope"]})))
    with pytest.raises(ConfigError, match="makes its own distillation losses"):
        build(parse_config(_cfg(tmp_path, "dml", objective={"terms": [{"loss": "kd"}]})))
    cfg = load_config(EXAMPLES[0], ["scheme=dml", "scheme.args.temperature=2.5"])
    assert cfg.scheme.args == {"temperature": 2.5}
    with pytest.raises(ConfigError, match="reads its teachers from teachers"):
        build(
            parse_config(
                _cfg(tmp_path, "multi_teacher", teacher=MLP_T, teachers=_teachers(tmp_path))
            )
        )
    with pytest.raises(ConfigError, match="uses no separate teacher"):
        build(parse_config(_cfg(tmp_path, "byot", {"heads": ["blocks.0"]}, teacher=MLP_T)))


# ----------------------------------------------------------------------------- multi-teacher
def _teachers(tmp_path: Path, n: int = 2) -> list[dict]:
    out = []
    for i in range(n):
        torch.manual_seed(i)
        out.append({**MLP_T, "weights": str(make_teacher(tmp_path / f"t{i}.safetensors"))})
    return out


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_multi_teacher_weights_are_distributions(tmp_path, weighting):
    cfg = _cfg(tmp_path, "multi_teacher", {"weighting": weighting}, teachers=_teachers(tmp_path, 3))
    built = build(parse_config(cfg))
    s, batch = built.scheme, _batch(built, 24)
    probs = [torch.softmax(t(batch["input"]), -1) for t in s.teachers]
    student = built.student(batch["input"])
    w = s.weights(probs, batch, student)
    assert w.shape == (24, 3)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(24))
    before = [p.clone() for t in s.teachers for p in t.parameters()]
    cfg["train"]["epochs"] = 1
    result = run_experiment(parse_config(cfg))
    assert result["complete"]
    after = [p for t in s.teachers for p in t.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # frozen teachers (this build)


def test_multi_teacher_sample_weights_prefer_the_teacher_that_is_right(tmp_path):
    built = build(
        parse_config(
            _cfg(tmp_path, "multi_teacher", {"weighting": "sample"}, teachers=_teachers(tmp_path))
        )
    )
    batch = {"target": torch.tensor([0, 1]), "input": torch.zeros(2, 8)}
    right = torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05]])
    wrong = torch.tensor([[0.05, 0.9, 0.05], [0.9, 0.05, 0.05]])
    w = built.scheme.weights([right, wrong], batch, torch.zeros(2, 3))
    assert (w[:, 0] > 0.9).all()


def test_multi_teacher_gradient_equals_kd_to_the_mixture(tmp_path):
    cfg = _cfg(
        tmp_path,
        "multi_teacher",
        {"weighting": "mean", "temperature": 2.0},
        teachers=_teachers(tmp_path),
        objective={"task_weight": 0.0},
    )
    built = build(parse_config(cfg))
    batch = _batch(built)
    loss = built.scheme.step(batch, 0)["loss"]
    g = torch.autograd.grad(loss, list(built.student.parameters()))
    mix = torch.stack(
        [torch.softmax(t(batch["input"]) / 2.0, -1) for t in built.scheme.teachers]
    ).mean(0)
    z = built.student(batch["input"])
    ref = 4.0 * F.kl_div(F.log_softmax(z / 2.0, -1), mix, reduction="batchmean")
    g_ref = torch.autograd.grad(ref, list(built.student.parameters()))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_multi_teacher_specialists_and_features(tmp_path):
    base = synthetic_cfg(tmp_path / "spec")
    base["data"]["classes"] = [2, 0]
    base["train"]["epochs"] = 2
    spec_run = run_experiment(parse_config(base))
    assert spec_run["complete"]
    teachers = _teachers(tmp_path, 1) + [
        {**synthetic_cfg(tmp_path)["student"], "weights": str(tmp_path / "spec"), "classes": [2, 0]}
    ]
    cfg = _cfg(
        tmp_path,
        "multi_teacher",
        {
            "weighting": "sample",
            "feature": {
                "student": "blocks.1",
                "teachers": ["blocks.1", "blocks.0"],
                "adapter": "linear",
            },
        },
        teachers=teachers,
    )
    built = build(parse_config(cfg))
    batch = _batch(built)
    losses = built.scheme.step(batch, 0)
    assert {"kd", "feature"} <= set(losses)
    # a specialist has no say on samples whose label it cannot predict
    probs = [torch.softmax(t(batch["input"]), -1) for t in built.scheme.teachers]
    w = built.scheme.weights(probs, batch, built.student(batch["input"]))
    label1 = batch["target"] == 1
    assert (w[label1, 1] < 1e-6).all()
    bad = _cfg(
        tmp_path, "multi_teacher", teachers=[teachers[0], {**teachers[1], "classes": [0, 1, 2]}]
    )
    with pytest.raises(CheckpointError, match="teachers.1"):
        build(parse_config(bad))


def test_multi_teacher_results_carry_teacher_accuracy_and_agreement(tmp_path):
    """results.json of a multi-teacher run has the fields a one-teacher run has (for the
    generalists' ensemble), plus each teacher's accuracy (a specialist's on its classes)."""
    from distill.evaluate import predict_logits, targets_of

    base = synthetic_cfg(tmp_path / "spec")
    base["data"]["classes"] = [2, 0]
    assert run_experiment(parse_config(base))["complete"]
    teachers = _teachers(tmp_path, 2) + [
        {**synthetic_cfg(tmp_path)["student"], "weights": str(tmp_path / "spec"), "classes": [2, 0]}
    ]
    cfg = _cfg(tmp_path, "multi_teacher", teachers=teachers)
    cfg["train"]["epochs"] = 1
    result = run_experiment(parse_config(cfg))
    built = build(parse_config(cfg))
    test = built.data.test
    y = targets_of(test)
    probs = [predict_logits(t, test).softmax(-1) for t in built.scheme.teachers[:2]]
    accs = [float((p.argmax(-1) == y).float().mean()) for p in probs]
    assert result["teachers_test_acc"][:2] == pytest.approx(accs)
    ensemble = torch.stack(probs).mean(0)
    assert result["teacher_test_acc"] == pytest.approx(
        float((ensemble.argmax(-1) == y).float().mean())
    )
    spec = built.scheme.teachers[2]
    own = (y == 2) | (y == 0)
    pred = torch.tensor([2, 0])[predict_logits(spec, test).argmax(-1)]
    assert result["teachers_test_acc"][2] == pytest.approx(
        float((pred[own] == y[own]).float().mean())
    )
    assert 0.0 <= result["test_agreement"] <= 1.0


def test_multi_teacher_validation_and_rl(tmp_path):
    cfg = _cfg(tmp_path, "multi_teacher", {"weighting": "validation"}, teachers=_teachers(tmp_path))
    built = build(parse_config(cfg))
    w = built.scheme.modules["fixed_weights"].value
    assert w.shape == (2,) and float(w.sum()) == pytest.approx(1.0)
    cfg = _cfg(tmp_path, "multi_teacher", {"weighting": "rl"}, teachers=_teachers(tmp_path))
    built = build(parse_config(cfg))
    s = built.scheme
    first = s.step(_batch(built), 0)
    assert float(first["policy"]) == 0.0  # no previous action to reward yet
    from distill.data import load_batch

    second = s.step(load_batch(built.data.train, torch.arange(16, 48)), 1)  # another batch
    second["policy"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s.policy.parameters())


# ----------------------------------------------------------------------------- pipelines
def test_ban_generations_teach_the_next(tmp_path):
    cfg = _cfg(tmp_path, "ban", {"generations": 2, "ensemble": True})
    cfg["train"]["epochs"] = 1
    parsed = parse_config(cfg)
    stages = expand(parsed)
    assert [s.name.rsplit("-", 1)[1] for s in stages] == ["gen0", "gen1", "gen2"]
    assert stages[0].scheme.name == "supervised"
    for k in (1, 2):
        assert stages[k].scheme.name == "offline"
        assert Path(stages[k].teacher.weights) == stages[k - 1].resolved_run_dir()
        assert stages[k].train.seed != stages[k - 1].train.seed
    result = run_experiment(parsed)
    assert result["complete"] and len(result["stages"]) == 3
    assert result["ensemble_members"] == 3 and 0 <= result["ensemble_test_acc"] <= 1
    assert (tmp_path / "run/checkpoints/best.safetensors").is_file()
    from distill.app.assess import assess

    assert assess(tmp_path / "run", eps=[0.01])["metrics"]["top1"] == pytest.approx(
        result["test_acc"]
    )


def test_teacher_assistant_chain(tmp_path):
    teacher = make_teacher(tmp_path / "t.safetensors")
    cfg = _cfg(
        tmp_path,
        "teacher_assistant",
        {"assistants": [{"name": "mlp", "args": {"hidden": [24]}}]},
        teacher={**MLP_T, "weights": str(teacher)},
    )
    cfg["train"]["epochs"] = 1
    stages = expand(parse_config(cfg))
    assert [s.student.args for s in stages] == [{"hidden": [24]}, {"hidden": [16, 16]}]
    assert Path(stages[1].teacher.weights) == stages[0].resolved_run_dir()
    assert validate(parse_config(cfg)) == []
    result = run_experiment(parse_config(cfg))
    assert result["complete"] and [s["stage"] for s in result["stages"]] == [
        "t-assistant0",
        "t-student",
    ]


def test_stages_resume_inside_a_stage(tmp_path):
    teacher = make_teacher(tmp_path / "t.safetensors")
    cfg = synthetic_cfg(
        tmp_path / "run", scheme="offline", teacher={**MLP_T, "weights": str(teacher)}
    )
    cfg["student"] = {"name": "mlp", "args": {"hidden": [16, 16]}}
    cfg["stages"] = [
        {
            "name": "hint",
            "objective": {
                "task_weight": 0.0,
                "terms": [
                    {
                        "loss": "fitnet",
                        "student": "blocks.1",
                        "teacher": "blocks.1",
                        "adapter": "linear",
                    }
                ],
            },
            "train": {"epochs": 2},
        },
        {
            "name": "kd",
            "objective": {"task_weight": 0.5, "terms": [{"loss": "kd", "weight": 0.5}]},
            "train": {"epochs": 3, "optimizer": {"lr": 0.005}},
        },
    ]
    parsed = parse_config(cfg)
    stages = expand(parsed)
    assert stages[1].train.optimizer.lr == 0.005 and stages[1].train.optimizer.name == "adamw"
    assert Path(stages[1].student.weights) == stages[0].resolved_run_dir()  # carried over
    calls = []

    def crash_in_stage_two(row):
        calls.append(row["epoch"])
        if len(calls) == 4:  # stage 2, after its second epoch's checkpoint
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_experiment(parsed, callbacks=[crash_in_stage_two])
    first_stage = stages[0].resolved_run_dir() / "results.json"
    stamp = first_stage.stat().st_mtime_ns
    with pytest.raises(ConfigError, match="already holds a run"):
        run_experiment(parsed)
    result = run_experiment(parsed, resume=True)
    assert result["complete"]
    assert first_stage.stat().st_mtime_ns == stamp  # the finished stage was not retrained
    rows = (stages[1].resolved_run_dir() / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2, 3]


def test_scheme_from_python_as_in_the_readme(tmp_path):
    from distill import Objective, SchemeContext, Trainer, TrainSettings, build_model, load_dataset
    from distill.schemes.online import DeepMutualLearning

    data = load_dataset("synthetic", num_samples=300, num_features=8, num_classes=3)
    student = build_model("mlp", data.input_shape, data.num_classes, {"hidden": [16]})
    peer = build_model("mlp", data.input_shape, data.num_classes, {"hidden": [32]})
    dml = DeepMutualLearning(
        SchemeContext(
            student=student,
            objective=Objective(),
            data=data,
            peers=[peer],
            args={"temperature": 3.0},
        )
    )
    settings = TrainSettings(epochs=2, batch_size=32, progress=False)
    summary = Trainer(dml, data.train, data.val, settings, run_dir=tmp_path / "r").fit()
    assert summary["complete"] and dml.peers == [peer]


def test_schemes_cli_lists_every_scheme(capsys):
    from distill.app.cli import main

    assert main(["schemes", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(SCHEMES)
    assert {"name", "family", "paper", "teacher", "args"} <= set(rows[0])
    assert main(["methods", "--json"]) == 0
    assert "dml" in {r["name"] for r in json.loads(capsys.readouterr().out)}


def test_stage_config_errors(tmp_path):
    cfg = _cfg(tmp_path, "offline")
    cfg["stages"] = [{"name": "a", "teacher": "previous"}]
    with pytest.raises(ConfigError, match="needs a stage before it"):
        expand(parse_config(cfg))
    cfg["stages"] = [
        {"name": "a", "scheme": "supervised"},
        {"name": "b", "scheme": "supervised", "student": {"name": "mlp"}},
    ]
    with pytest.raises(ConfigError, match="set init: fresh"):
        expand(parse_config(cfg))


# ----------------------------------------------------------------------------- the table as data
def test_scheme_table_arg_names_match_each_schemes_arguments():
    """`distill schemes` reads the argument names from the table (no scheme is imported);
    they must be the fields of the scheme's own typed arguments."""
    from distill.core.registry import resolve

    for name, spec in SCHEMES.items():
        model = spec.args or (resolve(spec.pipeline_args) if spec.pipeline_args else None)
        live = sorted(model.model_fields) if model is not None else []
        assert list(spec.arg_names) == live, name
        assert spec.is_pipeline == (spec.builder is None), name
        if not spec.is_pipeline:
            assert callable(spec.build), name


def test_no_scheme_is_known_by_name_outside_its_table():
    """build, validate, the cache, the loop, the run and the stages decide by the table's
    capabilities: no comparison against a scheme's name (a string literal) is left in them."""
    import ast

    src = REPO / "src" / "distill"
    names = set(SCHEMES)
    found = []
    for module in (
        "app/build.py",
        "app/problems.py",
        "app/terms.py",
        "app/validate.py",
        "loop/cache.py",
        "loop/trainer.py",
        "app/run.py",
        "evaluate.py",
        "app/stages.py",
        "loop/resume.py",
    ):
        tree = ast.parse((src / module).read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            for part in [node.left, *node.comparators]:
                consts = part.elts if isinstance(part, ast.Tuple | ast.List | ast.Set) else [part]
                for c in consts:
                    if isinstance(c, ast.Constant) and c.value in names:
                        found.append(f"{module}:{node.lineno} compares with {c.value!r}")
    assert not found, "\n".join(found)
