"""Building a language-model teacher cache shard by shard (`distill lm-cache`).

The folder gets its manifest first (layout, shard count and the fingerprints of teacher,
tokenizer, data and options); every process that builds into the folder must agree with
it, so shards of another teacher or other options are never mixed in. Then each shard not
yet finished is built and written atomically, so an interrupted build resumes at the first
missing shard and several processes (`only=i`) can build one folder together. A folder that
is not an LM cache is never written into.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.core.checkpoint import atomic_write_text
from distill.core.errors import ConfigError
from distill.data import load_batch
from distill.llm.cache import TeacherCache, sparse_teacher
from distill.llm.cache_store import Layout, manifest, shard_name, shard_ranges, write_shard

PROBE = "The quick brown fox jumps over the lazy dog; def f(x): return x ** 2  # 3.14 ünï"


def tokenizer_fingerprint(tok: Any) -> str:
    """A hash of the tokenizer's full definition where it has one (`tokenizers` JSON),
    else of its name, size and the ids of a probe sentence."""
    h = hashlib.sha256()
    backend = getattr(getattr(tok, "hf", None), "backend_tokenizer", None) or getattr(
        tok, "tok", None
    )
    if backend is not None and hasattr(backend, "to_str"):
        h.update(backend.to_str().encode())
    else:
        h.update(
            f"{getattr(tok, 'name', type(tok).__name__)}:{getattr(tok, 'vocab_size', '')}".encode()
        )
        h.update(json.dumps(list(tok.encode(PROBE))).encode())
    return h.hexdigest()


def token_data_fingerprint(dataset: Any) -> str:
    """A hash of every token row and which positions are supervised."""
    h = hashlib.sha256()
    for t in (dataset.ids, dataset.supervised):
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def _prepare(path: Path, meta: dict[str, Any]) -> None:
    """Create the cache folder with its manifest, or check that the one there is the same
    cache; refuse anything else."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {str(path)!r} is a file; give a folder for the cache")
    found = path / "manifest.json"
    if found.is_file():
        old = json.loads(found.read_text())
        if old == meta:
            return
        differs = [
            k
            for k in ("format", "rows", "shards", "temperature", "layout")
            if old.get(k) != meta.get(k)
        ]
        fp_old, fp_new = old.get("fingerprint", {}), meta["fingerprint"]
        differs += [k for k in fp_new if fp_old.get(k) != fp_new[k]]
        raise ConfigError(
            f"--out {str(path)!r} holds a cache with another {', '.join(differs) or 'format'}; "
            f"give a new folder (distill never deletes a cache it did not just build)"
        )
    if path.is_dir() and any(path.iterdir()):
        names = sorted(p.name for p in path.iterdir())[:5]
        raise ConfigError(
            f"--out {str(path)!r} is not an LM teacher cache (it holds {', '.join(names)}); "
            f"give a new folder"
        )
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(found, json.dumps(meta, indent=2))


def _blocks(
    teacher: torch.nn.Module, dataset: Any, rows: tuple[int, int], layout: Layout, a: dict
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    device = next(teacher.parameters()).device
    for start in range(rows[0], rows[1], layout.block_rows):
        end = min(start + layout.block_rows, rows[1])
        gen = torch.Generator().manual_seed(a["seed"] * 1_000_003 + start)
        parts = []
        for s in range(start, end, a["batch_size"]):
            b = load_batch(dataset, torch.arange(s, min(s + a["batch_size"], end)))
            with torch.no_grad():
                logits = (
                    teacher(
                        input_ids=b["input"].to(device),
                        attention_mask=b["attention_mask"].to(device),
                    )
                    .logits.float()
                    .cpu()[..., : layout.vocab]
                )
            parts.append(sparse_teacher(logits, layout.mode, layout.k, a["temperature"], gen))
            a["on_rows"](len(b["input"]))
        yield tuple(torch.cat(p).numpy() for p in zip(*parts))  # type: ignore[misc]


def build_cache(
    teacher: torch.nn.Module,
    dataset: Any,
    path: Path,
    *,
    mode: str,
    k: int,
    temperature: float,
    batch_size: int,
    seed: int,
    vocab: int | None,
    value_bits: int,
    zstd: int,
    shards: int,
    only: int | None,
    fingerprint: dict[str, str],
    on_rows: Callable[[int], None] | None = None,
) -> TeacherCache | None:
    """Run `teacher` over `dataset` into the sharded cache at `path`: every shard not yet
    built, or shard `only` alone. Returns the cache once all of its shards are there (None
    while another process's shards are missing); `on_rows(n)` is called as rows are done."""
    n = len(dataset)
    if not 1 <= shards <= n:
        raise ConfigError(f"--shards must be between 1 and the {n} rows, got {shards}")
    if only is not None and not 0 <= only < shards:
        raise ConfigError(f"--shard {only}/{shards}: the shard must be 0..{shards - 1}")
    first = load_batch(dataset, torch.arange(1))
    if vocab is None:
        with torch.no_grad():
            device = next(teacher.parameters()).device
            vocab = teacher(input_ids=first["input"].to(device)).logits.shape[-1]
    layout = Layout(mode, k, vocab, first["input"].shape[1], value_bits, zstd)
    options = {"seed": seed if mode == "sample" else None}
    meta = manifest(layout, n, shards, temperature, {**fingerprint, **options})
    _prepare(path, meta)
    todo = [only] if only is not None else range(shards)
    todo = [i for i in todo if not (path / f"{shard_name(i)}.json").is_file()]
    ranges = shard_ranges(n, shards)
    a = {"seed": seed, "batch_size": batch_size, "temperature": temperature,
         "on_rows": on_rows or (lambda rows: None)}  # fmt: skip
    was = teacher.training
    teacher.eval()
    try:
        for i in todo:
            write_shard(
                path, i, ranges[i][0], _blocks(teacher, dataset, ranges[i], layout, a), layout
            )
    finally:
        teacher.train(was)
    if all((path / f"{shard_name(i)}.json").is_file() for i in range(shards)):
        return TeacherCache.open(path)
    return None
