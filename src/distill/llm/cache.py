"""A teacher-logit cache: run the teacher once, then distil without it.

Dense logits cost V values per token (64 KiB at a 32k vocabulary in fp16). Two sparse forms,
stored as memory-mapped .npy files beside a JSON manifest:

- `topk`: the k most likely tokens' ids and log-probabilities plus the log of the tail
  mass 1 - sum(top-k). The loss is the exact KL over k+1 outcomes (the k tokens and "any
  other token"), a lower bound of the full KL that uses everything stored.
- `sample`: k tokens drawn with replacement from the teacher (Anshumann et al. 2025, sparse
  logit sampling): with weights count/k the soft cross-entropy sum_v w(v) (-log q(v)) is an
  unbiased estimate of the full one, so its gradient is unbiased for the forward KL's; the
  stored teacher log-probabilities of the drawn tokens also give an unbiased KL estimate.

A cache is built for one dataset in its order (row i of the cache is row i of the data)
and is written to a temporary folder that replaces the target only when complete.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from distill.core.checkpoint import atomic_write_text
from distill.core.errors import CheckpointError, ConfigError
from distill.data import load_batch
from distill.losses.response import kl_rows

FORMAT = "distill-teacher-cache-1"


@dataclass
class TeacherCache:
    """Open a cache with `TeacherCache.open(path)`; index rows with `rows(index)`."""

    path: Path
    mode: str
    k: int
    vocab: int
    temperature: float
    ids: np.ndarray  # (N, L, k) int32
    values: np.ndarray  # (N, L, k) float16: log-probs (topk) or weights (sample)
    extra: np.ndarray  # (N, L) float16 log tail mass (topk); (N, L, k) logp of draws (sample)

    @classmethod
    def open(cls, path: str | Path) -> TeacherCache:
        path = Path(path)
        manifest = path / "manifest.json"
        if not manifest.is_file():
            raise CheckpointError(
                f"{str(path)!r} is not a teacher cache (no manifest.json); build one with "
                f"`distill lm-cache CONFIG --out {path}`"
            )
        meta = json.loads(manifest.read_text())
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{str(path)!r}: unknown cache format {meta.get('format')!r}")
        arrays = {n: np.load(path / f"{n}.npy", mmap_mode="r") for n in ("ids", "values", "extra")}
        return cls(path, meta["mode"], meta["k"], meta["vocab"], meta["temperature"], **arrays)

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        i = index.cpu().numpy()
        return (
            torch.from_numpy(np.asarray(self.ids[i], dtype=np.int64)),
            torch.from_numpy(np.asarray(self.values[i], dtype=np.float32)),
            torch.from_numpy(np.asarray(self.extra[i], dtype=np.float32)),
        )

    def bytes_per_token(self) -> float:
        n_tokens = self.ids.shape[0] * self.ids.shape[1]
        return (self.ids.nbytes + self.values.nbytes + self.extra.nbytes) / n_tokens


def sparse_teacher(
    logits: Tensor,
    mode: str,
    k: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(ids, values, extra) of one batch of teacher logits (..., V), as stored in a cache."""
    log_p = F.log_softmax(logits.float() / temperature, -1)
    if mode == "topk":
        values, ids = log_p.topk(k, dim=-1)
        tail = torch.log1p(-values.exp().sum(-1).clamp(max=1 - 1e-6))
        return ids, values, tail
    if mode == "sample":
        flat = log_p.reshape(-1, log_p.shape[-1]).exp()
        draws = torch.multinomial(flat, k, replacement=True, generator=generator)
        ids = draws.reshape(*log_p.shape[:-1], k)
        weights = torch.full(ids.shape, 1.0 / k)
        return ids, weights, log_p.gather(-1, ids)
    raise ValueError(f"cache mode must be 'topk' or 'sample', got {mode!r}")


