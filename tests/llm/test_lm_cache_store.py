"""The LM teacher cache on disk (issue 42): Elias-Fano ids, 16- and 8-bit log-probabilities,
zstd, shards built by several processes and resumed, the manifest's fingerprints, and the
refusals (a truncated shard, a missing one, another teacher, data or tokenizer)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("transformers")

from test_llm import _kd

from distill.app.build import build
from distill.app.cli import main
from distill.core.config import parse_config
from distill.core.errors import CheckpointError, ConfigError
from distill.llm.cache import TeacherCache, sparse_teacher
from distill.llm.cache_store import Layout, pack_bits, unpack_bits


@pytest.mark.parametrize("bits", [1, 9, 15, 18])
def test_bits_pack_and_unpack(bits):
    a = np.random.default_rng(bits).integers(0, 2**bits, 1001)
    a[:2] = [0, 2**bits - 1]
    assert np.array_equal(unpack_bits(pack_bits(a, bits), len(a), bits), a)


@pytest.mark.parametrize("vocab,k", [(300, 8), (32000, 32), (152064, 128), (40, 64)])
def test_a_block_round_trips_in_every_encoding(vocab, k):
    torch.manual_seed(vocab)
    logits = torch.randn(3, 5, vocab) * 4
    ids, values, tail = (t.numpy() for t in sparse_teacher(logits, "topk", min(k, vocab)))
    k = min(k, vocab)
    order = np.argsort(ids, -1)
    want_ids = np.take_along_axis(ids, order, -1)
    want_p = np.exp(np.take_along_axis(values, order, -1))
    for value_bits in (16, 8):
        for zstd in (0, 3):
            layout = Layout("topk", k, vocab, 5, value_bits, zstd)
            blob = layout.encode(ids, values, tail)
            if not zstd:
                assert len(blob) == math.ceil(15 * layout.raw_bytes_per_token())
            got_ids, got_v, got_tail = layout.decode(blob, 3)
            assert np.array_equal(got_ids, want_ids)
            mass = np.exp(got_v).sum(-1) + np.exp(got_tail)
            np.testing.assert_allclose(mass, 1.0, atol=1e-3)  # a proper distribution again
            # float16: steps of 1/256 nat at 4-8; 8 bits: of 1/16 nat, so each probability
            # within 3.2%, and the rescaling that makes the k and the tail sum to 1 within 3.2%
            tol = 0.003 if value_bits == 16 else 0.065
            np.testing.assert_allclose(np.exp(got_v), want_p, rtol=tol, atol=1e-6)
    draws = sparse_teacher(logits, "sample", k, generator=torch.Generator().manual_seed(0))
    ids, weights, logp = (t.numpy() for t in draws)  # draws repeat ids: still coded exactly
    layout = Layout("sample", k, vocab, 5, 8)
    got_ids, got_w, got_lp = layout.decode(layout.encode(ids, weights, logp), 3)
    assert np.array_equal(np.sort(got_ids, -1), np.sort(ids, -1))
    np.testing.assert_allclose(got_w, 1.0 / k)
    pairs = lambda i, v: sorted(zip(i.reshape(-1).tolist(), np.round(v.reshape(-1), 1).tolist()))  # noqa: E731
    assert pairs(got_ids, got_lp) == pairs(ids, np.clip(np.rint(logp * 16) / 16, -255 / 16, 0))


def test_bytes_per_pair_at_8_bits_stay_under_3_at_32k_and_152k():
    """The issue's target, from the layout's exact sizes (zstd off)."""
    for vocab in (32000, 152064):
        for k in (32, 64, 128):
            per_pair = Layout("topk", k, vocab, 1, 8).raw_bytes_per_token() / k
            assert per_pair <= 3.0, (vocab, k, per_pair)
    assert Layout("topk", 32, 152064, 1, 8).raw_bytes_per_token() / 32 == pytest.approx(
        (32 * 12 + 32 + 37 + 1 + 32 * 8 + 16) / 8 / 32  # l = 12, 152064 >> 12 = 37
    )


def _cache_cmd(cfg_path, out, *extra) -> int:
    return main(["lm-cache", str(cfg_path), "--out", str(out), "--k", "8", *extra])


def _refused(capsys, code: int, pattern: str) -> None:
    import re

    assert code == 2
    err = capsys.readouterr().err
    assert re.search(pattern, err), err


def test_shards_by_several_processes_resume_and_refusals(tmp_path, teacher_dir, capsys):
    cfg = _kd(tmp_path, teacher_dir, {})
    path = tmp_path / "kd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert _cache_cmd(path, whole, "--shards", "3", "--bits", "8", "--zstd", "3") == 0
    # three processes, one shard each (here one after the other): the same cache
    assert _cache_cmd(path, parts, "--shard", "1/3", "--bits", "8", "--zstd", "3") == 0
    with pytest.raises(CheckpointError, match="2 of 3 shards are not built \\(shard 0, 2\\)"):
        TeacherCache.open(parts)
    for i in (0, 2):
        assert _cache_cmd(path, parts, "--shard", f"{i}/3", "--bits", "8", "--zstd", "3") == 0
    a, b = TeacherCache.open(whole), TeacherCache.open(parts)
    index = torch.randperm(len(a))[:40]
    for x, y in zip(a.rows(index), b.rows(index)):
        assert torch.equal(x, y)
    assert a.bytes_per_token() < 8 * 3  # 8 ids and 8-bit log-probs, zstd: under 3 a pair
    # an interrupted build resumes: only the missing shard is built again
    mtimes = {p.name: p.stat().st_mtime_ns for p in whole.glob("shard-*.bin")}
    (whole / "shard-00001.json").unlink()
    os.remove(whole / "shard-00001.bin")
    assert _cache_cmd(path, whole, "--shards", "3", "--bits", "8", "--zstd", "3") == 0
    again = {p.name: p.stat().st_mtime_ns for p in whole.glob("shard-*.bin")}
    assert again["shard-00000.bin"] == mtimes["shard-00000.bin"]
    assert again["shard-00002.bin"] == mtimes["shard-00002.bin"]
    # a truncated shard is named with the fix
    data = whole / "shard-00002.bin"
    data.write_bytes(data.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="shard-00002.bin' is truncated.*rebuild that shard"):
        TeacherCache.open(whole)
    # other options, or another teacher, into the same folder: refused, nothing touched
    capsys.readouterr()
    _refused(capsys, _cache_cmd(path, parts, "--shards", "3", "--bits", "16"),
             "holds a cache with another layout")  # fmt: skip
    other = _kd(tmp_path, teacher_dir, {})
    other["teacher"] = {**other["teacher"], "weights": None, "args": {**other["teacher"]["args"]}}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    built = build(parse_config(cfg))
    torch.nn.init.normal_(next(built.teacher.parameters()))
    from distill.core.checkpoint import save_weights

    save_weights(tmp_path / "other.safetensors", built.teacher)
    other["teacher"]["weights"] = str(tmp_path / "other.safetensors")
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    _refused(capsys, _cache_cmd(tmp_path / "other.yaml", parts, "--shards", "3", "--bits", "8",
             "--zstd", "3"), "holds a cache with another teacher;")  # fmt: skip
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    _refused(capsys, _cache_cmd(path, tmp_path / "mine"),
             r"is not an LM teacher cache \(it holds notes.txt\)")  # fmt: skip
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"
    for bad, says in ((["--shard", "7/3"], "counts from 0 to n - 1"), (["--shard", "x"], "takes i/n"),
                      (["--shards", "0"], "1 or more")):  # fmt: skip
        _refused(capsys, _cache_cmd(path, tmp_path / "never", *bad), says)
    assert not (tmp_path / "never").exists()


def test_a_cache_of_other_text_or_tokenizer_is_refused(tmp_path, teacher_dir):
    from distill.llm.sources import _check_fingerprint

    cfg = _kd(tmp_path, teacher_dir, {})
    (tmp_path / "kd.yaml").write_text(yaml.safe_dump(cfg))
    assert _cache_cmd(tmp_path / "kd.yaml", tmp_path / "c") == 0
    cache = TeacherCache.open(tmp_path / "c")
    built = build(parse_config(cfg))
    _check_fingerprint(cache, built.data.train, built.data.tokenizer)  # its own: accepted
    train = built.data.train
    train.ids[5, 3] = (train.ids[5, 3] + 1) % 300  # one token of the text changed
    with pytest.raises(ConfigError, match="built on another training set"):
        _check_fingerprint(cache, train, built.data.tokenizer)
    from distill.llm.text import ByteTokenizer

    with pytest.raises(ConfigError, match="built on another tokenizer"):
        _check_fingerprint(cache, build(parse_config(cfg)).data.train, ByteTokenizer())
