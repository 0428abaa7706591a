"""What identifies a teacher's cached outputs (the fingerprint of the data it read; those of
its weights and files are `distill.core.fingerprints`) and the compact top-k form the
logits are stored in."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
from torch import Tensor

from distill.core.fingerprints import hash_tensor
from distill.data import load_batch, teacher_input


def data_fingerprint(dataset: Any, batch_size: int = 4096) -> str:
    """A hash of every input the teacher reads (the paired modality when there is one) and
    the dataset's length. Data on disk hashes its files' names, sizes and times, its index
    list and its transforms instead (`LazySplit.fingerprint`): no pass over the inputs."""
    if hasattr(dataset, "fingerprint"):
        return f"{len(dataset)}:{dataset.fingerprint()}"
    h = hashlib.sha256(str(len(dataset)).encode())
    for start in range(0, len(dataset), batch_size):
        index = torch.arange(start, min(start + batch_size, len(dataset)))
        hash_tensor(h, teacher_input(load_batch(dataset, index)))
    return h.hexdigest()


def topk_compress(logits: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(values, indices, tail): the top-k logits of each row and logsumexp of the others."""
    values, indices = logits.float().topk(k, dim=-1)
    rest = logits.float().scatter(-1, indices, float("-inf"))
    tail = torch.logsumexp(rest, dim=-1)
    return values, indices, tail


def topk_expand(values: Tensor, indices: Tensor, tail: Tensor, num_classes: int) -> Tensor:
    """Logits whose softmax keeps the top-k probabilities and spreads the tail evenly."""
    rest = num_classes - values.shape[-1]
    fill = (tail - math.log(rest)) if rest > 0 else torch.full_like(tail, float("-inf"))
    out = fill.unsqueeze(-1).expand(*values.shape[:-1], num_classes).clone()
    return out.scatter(-1, indices.long(), values.float())
