"""Cross-modal data: paired modalities stay aligned through splits and batches, the teacher
reads its own modality (live, cached and at test time), and mutual learning across them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import REPO, synthetic_cfg

from distill.app.build import build
from distill.app.run import run_experiment
from distill.app.validate import validate
from distill.core.checkpoint import save_weights
from distill.core.config import load_config, parse_config
from distill.core.errors import ConfigError
from distill.data import load_batch, load_dataset
from distill.data.views import make_view

SIGNAL_T = {"name": "convnet", "args": {"channels": [4, 8], "kernel_size": 3}}
IMAGE_S = {"name": "convnet", "args": {"channels": [4, 8], "kernel_size": 3}}
DATA = {"name": "mnist1d", "options": {"num_samples": 600}}


def test_views_are_the_documented_transforms():
    x = np.random.default_rng(0).normal(size=(5, 1, 40)).astype(np.float32)
    spec, spec_test, shape = make_view("spectrogram", x, x[:2])
    assert shape == (1, 9, 21) and spec.shape == (5, 1, 9, 21)
    # log-magnitude STFT, standardised with the training split's mean and scale
    raw = (
        torch.stft(
            torch.as_tensor(x[:, 0]),
            16,
            hop_length=2,
            window=torch.hann_window(16),
            return_complex=True,
        )
        .abs()
        .log1p()
        .numpy()
    )
    expected = (raw - raw.mean()) / (raw.std() + 1e-6)
    np.testing.assert_allclose(spec[:, 0], expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(spec_test, spec[:2], rtol=1e-5, atol=1e-5)
    img = np.arange(2 * 1 * 3 * 4, dtype=np.float32).reshape(2, 1, 3, 4)
    flat, _, shape = make_view("flatten", img, img)
    assert shape == (1, 12) and np.array_equal(flat[1, 0], img[1, 0].reshape(-1))
    with pytest.raises(ConfigError, match="unknown data view"):
        make_view("fourier", x, x)
    with pytest.raises(ConfigError, match="needs 1-D signals"):
        make_view("spectrogram", img, img)


def test_paired_modalities_stay_aligned_through_splits_and_batches():
    plain = load_dataset("mnist1d", num_samples=600)
    data = load_dataset("mnist1d", num_samples=600, view="spectrogram", paired="raw")
    assert data.input_shape == (1, 9, 21) and data.paired_shape == (1, 40)
    for split in ("train", "val", "test"):
        a, b = getattr(plain, split), getattr(data, split)
        assert torch.equal(b.paired, a.inputs) and torch.equal(b.targets, a.targets)
    batch = load_batch(data.train, torch.tensor([3, 1, 4]))
    assert torch.equal(batch["paired"], plain.train.inputs[[3, 1, 4]])
    spec, _, _ = make_view("spectrogram", plain.train.inputs.numpy(), plain.test.inputs.numpy())
    # the view is computed on the whole training set before the validation split
    assert batch["input"].shape == (3, 1, 9, 21)
    assert np.isfinite(spec).all()


def _cfg(tmp_path, name: str, **over) -> dict:
    teacher = tmp_path / "signal_teacher.safetensors"
    if not teacher.exists():
        one = parse_config(synthetic_cfg(tmp_path / "t", data=DATA, student=SIGNAL_T))
        save_weights(teacher, build(one).student)
    cfg = synthetic_cfg(
        tmp_path / name,
        data={**DATA, "view": "spectrogram", "paired": "raw"},
        student=IMAGE_S,
        scheme="offline",
    )
    cfg["teacher"] = {**SIGNAL_T, "weights": str(teacher)}
    cfg["objective"] = {
        "task_weight": 0.5,
        "terms": [
            {"loss": "kd", "weight": 0.5, "args": {"temperature": 2.0}},
            {"loss": "infonce", "weight": 0.5, "student": "head.0", "teacher": "head.0"},
        ],
    }
    cfg["train"].update(epochs=2, cache={"dir": str(tmp_path / "cache")})
    for k, v in over.items():
        old = cfg.get(k)
        cfg[k] = {**old, **v} if isinstance(v, dict) and isinstance(old, dict) else v
    return cfg


def test_signal_teacher_teaches_a_spectrogram_student_live_and_cached(tmp_path):
    built = build(parse_config(_cfg(tmp_path, "probe")))
    batch = load_batch(built.data.train, torch.arange(8))
    with torch.no_grad():
        knowledge = built.scheme.teacher_knowledge(batch)
        expected = built.teacher(batch["paired"])
    torch.testing.assert_close(knowledge.logits, expected)
    results = {}
    for mode in ("off", "on"):
        cfg = _cfg(
            tmp_path, f"run-{mode}", train={"cache": {"mode": mode, "dir": str(tmp_path / "cache")}}
        )
        results[mode] = run_experiment(parse_config(cfg))
    assert "cached" in results["on"]["teacher_cache"]
    assert results["on"]["test_acc"] == results["off"]["test_acc"]  # the cache is exact
    # test-time teacher metrics read the teacher's modality
    with torch.no_grad():
        t_acc = built.teacher(built.data.test.paired).argmax(-1) == built.data.test.targets
    assert results["on"]["teacher_test_acc"] == pytest.approx(float(t_acc.float().mean()))


def test_mutual_learning_across_modalities_trains_both_models(tmp_path):
    cfg = _cfg(
        tmp_path,
        "dml",
        scheme={"name": "dml", "args": {"temperature": 2.0}},
        objective={"task_weight": 1.0, "terms": []},
    )
    built = build(parse_config(cfg))
    batch = load_batch(built.data.train, torch.arange(8))
    out = built.scheme.step(batch, 0)
    teacher_peer = built.scheme.peers[0]
    grads = torch.autograd.grad(out["loss"], list(teacher_peer.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)  # the teacher learns too
    with torch.no_grad():
        torch.testing.assert_close(
            built.objective.task_loss(teacher_peer(batch["paired"]), batch["target"]),
            out["task_peer1"],
        )


def test_paired_data_is_refused_where_it_would_be_misread(tmp_path):
    cfg = parse_config(_cfg(tmp_path, "bad", scheme={"name": "adversarial", "args": {}}))
    assert any("data.paired" in p for p in validate(cfg))
    cfg = parse_config(_cfg(tmp_path, "bad2", train={"cache": {"views": 2}}))
    assert any("train.cache.views" in p for p in validate(cfg))


CROSS = sorted((REPO / "examples" / "cross_modal").glob("*.yaml"))


@pytest.mark.parametrize("path", CROSS, ids=[p.stem for p in CROSS])
def test_cross_modal_example_validates_and_trains(path, tmp_path):
    cfg = load_config(path)
    teacher_data = {**cfg.data.model_dump(), "view": cfg.data.paired, "paired": None}
    one = parse_config(
        {
            "data": teacher_data,
            "scheme": "supervised",
            "student": {**cfg.teacher.model_dump(), "weights": None},
        }
    )
    save_weights(tmp_path / "teacher.safetensors", build(one).student)  # a stand-in teacher
    overrides = [
        f"run_dir={tmp_path / 'run'}",
        "train.max_steps=3",
        "train.progress=false",
        f"teacher.weights={tmp_path / 'teacher.safetensors'}",
    ]
    cfg = load_config(path, overrides)
    assert validate(cfg) == []
    assert run_experiment(cfg)["steps"] == 3


# ----------------------------------------------------------------------------- cross-task
def test_label_map_makes_a_related_task():
    plain = load_dataset("mnist1d", num_samples=600)
    parity = load_dataset("mnist1d", num_samples=600, label_map=[0, 1] * 5)
    assert parity.num_classes == 2
    # the test split is fixed (the validation split is stratified by the new labels)
    assert torch.equal(parity.test.targets, plain.test.targets % 2)
    assert torch.equal(parity.test.inputs, plain.test.inputs)
    for bad in ([0, 1] * 4, [0, 2] * 5):
        with pytest.raises(ConfigError, match="label_map"):
            load_dataset("mnist1d", num_samples=600, label_map=bad)


def test_cross_task_teacher_teaches_through_features_not_logits(tmp_path):
    parity_t = {"name": "mlp", "args": {"hidden": [32, 32]}}
    data = {"name": "synthetic", "options": {"num_samples": 400, "num_classes": 4}}
    one = parse_config(
        synthetic_cfg(tmp_path / "t", data={**data, "label_map": [0, 1, 0, 1]}, student=parity_t)
    )
    weights = tmp_path / "parity.safetensors"
    save_weights(weights, build(one).student)
    cfg = synthetic_cfg(tmp_path / "run", data=data, scheme="offline")
    cfg["teacher"] = {**parity_t, "weights": str(weights), "num_classes": 2}
    hint = {"loss": "mse", "student": "blocks.0", "teacher": "blocks.1", "adapter": "linear"}
    cfg["objective"] = {"terms": [hint]}
    cfg["train"]["epochs"] = 1
    result = run_experiment(parse_config(cfg))  # a 2-class teacher, a 4-class student
    assert result["complete"] and "teacher_test_acc" not in result
    cfg["objective"] = {"terms": [hint, {"loss": "kd"}]}  # logits cannot be compared
    with pytest.raises(ConfigError, match="cross-task"):
        build(parse_config(cfg))
