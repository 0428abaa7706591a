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

A cache is built for one dataset in its order (row i of the cache is row i of the data),
in shards that are each written atomically (`distill.llm.cache_store` for the files,
`distill.llm.cache_build` for the build).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.core.errors import CheckpointError
from distill.llm.cache_store import FORMAT, Layout, ShardReader, layout_of
from distill.losses.divergences import kl_rows, sparse_kd_loss


@dataclass
class TeacherCache:
    """Open a cache with `TeacherCache.open(path)`; index rows with `rows(index)`. The files
    and their encoding are `distill.llm.cache_store`'s."""

    path: Path
    meta: dict[str, Any]
    reader: ShardReader

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
            raise CheckpointError(
                f"{str(path)!r}: cache format {meta.get('format')!r}, this distill reads "
                f"{FORMAT!r}; rebuild it with distill lm-cache"
            )
        return cls(path, meta, ShardReader(path, layout_of(meta), meta["shards"]))

    @property
    def layout(self) -> Layout:
        return self.reader.layout

    mode = property(lambda self: self.layout.mode)
    k = property(lambda self: self.layout.k)
    vocab = property(lambda self: self.layout.vocab)
    length = property(lambda self: self.layout.length)
    temperature = property(lambda self: self.meta["temperature"])
    fingerprint = property(lambda self: self.meta["fingerprint"])

    def __len__(self) -> int:
        return self.meta["rows"]

    def rows(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        ids, values, extra = self.reader.rows(index.cpu().numpy())
        return torch.from_numpy(ids), torch.from_numpy(values), torch.from_numpy(extra)

    def sparse(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """The rows of a batch of the training data (`distill.llm.sources`)."""
        return self.rows(batch["index"])

    def bytes_per_token(self) -> float:
        """Bytes on disk per cached position (all shards; the JSON files left out)."""
        files = sum(b[2] for b in self.reader.blocks)
        return files / (len(self) * self.length)


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


def cached_kd_losses(
    student: torch.nn.Module,
    batch: dict[str, Tensor],
    cache: Any,
    mask: Tensor,
    num_tokens: Tensor,
    vocab: int,
    chunk_size: int = 0,
) -> tuple[Tensor, Tensor]:
    """(kd, task) of a language-model batch against a cache's or server's sparse teacher:
    from the student's logits whole, or with `chunk_size` a chunk of supervised tokens at a
    time from its final hidden states (`distill.llm.chunked`; the same values and
    gradients, without the full logits)."""
    x, am, y = batch["input"], batch.get("attention_mask"), batch["target"]
    rows = cache.sparse(batch)
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
