"""The teacher-output cache: exactness, augmented views, fingerprints, damage, top-k."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import kd_cfg, make_teacher

from distill.app.build import build
from distill.core.config import parse_config
from distill.core.errors import ConfigError
from distill.core.settings import CacheSettings
from distill.loop.cache import TeacherCache, plan_cache
from distill.loop.cache_keys import topk_compress, topk_expand
from distill.loop.trainer import Trainer

FEATURE_TERM = {
    "loss": "fitnet",
    "weight": 0.3,
    "student": "blocks.0",
    "teacher": "blocks.1",
    "adapter": "linear",
}


def _cfg(tmp_path, cache: dict | None = None, **train):
    teacher = tmp_path / "teacher.safetensors"
    if not teacher.exists():
        make_teacher(teacher)
    cfg = kd_cfg(tmp_path / "run", teacher)
    cfg["objective"]["terms"] = [*cfg["objective"]["terms"], FEATURE_TERM]
    cfg["train"] = {
        **cfg["train"],
        "cache": {"dir": str(tmp_path / "cache"), **(cache or {})},
        **train,
    }
    return cfg


def _logs():
    seen: list[str] = []
    return seen, seen.append


def test_cached_and_live_teacher_give_the_same_losses_and_weights(tmp_path):
    cached = build(parse_config(_cfg(tmp_path)))
    live = build(parse_config(_cfg(tmp_path, {"mode": "off"})))
    assert cached.scheme.teacher_cache is not None and live.scheme.teacher_cache is None
    assert "exact" in cached.cache_plan.reason and "off" in live.cache_plan.reason
    batch = cached.data.train.batch(torch.arange(40, 72))
    a, b = cached.scheme.step(batch, 0), live.scheme.step(batch, 0)
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)
    runs = {}
    for name, cfg in (("cached", _cfg(tmp_path)), ("live", _cfg(tmp_path, {"mode": "off"}))):
        built = build(parse_config(cfg))
        trainer = Trainer(
            built.scheme, built.data.train, built.data.val, built.cfg.train, run_dir=tmp_path / name
        )
        trainer.fit()
        runs[name] = built.student.state_dict()
    for key, value in runs["cached"].items():
        torch.testing.assert_close(value, runs["live"][key], rtol=1e-5, atol=1e-6)


def test_entry_is_reused_and_fingerprinted_by_teacher_and_data(tmp_path):
    built = build(parse_config(_cfg(tmp_path)))
    teacher, data = built.teacher, built.data.train
    settings = CacheSettings(dir=str(tmp_path / "c"))
    seen, log = _logs()
    first = TeacherCache(teacher, data, ["blocks.1"], settings=settings, log=log).ensure()
    again = TeacherCache(teacher, data, ["blocks.1"], settings=settings, log=log).ensure()
    assert again.path == first.path and any("reusing" in m for m in seen)
    other_layers = TeacherCache(teacher, data, [], settings=settings, log=log).ensure()
    assert other_layers.path != first.path
    with torch.no_grad():
        next(teacher.parameters())[0, 0] += 1e-3  # a retrained teacher: a new entry
    changed = TeacherCache(teacher, data, ["blocks.1"], settings=settings, log=log).ensure()
    assert changed.path != first.path
    subset = data.subset(torch.arange(100))
    assert TeacherCache(
        teacher, subset, ["blocks.1"], settings=settings, log=log
    ).ensure().path not in (first.path, changed.path)
    k = changed.lookup(torch.tensor([3, 1]))
    with torch.no_grad():
        live = teacher(data.inputs[[3, 1]])
    torch.testing.assert_close(k.logits, live)
    assert k.feats["blocks.1"].shape[0] == 2


@pytest.mark.parametrize("damage", ["flip", "truncate", "meta"])
def test_damaged_entry_is_detected_and_rebuilt(tmp_path, damage):
    built = build(parse_config(_cfg(tmp_path)))
    settings = CacheSettings(dir=str(tmp_path / "c"))
    entry = TeacherCache(built.teacher, built.data.train, settings=settings, log=lambda m: None)
    path = entry.ensure().path
    good = np.load(path / "logits.npy").copy()
    file = path / "logits.npy"
    if damage == "flip":
        raw = bytearray(file.read_bytes())
        raw[-7] ^= 0xFF
        file.write_bytes(bytes(raw))
    elif damage == "truncate":
        file.write_bytes(file.read_bytes()[:-40])
    else:
        (path / "meta.json").write_text("{not json")
    seen, log = _logs()
    fresh = TeacherCache(built.teacher, built.data.train, settings=settings, log=log).ensure()
    want = {"flip": "checksum", "truncate": "wrong size", "meta": "unreadable"}[damage]
    assert any(want in m and "rebuilding" in m for m in seen), seen
    assert fresh.path == path
    np.testing.assert_array_equal(np.load(path / "logits.npy"), good)
    assert [p.name for p in (tmp_path / "c").iterdir()] == [path.name]  # nothing left over


def test_interrupted_build_leaves_no_entry(tmp_path):
    built = build(parse_config(_cfg(tmp_path)))
    calls = {"n": 0}

    def fail_on_second_batch(_module, _inputs, _output):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    handle = built.teacher.register_forward_hook(fail_on_second_batch)
    cache = TeacherCache(
        built.teacher,
        built.data.train,
        log=lambda m: None,
        batch_size=64,
        settings=CacheSettings(dir=str(tmp_path / "c")),
    )
    with pytest.raises(KeyboardInterrupt):
        cache.ensure()
    handle.remove()
    assert list((tmp_path / "c").iterdir()) == []
    assert cache.ensure().path.is_dir()


def test_augmented_views_pair_student_inputs_with_their_teacher_outputs(tmp_path):
    cfg = _cfg(tmp_path, {"views": 3})
    cfg["data"]["augment"] = [{"name": "noise", "args": {"std": 0.3}}]
    built = build(parse_config(cfg))
    assert "3 augmented views" in built.cache_plan.reason
    trainer = Trainer(
        built.scheme, built.data.train, built.data.val, built.cfg.train, run_dir=tmp_path / "r"
    )
    cache = built.scheme.teacher_cache.ensure()
    batch = trainer.feed.batch(torch.arange(64))
    assert set(batch["view"].tolist()) == {0, 1, 2}
    assert not torch.equal(batch["input"], built.data.train.inputs[:64])  # augmented
    with torch.no_grad():
        live = built.teacher(batch["input"])
    torch.testing.assert_close(cache.lookup(batch["index"], batch["view"]).logits, live)
    views = [cache.view_inputs(torch.arange(4), torch.full((4,), v)) for v in range(3)]
    assert not torch.equal(views[0], views[1]) and not torch.equal(views[1], views[2])
    trainer.fit()  # trains end to end on the cached views


def test_plan_cache_rules():
    s = CacheSettings()
    assert plan_cache(s, scheme="offline", augmented=False, reads_input_grad=False).use
    aug = plan_cache(s, scheme="offline", augmented=True, reads_input_grad=False)
    assert not aug.use and "train.cache.views" in aug.reason
    assert not plan_cache(s, scheme="dml", augmented=False, reads_input_grad=False).use
    assert not plan_cache(s, scheme="offline", augmented=False, reads_input_grad=True).use
    with pytest.raises(ConfigError, match="cannot be used"):
        plan_cache(
            CacheSettings(mode="on"), scheme="offline", augmented=True, reads_input_grad=False
        )
    with pytest.raises(ConfigError, match="data.augment is empty"):
        plan_cache(
            CacheSettings(views=2), scheme="offline", augmented=False, reads_input_grad=False
        )
    off = plan_cache(
        CacheSettings(mode="off"), scheme="offline", augmented=False, reads_input_grad=False
    )
    assert not off.use


def test_topk_layout_keeps_the_top_probabilities_and_the_tail_mass():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 50, generator=g) * 3
    values, indices, tail = topk_compress(logits, 8)
    approx = topk_expand(values, indices, tail, 50)
    p, q = F.softmax(logits, -1), F.softmax(approx, -1)
    torch.testing.assert_close(q.gather(-1, indices), p.gather(-1, indices))
    rest = torch.ones_like(p, dtype=torch.bool).scatter(-1, indices, False)
    torch.testing.assert_close((q * rest).sum(-1), (p * rest).sum(-1))
    spread = q[rest].reshape(5, 42)
    torch.testing.assert_close(spread, spread[:, :1].expand_as(spread))  # even over the tail


def test_topk_cache_end_to_end(tmp_path):
    built = build(parse_config(_cfg(tmp_path, {"topk": 2, "dtype": "fp16"})))
    cache = built.scheme.teacher_cache.ensure()
    meta = json.loads((cache.path / "meta.json").read_text())
    assert set(meta["arrays"]) >= {"logits.values", "logits.indices", "logits.tail"}
    k = cache.lookup(torch.arange(10))
    with torch.no_grad():
        live = built.teacher(built.data.train.inputs[:10])
    assert torch.equal(k.logits.argmax(-1), live.argmax(-1))
    assert k.logits.shape == live.shape


def test_kd_reads_soft_targets_prepared_once_and_falls_back_when_it_cannot(tmp_path):
    """The cache serves KD's soft targets (computed once at T) and the term uses them; a
    scheduled temperature or an entry read from disk keeps the per-step path. All three
    give the live teacher's losses."""
    live = build(parse_config(_cfg(tmp_path, {"mode": "off"})))
    batch = live.data.train.batch(torch.arange(8, 40))
    expected = live.scheme.step(batch, 0)

    cached = build(parse_config(_cfg(tmp_path)))
    cache = cached.scheme.teacher_cache.ensure()
    term = cached.objective.terms[0]
    knowledge = cache.lookup(batch["index"])
    probs, const = knowledge.feats[term.prepared_key]
    p = F.softmax(live.teacher(batch["input"]) / 2.0, -1).detach()
    torch.testing.assert_close(probs, p)
    torch.testing.assert_close(const, (p * p.log()).sum(-1))
    got = cached.scheme.step(batch, 0)
    for key in expected:  # float32 sums in another order: a few ulps apart
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6)

    on_disk = build(parse_config(_cfg(tmp_path, {"memory_mb": 0})))
    cache = on_disk.scheme.teacher_cache.ensure()
    assert not cache.in_memory
    assert term.prepared_key not in cache.lookup(batch["index"]).feats
    torch.testing.assert_close(
        on_disk.scheme.step(batch, 0)["kd"], expected["kd"], rtol=1e-5, atol=1e-6
    )

    cfg = _cfg(tmp_path)
    cfg["objective"]["terms"][0]["args"] = {
        "temperature": {"schedule": "linear", "start": 2.0, "end": 2.0, "steps": 10}
    }
    scheduled = build(parse_config(cfg))
    assert scheduled.objective.terms[0].prepared is None
    assert scheduled.objective.prepared_teacher() == {}
    torch.testing.assert_close(
        scheduled.scheme.step(batch, 0)["kd"], expected["kd"], rtol=1e-5, atol=1e-6
    )


