"""Compression: pruning, low-rank factorisation, quantization-aware training, quantized
schemes, architecture search, structure replay on load, ONNX export parity and the
`distill compress` pipeline."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import kd_cfg, make_teacher, synthetic_cfg
from torch import nn

from distill.app.build import build
from distill.app.run import run_experiment
from distill.compress.lowrank import LowRankLinear, choose_rank, factorize
from distill.compress.prune import (
    SparsityKeeper,
    magnitude_masks,
    prune_channels,
    scheduled_amount,
    sparsity,
)
from distill.compress.quant import (
    ActQuant,
    QuantLayer,
    fake_quant_weight,
    prepare_qat,
    stochastic_precision,
    weight_scale,
)
from distill.compress.search import SearchSettings, search, similarity_score
from distill.compress.structure import structure_of
from distill.core.checkpoint import save_weights
from distill.core.config import parse_config
from distill.core.errors import CheckpointError, ConfigError
from distill.core.settings import QuantSettings, SparsitySettings
from distill.models import build_model
from distill.models.weights import restore_weights
from distill.schemes.quantized import cosine_distillation

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

CONV1D = {"channels": [8, 16, 16], "hidden": 32}


def _conv(seed: int = 0, **args) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model("convnet", (1, 40), 10, {**CONV1D, **args})
    with torch.no_grad():  # non-trivial BatchNorm statistics and scales
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


# ------------------------------------------------------------------ unstructured pruning
def test_magnitude_masks_drop_exactly_the_smallest_weights():
    w = {"a": torch.tensor([[0.1, -3.0], [0.5, 2.0]]), "b": torch.tensor([-0.2, 4.0, 0.05])}
    masks = magnitude_masks(w, 0.4, "global")  # 7 weights, drop round(2.8) = 3 smallest
    assert masks["a"].tolist() == [[False, True], [True, True]]
    assert masks["b"].tolist() == [False, True, False]
    per_layer = magnitude_masks(w, 0.5, "layer")  # 2 of 4 in a, round(1.5) = 2 of 3 in b
    assert per_layer["a"].tolist() == [[False, True], [False, True]]
    assert per_layer["b"].tolist() == [False, True, False]
    with pytest.raises(ValueError, match="amount"):
        magnitude_masks(w, 1.0)


def test_gradual_schedule_is_zhu_and_gupta_cubic():
    s = SparsitySettings(amount=0.8, start_step=100, end_step=500, every=50)
    assert scheduled_amount(99, s) == 0.0
    assert scheduled_amount(100, s) == 0.0
    # at 300 steps half the ramp is done: 0.8 * (1 - 0.5^3)
    assert scheduled_amount(300, s) == pytest.approx(0.8 * (1 - 0.5**3))
    assert scheduled_amount(349, s) == scheduled_amount(300, s)  # pruned every 50 steps
    assert scheduled_amount(500, s) == 0.8 and scheduled_amount(10_000, s) == 0.8


def test_sparsity_keeper_holds_pruned_weights_at_zero():
    model = _conv()
    keeper = SparsityKeeper(model, SparsitySettings(amount=0.6, skip=["head.3"]))
    keeper(0)
    assert sparsity(model, ["head.3"]) == pytest.approx(0.6, abs=1e-3)
    zeros = {n: p == 0 for n, p in model.named_parameters() if p.dim() > 1}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    model(torch.randn(8, 1, 40)).pow(2).mean().backward()
    opt.step()  # gradients revive pruned weights...
    keeper(1)  # ...and the keeper zeroes them again
    for n, p in model.named_parameters():
        if n in zeros and not n.startswith("head.3"):
            assert (p[zeros[n]] == 0).all(), n


def test_training_with_sparsity_saves_a_model_at_the_target(tmp_path):
    cfg = kd_cfg(tmp_path / "run", make_teacher(tmp_path / "t.safetensors"))
    cfg["student"]["sparsity"] = {"amount": 0.7, "start_step": 0, "end_step": 20, "every": 5}
    result = run_experiment(parse_config(cfg))
    assert result["complete"]
    model = build_model("mlp", (8,), 3, {"hidden": [16]})
    restore_weights(model, tmp_path / "run/checkpoints/best.safetensors", "student")
    # the best epoch is only chosen among epochs at full sparsity
    assert sparsity(model) == pytest.approx(0.7, abs=0.01)


# -------------------------------------------------------------------- structured pruning
def test_channel_pruning_really_shrinks_and_equals_dropping_those_channels():
    model = _conv()
    pruned = copy.deepcopy(model)
    x = torch.randn(16, 1, 40)
    report = prune_channels(pruned, 0.5, x[:2])
    assert pruned.blocks[0][0].weight.shape == (4, 1, 5)
    assert pruned.blocks[1][0].weight.shape == (8, 4, 5)
    assert pruned.blocks[1][1].num_features == 8
    assert pruned.head[1].weight.shape == (16, 8 * 5)  # 8 channels x 5 positions
    assert pruned.head[3].weight.shape == (10, 16)  # the classifier keeps its outputs
    assert report["blocks.0.0"] == {"before": 8, "after": 4}
    assert "head.3" not in report
    # the same function as the original with the dropped channels' readers zeroed
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for name, reader, span in (
            ("blocks.0.0", "blocks.1.0", 1),
            ("blocks.1.0", "blocks.2.0", 1),
            ("blocks.2.0", "head.1", 5),
            ("head.1", "head.3", 1),
        ):
            scores = model.get_submodule(name).weight.abs().flatten(1).sum(1)
            kept = scores.argsort(descending=True)[: report[name]["after"]]
            drop = torch.ones(len(scores), dtype=torch.bool)
            drop[kept] = False
            cols = (drop.nonzero().flatten()[:, None] * span + torch.arange(span)).flatten()
            reference.get_submodule(reader).weight[:, cols] = 0
    torch.testing.assert_close(pruned(x), reference(x), rtol=1e-5, atol=1e-5)


def test_channel_pruning_by_batchnorm_scale_and_mlp_neurons():
    model = _conv()
    with torch.no_grad():
        model.blocks[0][1].weight.copy_(torch.tensor([5.0, 0.1, 4.0, 0.2, 3.0, 0.3, 2.0, 0.4]))
    prune_channels(model, 0.5, torch.randn(2, 1, 40), criterion="bn")
    assert model.blocks[0][1].weight.tolist() == [5.0, 4.0, 3.0, 2.0]  # network slimming
    mlp = build_model("mlp", (8,), 3, {"hidden": [16, 16]})
    prune_channels(mlp, 0.25, torch.randn(2, 8))
    assert [b[0].out_features for b in mlp.blocks] == [12, 12] and mlp.head.in_features == 12


def test_residual_outputs_are_left_whole():
    model = build_model("resnet", (1, 40), 10, {"widths": [8, 16], "blocks_per_stage": 1}).eval()
    x = torch.randn(4, 1, 40)
    report = prune_channels(model, 0.5, x[:2])
    # only the first conv of each block (read by its second conv alone) can lose channels
    assert set(report) == {"layer1.0.conv1", "layer2.0.conv1"}
    assert model.layer1[0].conv2.weight.shape[1] == 4
    assert model(x).shape == (4, 10)
    with pytest.raises(ValueError, match="torch.fx"):

        class Dynamic(nn.Module):
            def forward(self, x):
                return x if x.sum() > 0 else -x

        prune_channels(Dynamic(), 0.5, x)


# --------------------------------------------------------------------------- low rank
def test_rank_choice_and_factorised_layer_are_the_truncated_svd():
    s = torch.tensor([3.0, 2.0, 1.0, 0.5])  # energy shares: 9, 13, 14, 14.25 of 14.25
    assert choose_rank(s, 0.6, None) == 1 and choose_rank(s, 0.9, None) == 2
    assert choose_rank(s, 0.98, None) == 3 and choose_rank(s, 0.99, None) == 4
    assert choose_rank(s, None, 0.5) == 2
    model = _conv()
    w = model.head[1].weight.detach().clone()
    report = factorize(model, rank_ratio=0.25, min_features=16)
    assert isinstance(model.head[1], LowRankLinear) and report["head.1"]["rank"] == 8
    u, sv, vh = torch.linalg.svd(w, full_matrices=False)
    best = u[:, :8] @ torch.diag(sv[:8]) @ vh[:8]
    torch.testing.assert_close(model.head[1].up.weight @ model.head[1].down.weight, best)
    assert report["head.1"]["params_after"] == 8 * (80 + 32) < report["head.1"]["params_before"]
    assert "head.3" not in report  # 10 outputs < min_features


# ------------------------------------------------------------------------- quantization
def test_weight_and_activation_fake_quantizers_follow_their_formulas():
    w = torch.randn(6, 4, 3)
    q = fake_quant_weight(w, 4)
    scale = w.abs().flatten(1).amax(1) / 7  # symmetric, 2^(4-1) - 1 levels each side
    torch.testing.assert_close(weight_scale(w, 4), scale)
    levels = q / scale[:, None, None]
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)
    assert levels.abs().max() <= 7 + 1e-4
    torch.testing.assert_close(q, (w / scale[:, None, None]).round() * scale[:, None, None])
    w.requires_grad_(True)
    fake_quant_weight(w, 4).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # straight-through inside the range
    act = ActQuant(bits=8, momentum=0.1).train()
    act(torch.tensor([-1.0, 3.0]))
    assert (act.lo.item(), act.hi.item()) == (-1.0, 3.0)  # the first batch sets the range
    act(torch.tensor([-3.0, 5.0]))
    assert act.lo.item() == pytest.approx(-1.2) and act.hi.item() == pytest.approx(3.2)
    scale_a, zero = act.qparams()
    assert scale_a.item() == pytest.approx(4.4 / 255) and zero.item() == round(1.2 / (4.4 / 255))
    x = torch.linspace(-2, 4, 50)
    out = act.eval()(x)
    expect = (torch.clamp((x / scale_a).round() + zero, 0, 255) - zero) * scale_a
    torch.testing.assert_close(out, expect)


def test_qat_model_saves_and_reloads_with_its_quantizers(tmp_path):
    model = _conv()
    prepare_qat(model, QuantSettings(bits=4, act_bits=6))
    assert isinstance(model.blocks[0][0], QuantLayer)
    model.train()(torch.randn(32, 1, 40))  # observers see data
    model.eval()
    save_weights(tmp_path / "q.safetensors", model)
    fresh = build_model("convnet", (1, 40), 10, CONV1D)
    restore_weights(fresh, tmp_path / "q.safetensors", "student")
    x = torch.randn(8, 1, 40)
    torch.testing.assert_close(fresh.eval()(x), model(x))
    assert structure_of(fresh) == structure_of(model)


def test_structure_replays_pruning_and_low_rank_and_refuses_a_mismatch(tmp_path):
    model = _conv()
    prune_channels(model, 0.5, torch.randn(2, 1, 40))
    factorize(model, rank_ratio=0.5, min_features=8)
    save_weights(tmp_path / "p.safetensors", model)
    fresh = build_model("convnet", (1, 40), 10, CONV1D)
    restore_weights(fresh, tmp_path / "p.safetensors", "student")
    x = torch.randn(8, 1, 40)
    torch.testing.assert_close(fresh.eval()(x), model(x))
    other = build_model("convnet", (1, 40), 10, CONV1D)
    prepare_qat(other, QuantSettings())
    with pytest.raises(CheckpointError, match="compressed differently"):
        restore_weights(other, tmp_path / "p.safetensors", "student")
    wrong = build_model("mlp", (1, 40), 10, {"hidden": [8]})
    with pytest.raises(CheckpointError, match="does not fit this model"):
        restore_weights(wrong, tmp_path / "p.safetensors", "student")


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_onnx_export_matches_pytorch(tmp_path, bits):
    from distill.compress.export import export_onnx, parity

    model = _conv()
    float_info = export_onnx(model, (1, 40), tmp_path / "float.onnx")
    prepare_qat(model, QuantSettings(bits=bits, act_bits=bits))
    model.train()(torch.randn(64, 1, 40))
    info = export_onnx(model.eval(), (1, 40), tmp_path / "q.onnx")
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8 = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8) == info["int8_weights"] == 5  # every Conv/Linear weight stored as int8
    weights = sum(m.layer.weight.numel() for m in model.modules() if isinstance(m, QuantLayer))
    assert sum(len(t.raw_data) for t in int8) == weights  # one byte per weight
    assert info["bytes"] < float_info["bytes"]
    check = parity(model, tmp_path / "q.onnx", torch.randn(300, 1, 40))
    assert check["top1_agreement"] >= 0.99
    # ORT's integer kernels may round one activation differently from PyTorch's float path
    assert check["rel_diff"] < 0.02
    float_check = parity(_conv(), tmp_path / "float.onnx", torch.randn(300, 1, 40))
    assert float_check["max_abs_diff"] < 1e-4 and float_check["top1_agreement"] == 1.0


# ---------------------------------------------------------------------- quantized schemes
def test_speq_loss_and_stochastic_teacher():
    z_s, z_t = torch.randn(5, 4), torch.randn(5, 4)
    p_s, p_t = F.softmax(z_s / 2, -1), F.softmax(z_t / 2, -1)
    expect = (1 - (p_s * p_t).sum(1) / (p_s.norm(dim=1) * p_t.norm(dim=1))).mean()
    torch.testing.assert_close(cosine_distillation(z_s, z_t, 2.0), expect)
    z_s.requires_grad_(True)
    z_t.requires_grad_(True)
    cosine_distillation(z_s, z_t, 2.0).backward()
    assert z_s.grad.abs().sum() > 0 and z_t.grad is None  # the student learns, the target holds
    model = _conv()
    prepare_qat(model, QuantSettings(bits=4, act_bits=4))
    model.train()
    x = torch.randn(16, 1, 40)
    quantized = model(x)
    stats = model.blocks[0][1].running_mean.clone()
    lo = model.blocks[1][0].act.lo.clone()
    with stochastic_precision(model, 1.0):  # every activation at full precision
        full = model(x)
    assert torch.equal(model.blocks[0][1].running_mean, stats)  # BN statistics restored
    assert torch.equal(model.blocks[1][0].act.lo, lo)  # observers did not move
    assert not torch.allclose(full, quantized)
    assert not model.blocks[1][0].act.full_precision


def _quant_cfg(tmp_path, scheme: str, args: dict, teacher: bool) -> dict:
    cfg = kd_cfg(tmp_path / scheme, make_teacher(tmp_path / "t.safetensors"))
    cfg["scheme"] = {"name": scheme, "args": args}
    cfg["objective"]["terms"] = []
    if not teacher:
        cfg["teacher"] = None
    cfg["student"]["quantize"] = {"bits": 4, "act_bits": 4}
    return cfg


def test_qkd_phases_train_the_teacher_only_while_co_studying(tmp_path):
    built = build(parse_config(_quant_cfg(tmp_path, "qkd", {"self_study": 2, "co_study": 2}, True)))
    scheme = built.scheme
    from distill.data import load_batch

    batch = load_batch(built.data.train, torch.arange(16))
    scheme.train()
    assert [scheme.phase(s) for s in (0, 1, 2, 3, 4)] == [
        "self_study",
        "self_study",
        "co_study",
        "co_study",
        "tutoring",
    ]
    for step, teacher_learns in ((0, False), (2, True), (4, False)):
        out = scheme.step(batch, step)
        grads = torch.autograd.grad(
            out["loss"], list(scheme.teacher.parameters()), allow_unused=True
        )
        assert any(g is not None for g in grads) == teacher_learns, step
        assert ("kd" in out) == (step >= 2)
    assert scheme.lr_scales == {"teacher": 0.1}
    with pytest.raises(ConfigError, match="student.quantize"):
        cfg = _quant_cfg(tmp_path, "speq", {}, False)
        del cfg["student"]["quantize"]
        build(parse_config(cfg))


def test_speq_and_qat_kd_train_end_to_end(tmp_path):
    for cfg in (
        _quant_cfg(tmp_path, "speq", {"prob": 0.5}, False),
        {**kd_cfg(tmp_path / "qatkd", make_teacher(tmp_path / "t.safetensors"))},
    ):
        cfg["student"]["quantize"] = {"bits": 4, "act_bits": 4}
        result = run_experiment(parse_config(cfg))
        assert result["complete"] and result["test_acc"] > 0.85  # measured 0.97-1.0


# -------------------------------------------------------------------------------- search
def test_similarity_is_highest_for_the_teacher_itself():
    teacher = _conv()
    x = torch.randn(32, 1, 40)
    assert similarity_score(teacher, teacher, x, 10) == pytest.approx(0.0, abs=1e-6)
    assert similarity_score(_conv(seed=3, channels=[4, 4, 4]), teacher, x, 10) < -1e-4


def test_search_respects_its_budget_and_returns_the_pareto_set():
    teacher = _conv()
    s = SearchSettings(
        model="convnet",
        space={"channels": [[4, 4], [8, 8], [16, 32], [32, 64]], "kernel_size": [3, 5]},
        max_params=2500,
        score="both",
        top_k=2,
    )
    trained = []

    def proxy(args):  # stands in for a short KD run: prefers wider kernels
        trained.append(args)
        return 0.5 + 0.01 * args["kernel_size"] + 0.001 * args["channels"][0]

    result = search(
        s,
        input_shape=(1, 40),
        num_classes=10,
        teacher=teacher,
        probe=torch.randn(16, 1, 40),
        proxy=proxy,
    )
    rows = result["candidates"]
    assert len(rows) == 8
    for r in rows:
        assert r["valid"] == (r["params"] <= 2500)
        if not r["valid"]:
            assert "params" in r["reason"] and "proxy_acc" not in r and "similarity" not in r
    assert len(trained) == 2  # the top_k by similarity get the proxy run
    chosen = next(r for r in rows if r["args"] == result["chosen"])
    assert chosen["valid"] and chosen["params"] <= 2500
    scored = [r for r in rows if "score" in r]
    assert chosen["score"] == max(r["score"] for r in scored)
    for r in scored:  # nothing in the Pareto set is dominated
        if r.get("pareto"):
            assert not any(o["params"] <= r["params"] and o["score"] > r["score"] for o in scored)
    with pytest.raises(ValueError, match="no candidate fits"):
        search(
            s.model_copy(update={"max_params": 10}),
            input_shape=(1, 40),
            num_classes=10,
            teacher=teacher,
            probe=torch.randn(4, 1, 40),
            proxy=proxy,
        )


# ------------------------------------------------------------------------------ pipeline
def _compress_cfg(tmp_path) -> dict:
    base = synthetic_cfg(tmp_path / "unused", data={"name": "digits", "options": {}})
    base["student"] = {"name": "convnet", "args": {"channels": [4, 8], "kernel_size": 3}}
    base["objective"] = {"task_weight": 0.5, "terms": [{"loss": "kd", "weight": 0.5}]}
    base["train"] = {**base["train"], "epochs": 1}
    teacher = {"name": "convnet", "args": {"channels": [8, 16], "kernel_size": 3, "hidden": 32}}
    return {
        "name": "t",
        "run_dir": str(tmp_path / "compress"),
        "base": base,
        "export": {"latency_repeats": 10},
        "stages": [
            {"name": "teacher", "kind": "train", "model": teacher},
            {"name": "pruned", "kind": "prune", "source": "teacher", "prune": {"amount": 0.5}},
            {"name": "student", "kind": "train", "teacher": "teacher"},
            {
                "name": "int8",
                "kind": "quantize",
                "source": "student",
                "teacher": "teacher",
                "quantize": {"bits": 8},
            },
            {
                "name": "lowrank",
                "kind": "lowrank",
                "source": "teacher",
                "lowrank": {"rank_ratio": 0.25},
                "train": {"epochs": 0},
            },
            {
                "name": "searched",
                "kind": "search",
                "teacher": "teacher",
                "search": {
                    "model": "convnet",
                    "space": {"channels": [[2, 4], [4, 8], [16, 32]]},
                    "fixed": {"kernel_size": 3},
                    "max_params": 1500,
                    "top_k": 1,
                    "proxy_epochs": 1,
                },
            },
        ],
    }


def test_compress_pipeline_end_to_end(tmp_path):
    from distill.compress.pipeline import load_compress_config, run_compress

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_compress_cfg(tmp_path)))
    result = run_compress(load_compress_config(path), progress=False)
    rows = {r["model"]: r for r in result["rows"]}
    assert list(rows) == [
        "teacher",
        "pruned (before recovery)",
        "pruned",
        "student",
        "int8",
        "lowrank (before recovery)",
        "searched",
    ]
    assert rows["pruned"]["params"] < rows["teacher"]["params"] / 2
    assert rows["int8"]["quantized"] == "w8a8"
    assert rows["searched"]["params"] <= 1500
    for r in rows.values():
        assert r["onnx_top1_agreement"] >= 0.99 and 0 < r["test_acc"] <= 1
    out = tmp_path / "compress"
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["rows"]) == len(rows)
    assert (out / "pareto.png").stat().st_size > 0 and "| int8 (w8a8) |" in (
        out / "report.md"
    ).read_text()
    # the recovered pruned teacher is a normal run dir: distill eval reads it
    from distill.app.assess import load_run

    model, _data, _path = load_run(out / "stages/01-pruned/run")
    assert model.blocks[0][0].out_channels == 4
    # a second call finds every stage done and trains nothing
    mtime = (out / "stages/00-teacher/run/results.json").stat().st_mtime
    again = run_compress(load_compress_config(path), progress=False)
    assert [r["model"] for r in again["rows"]] == list(rows)
    assert (out / "stages/00-teacher/run/results.json").stat().st_mtime == mtime


def test_compress_config_errors_name_the_problem(tmp_path):
    from distill.compress.pipeline import load_compress_config, run_compress

    cfg = _compress_cfg(tmp_path)
    cfg["stages"][1]["source"] = "nope"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as e:
        load_compress_config(path)
    assert "'nope' is not an earlier stage" in str(e.value)
    cfg = _compress_cfg(tmp_path)
    cfg["stages"][2]["kind"] = "quantize"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="quantize stage needs source, quantize"):
        load_compress_config(path)
    good = _compress_cfg(tmp_path)
    good["stages"] = good["stages"][:1]
    good["base"]["train"]["epochs"] = 1
    path.write_text(yaml.safe_dump(good))
    run_compress(load_compress_config(path), progress=False)
    # a stage may be added to a finished run; a changed stage or base is refused
    good["stages"].append({"name": "student", "kind": "train", "teacher": "teacher"})
    path.write_text(yaml.safe_dump(good))
    assert len(run_compress(load_compress_config(path), progress=False)["rows"]) == 2
    good["stages"][0]["model"]["args"]["hidden"] = 64
    path.write_text(yaml.safe_dump(good))
    with pytest.raises(ConfigError, match="stage 'teacher' .* another config"):
        run_compress(load_compress_config(path), progress=False)
    good["stages"][0]["model"]["args"]["hidden"] = 32
    good["base"]["train"]["epochs"] = 2
    path.write_text(yaml.safe_dump(good))
    with pytest.raises(ConfigError, match="another base"):
        run_compress(load_compress_config(path), progress=False)
