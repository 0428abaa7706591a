"""What identifies a model's weights and a file's bytes: the hashes every cache of teacher
outputs is keyed by (`distill.loop.cache` for classifiers, `distill.llm.cache` for
language models)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


def hash_tensor(h: Any, t: Tensor) -> None:
    """Feed a tensor's dtype, shape and bytes to the hash `h`."""
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def weights_fingerprint(model: nn.Module) -> str:
    """A hash of the model's class, parameter and buffer names, shapes, dtypes and values."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        hash_tensor(h, tensor)
    return h.hexdigest()


def file_checksum(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()
