"""Seeding, and every random generator's state saved and restored for an exact resume."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(aug_gen: torch.Generator) -> dict[str, Any]:
    """Every generator's state, for a checkpoint (which copies the tensors at once)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], _numpy_words(np_state[1]), *np_state[2:]],
        "python": _python_state(),
        "augment": aug_gen.get_state(),
    }


# The last words converted, per generator: most runs never draw from numpy's or Python's
# global generator, so at checkpoint after checkpoint the state is the one seeded, and an
# equality test (one C loop) is cheaper than converting it again.
_LAST: dict[str, tuple[Any, torch.Tensor]] = {}


def _converted(name: str, raw: Any, same: Any, convert: Any) -> torch.Tensor:
    """`convert(raw)`, or the tensor the last call for `name` made when `same(last, raw)`."""
    last = _LAST.get(name)
    if last is not None and same(last[0], raw):
        return last[1]
    out = convert(raw)
    _LAST[name] = (raw, out)
    return out


def _numpy_words(key: np.ndarray) -> torch.Tensor:
    return _converted("numpy", key, np.array_equal, lambda k: torch.from_numpy(k.astype(np.int64)))


def _python_state() -> tuple:
    """`random`'s state with its 625 words as one tensor: stored as a single array, not as
    625 numbers walked one by one at every checkpoint."""
    version, words, gauss = random.getstate()
    tensor = _converted(
        "python",
        words,
        lambda a, b: a == b,
        lambda w: torch.from_numpy(np.array(w, dtype=np.int64)),
    )
    return (version, tensor, gauss)


def _python_state_from(saved: Any) -> tuple:
    version, words, gauss = saved
    if isinstance(words, torch.Tensor):
        words = tuple(int(w) for w in words.tolist())
    return (version, tuple(words), gauss)  # (older checkpoints stored the words as numbers)


def set_rng_state(state: dict[str, Any], aug_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(_python_state_from(state["python"]))
    aug_gen.set_state(state["augment"])
