"""In-memory datasets, splits and batching."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor


class ArrayDataset:
    """Inputs and integer targets held as tensors; batches are one indexing op, not N calls.

    `paired`, when given, is a second modality of the same samples (batch key 'paired')."""

    def __init__(self, inputs: Tensor, targets: Tensor, paired: Tensor | None = None):
        if len(inputs) != len(targets):
            raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
        if paired is not None and len(paired) != len(inputs):
            raise ValueError(f"{len(inputs)} inputs but {len(paired)} paired inputs")
        self.inputs = inputs
        self.targets = targets
        self.paired = paired

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.inputs[i], self.targets[i]

    def batch(self, index: Tensor) -> dict[str, Tensor]:
        out = {"input": self.inputs[index], "target": self.targets[index], "index": index}
        if self.paired is not None:
            out["paired"] = self.paired[index]
        return out

    def subset(self, index: np.ndarray | Tensor) -> ArrayDataset:
        index = torch.as_tensor(index, dtype=torch.long)
        paired = self.paired[index] if self.paired is not None else None
        return ArrayDataset(self.inputs[index], self.targets[index], paired)

    def paired_view(self) -> ArrayDataset:
        """The same samples in the paired modality (itself when there is none)."""
        if self.paired is None:
            return self
        return ArrayDataset(self.paired, self.targets)


def teacher_input(batch: dict[str, Tensor]) -> Tensor:
    """What a teacher reads from a batch: the paired modality when the data has one."""
    return batch["paired"] if "paired" in batch else batch["input"]


def batches_whole(dataset: Any) -> bool:
    """Whether `dataset` gathers a batch in one call (`dataset.batch(index)`, as ArrayDataset
    and the token datasets do) rather than item by item. A Hugging Face Dataset's own
    `.batch(batch_size)` regroups rows and is not this."""
    return hasattr(dataset, "batch") and not type(dataset).__module__.startswith("datasets.")


def load_batch(dataset: Any, index: Tensor) -> dict[str, Tensor]:
    """A batch dict {'input', 'target', 'index'} from any map-style dataset whose items are
    (x, y) pairs or dicts (see `distill.data.loading.as_batch`)."""
    from distill.data.loading import collate_items

    if batches_whole(dataset):
        return dataset.batch(index)
    many = getattr(dataset, "__getitems__", None)  # batched reads (tables on disk)
    items = many(index.tolist()) if many is not None else [dataset[int(i)] for i in index]
    batch = collate_items(items)
    batch["index"] = index
    return batch


@dataclass
class DataSplits:
    """Train/val/test splits and what a model needs to know about them."""

    name: str
    train: Any
    val: Any
    test: Any
    input_shape: tuple[int, ...]
    num_classes: int
    paired_shape: tuple[int, ...] | None = None  # data.paired: the teacher's modality
    tokenizer: Any = None  # text data: encodes and decodes token ids
    teacher_tokenizer: Any = None  # text data for cross-tokenizer KD: the teacher's tokenizer
    # the valid range of the inputs when they have one (images in [0, 1]); adversarial
    # inputs in `distill eval` are clipped to it
    input_range: tuple[float, float] | None = None
    class_names: list[str] | None = None  # the name of each class id, when the data has names
    preprocessing: dict | None = None  # fitted on the training rows (table feature scaling)


def split_indices(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: (kept, held_out) index arrays, `fraction` of each class held out."""
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_held = int(round(fraction * len(idx)))
        held.append(idx[:n_held])
        kept.append(idx[n_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def stratified_take(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of about `n` samples with the class proportions of `labels`."""
    if n >= len(labels):
        return np.arange(len(labels))
    _, taken = split_indices(labels, n / len(labels), seed)
    return taken
