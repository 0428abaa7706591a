"""A teacher cache for `DistillationTrainer`: the teacher run once over the training rows,
then training from its stored top-k log-probabilities with no teacher in memory.

`DistillationTrainer(teacher_model=teacher, teacher_cache=DIR, ...)` builds the cache at DIR
from the (tokenised) training set when DIR holds none, shard by shard and resumable
(`distill.llm.cache_build`), and then drops the teacher; `teacher_cache=DIR` alone trains
from a cache built before. Each training row carries its row number (`cache_row`) through
shuffling and collation, so a batch's rows are looked up whatever their order. The cache's
manifest fingerprints the rows' tokens: a cache of other data is refused.

The KD is the exact KL over the top k tokens and the tail (forward KL at temperature 1), as
from a served teacher; on-policy and sequence-level KD need a teacher that reads new text
and are refused. An evaluation set has no cached rows: its loss is the task loss alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

ROW = "cache_row"


@dataclass
class TrainingRows:
    """Tokenised training rows (dicts of input_ids, attention_mask, labels) as the token
    dataset the cache builder reads: right-padded to the longest row."""

    ids: Tensor  # (N, L + 1)
    supervised: Tensor  # (N, L + 1) bool
    attention: Tensor  # (N, L + 1)

    @classmethod
    def of(cls, rows: Any, pad: int) -> TrainingRows:
        rows = [rows[i] for i in range(len(rows))]
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        sup = torch.zeros((len(rows), width), dtype=torch.bool)
        att = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.as_tensor(r["input_ids"])
            sup[i, :n] = torch.as_tensor(r["labels"]) != -100
            att[i, :n] = torch.as_tensor(r.get("attention_mask", [1] * n))
        return cls(ids, sup, att)

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, index: Tensor) -> dict[str, Tensor]:
        ids, sup = self.ids[index], self.supervised[index]
        return {
            "input": ids[:, :-1],
            "target": torch.where(sup[:, 1:], ids[:, 1:], -1),
            "attention_mask": self.attention[index][:, :-1],
            "index": index,
        }


def with_row_numbers(rows: Any) -> Any:
    """The training set with each row's number as `cache_row`."""
    if hasattr(rows, "add_column"):  # a Hugging Face Dataset
        return rows.add_column(ROW, list(range(len(rows))))
    return [{**rows[i], ROW: i} for i in range(len(rows))]


def open_or_build(
    path: str, teacher: Any, rows: Any, tokenizer: Any, vocab: int, k: int, seed: int
) -> Any:
    """The cache at `path`, built from `teacher` over `rows` first when there is none;
    refused when it was made from other rows."""
    from distill.core.errors import ConfigError
    from distill.core.fingerprints import weights_fingerprint
    from distill.core.progress import WorkProgress
    from distill.llm.cache import TeacherCache
    from distill.llm.cache_build import build_cache, token_data_fingerprint

    pad = getattr(tokenizer, "pad_token_id", None) or getattr(tokenizer, "eos_token_id", 0) or 0
    tokens = TrainingRows.of(rows, pad)
    if not (Path(path) / "manifest.json").is_file():
        if teacher is None:
            raise ConfigError(
                f"teacher_cache {path!r} holds no cache; give teacher_model too, and the "
                f"cache is built there first"
            )
        fingerprint = {
            "teacher": weights_fingerprint(teacher),
            "data": token_data_fingerprint(tokens),
        }
        with WorkProgress(len(tokens), "teacher cache (rows)") as bar:
            build_cache(
                teacher, tokens, Path(path), mode="topk", k=k, temperature=1.0, batch_size=16,
                seed=seed, vocab=vocab, value_bits=16, zstd=0,
                shards=max(1, -(-len(tokens) // 8192)), only=None, fingerprint=fingerprint,
                on_rows=bar.update,
            )  # fmt: skip
    cache = TeacherCache.open(path)
    if cache.fingerprint.get("data") != token_data_fingerprint(tokens) or len(cache) != len(tokens):
        raise ConfigError(
            f"teacher_cache {path!r} was built on other training rows than these; give a new "
            f"folder (with teacher_model, to build it) or the data it was built on"
        )
    return cache


class BatchRows:
    """A cache read for a trainer batch: its rows by `cache_row`, cut to the batch's width."""

    mode, temperature = "topk", 1.0

    def __init__(self, cache: Any):
        self.cache = cache

    def sparse(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        width = batch["input"].shape[1]
        ids, values, extra = self.cache.rows(batch["index"].cpu())
        return ids[:, :width], values[:, :width], extra[:, :width]