def test_a_damaged_entry_is_said_even_with_progress_off(tmp_path, capsys):
    from distill.app.run import run_experiment

    cfg = _cfg(tmp_path)
    assert cfg["train"]["progress"] is False
    run_experiment(parse_config(cfg))
    [entry] = (tmp_path / "cache").iterdir()
    raw = bytearray((entry / "logits.npy").read_bytes())
    raw[-5] ^= 0xFF
    (entry / "logits.npy").write_bytes(bytes(raw))
    capsys.readouterr()
    cfg["run_dir"] = str(tmp_path / "run2")
    run_experiment(parse_config(cfg))
    err = capsys.readouterr().err
    assert "checksum" in err and "rebuilding it" in err


def test_terms_reading_the_teachers_own_tensors_cache_the_features_not_the_tensors(tmp_path):
    srd = {
        "loss": "srd",
        "weight": 0.5,
        "student": "head:input",
        "adapter": "linear",
        "teacher": ["head:input", "head.weight", "head.bias"],
    }

    def cfg(mode: str) -> dict:
        c = _cfg(tmp_path, {"mode": mode})
        c["objective"]["terms"] = [c["objective"]["terms"][0], srd]
        return c

    cached, live = build(parse_config(cfg("on"))), build(parse_config(cfg("off")))
    entry = cached.scheme.teacher_cache
    assert entry.layers == ["head:input"] and entry.constants == ["head.weight", "head.bias"]
    batch = cached.data.train.batch(torch.arange(0, 32))
    knowledge = entry.lookup(batch["index"])
    assert torch.equal(knowledge.feats["head.weight"], cached.teacher.head.weight.detach())
    a, b = cached.scheme.step(batch, 0), live.scheme.step(batch, 0)
    for key in a:  # (features from batches of another size: float sums in another order)
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