def sparse_kd_loss(
    student_logits: Tensor,
    ids: Tensor,
    values: Tensor,
    extra: Tensor,
    mode: str,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    num_tokens: float | Tensor | None = None,
) -> Tensor:
    """The KD loss from cached sparse teacher outputs, summed over supervised tokens and
    divided by `num_tokens` (as `token_kd_loss`).

    topk: KL over the k tokens and the tail bucket; sample: the unbiased soft cross-entropy
    sum_v w(v) (-log q(v)) (its value includes the teacher's entropy, its gradient does not).
    """
    log_q = F.log_softmax(student_logits.float() / temperature, -1)
    log_q_ids = log_q.gather(-1, ids)
    if mode == "topk":
        q_tail = torch.log1p(-log_q_ids.exp().sum(-1).clamp(max=1 - 1e-6))
        p = values.exp()
        per_token = (p * (values - log_q_ids)).sum(-1) + extra.exp() * (extra - q_tail)
    else:
        per_token = -(values * log_q_ids).sum(-1)
    per_token = per_token * temperature**2 if temperature != 1.0 else per_token
    if mask is not None:
        per_token = per_token * mask.to(per_token.dtype)
    if num_tokens is None:
        num_tokens = mask.sum() if mask is not None else per_token.numel()
    return per_token.sum() / torch.as_tensor(num_tokens, dtype=per_token.dtype).clamp_min(1)


def cached_kd_losses(
    student: torch.nn.Module,
    batch: dict[str, Tensor],
    cache: Any,
    mask: Tensor,
    num_tokens: Tensor,
    vocab: int,
    chunk_size: int = 0,
) -> tuple[Tensor, Tensor]:
    """(kd, task) of a language-model batch against the cache's sparse teacher outputs:
    from the student's logits whole, or with `chunk_size` a chunk of supervised tokens at a
    time from its final hidden states (`distill.llm.chunked`; the same values and
    gradients, without the full logits)."""
    x, am, y = batch["input"], batch.get("attention_mask"), batch["target"]
    rows = cache.rows(batch["index"])
    if chunk_size:
        from distill.llm.chunked import chunked_cross_entropy, chunked_loss, decoder_and_head

        decoder, head = decoder_and_head(student)
        h = decoder(input_ids=x, attention_mask=am).last_hidden_state[mask]
        ids, values, extra = (t.to(h.device)[mask.to(h.device)] for t in rows)
        w = head.weight[:vocab]

        def kd_of_chunk(z: Tensor, start: int, end: int) -> Tensor:
            return sparse_kd_loss(
                z, ids[start:end], values[start:end], extra[start:end], cache.mode,
                temperature=cache.temperature, num_tokens=1,
            )  # fmt: skip

        kd = chunked_loss(h, w, kd_of_chunk, chunk_size) / torch.as_tensor(num_tokens).clamp_min(1)
        return kd, chunked_cross_entropy(h, w, y[mask], chunk_size) / num_tokens
    z_s = student(input_ids=x, attention_mask=am).logits[..., :vocab]
    ids, values, extra = (t.to(z_s.device) for t in rows)
    kd = sparse_kd_loss(
        z_s, ids, values, extra, cache.mode,
        mask=mask, temperature=cache.temperature, num_tokens=num_tokens,
    )  # fmt: skip
    return kd, F.cross_entropy(z_s.float()[mask], y[mask], reduction="sum") / num_tokens


CACHE_FILES = frozenset({"ids.npy", "values.npy", "extra.npy", "manifest.json"})


def _check_replaceable(path: Path, partial: bool = False) -> None:
    """`path` may be replaced only when it is missing or an LM cache (a half-built one for
    `partial`): a folder holding anything else is refused, naming what is in it."""
    if not path.exists():
        return
    if not path.is_dir():
        raise ConfigError(f"--out {str(path)!r} is a file; give a folder for the cache")
    names = {p.name for p in path.iterdir()}
    ours = names <= CACHE_FILES and (partial or "manifest.json" in names)
    if not ours:
        other = sorted(names - CACHE_FILES)[:5] or sorted(names)[:5]
        raise ConfigError(
            f"--out {str(path)!r} is not an LM teacher cache (it holds {', '.join(other)}); "
            f"distill replaces only a cache it wrote. Give a new folder"
        )


@torch.no_grad()
def _write_rows(teacher, dataset, tmp: Path, shape, mode, temperature, batch_size, seed, vocab):
    """The teacher's sparse outputs for every row, into memory-mapped arrays in `tmp`;
    returns the vocabulary size seen."""
    n, length, k = shape
    gen = torch.Generator().manual_seed(seed)
    ids = np.lib.format.open_memmap(tmp / "ids.npy", "w+", np.int32, (n, length, k))
    values = np.lib.format.open_memmap(tmp / "values.npy", "w+", np.float16, (n, length, k))
    extra_shape = (n, length) if mode == "topk" else (n, length, k)
    extra = np.lib.format.open_memmap(tmp / "extra.npy", "w+", np.float16, extra_shape)
    v_size = None
    device = next(teacher.parameters()).device
    for start in range(0, n, batch_size):
        b = load_batch(dataset, torch.arange(start, min(start + batch_size, n)))
        logits = teacher(
            input_ids=b["input"].to(device), attention_mask=b["attention_mask"].to(device)
        ).logits.cpu()
        if vocab is not None:
            logits = logits[..., :vocab]
        v_size = logits.shape[-1]
        i, v, e = sparse_teacher(logits, mode, k, temperature, gen)
        ids[start : start + len(i)] = i.numpy()
        values[start : start + len(i)] = v.numpy()
        extra[start : start + len(i)] = e.numpy()
    for arr in (ids, values, extra):
        arr.flush()
    return v_size


def build_cache(
    teacher: torch.nn.Module,
    dataset,
    path: str | Path,
    *,
    mode: str = "topk",
    k: int = 32,
    temperature: float = 1.0,
    batch_size: int = 32,
    seed: int = 0,
    vocab: int | None = None,
) -> TeacherCache:
    """Run `teacher` over `dataset` and write the sparse cache to `path` (atomically)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    _check_replaceable(path)  # never a folder of the user's
    if tmp.exists():
        _check_replaceable(tmp, partial=True)
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    n = len(dataset)
    length = load_batch(dataset, torch.arange(1))["input"].shape[1]
    was = teacher.training
    teacher.eval()
    try:
        v_size = _write_rows(
            teacher, dataset, tmp, (n, length, k), mode, temperature, batch_size, seed, vocab
        )
    finally:
        teacher.train(was)
    meta = {
        "format": FORMAT,
        "mode": mode,
        "k": k,
        "vocab": v_size,
        "temperature": temperature,
        "rows": n,
        "length": length,
    }
    atomic_write_text(tmp / "manifest.json", json.dumps(meta, indent=2))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return TeacherCache.open(path)


@torch.no_grad()
def cache_kl_error(
    teacher_logits: Tensor, student_logits: Tensor, mode: str, k: int, seed: int = 0
) -> dict[str, float]:
    """Mean per-token KL(P || Q) from dense logits vs its estimate from a sparse cache."""
    log_p = F.log_softmax(teacher_logits.float(), -1)
    log_q = F.log_softmax(student_logits.float(), -1)
    dense = float(kl_rows(log_p, log_q).mean())
    ids, values, extra = sparse_teacher(
        teacher_logits, mode, k, generator=torch.Generator().manual_seed(seed)
    )
    if mode == "topk":
        estimate = float(sparse_kd_loss(student_logits, ids, values, extra, "topk"))
    else:  # mean over draws of log p(v) - log q(v): unbiased for the KL
        estimate = float((values * (extra - log_q.gather(-1, ids))).sum(-1).mean())
    return {
        "dense_kl": dense,
        "cached_kl": estimate,
        "abs_error": abs(estimate - dense),
        "rel_error": abs(estimate - dense) / max(dense, 1e-12),
    }
