"""The user's own torch datasets, returned by a dataset function a config names.

`data.name: mypkg.data:splits` may return `{"train": Dataset, "test": Dataset}` (optionally
`"val"` and `"num_classes"`) instead of arrays: map-style datasets are split by index like
files on disk, IterableDatasets are streamed.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch
from torch import Tensor

from distill.core.errors import DataError
from distill.data.core import DataSplits
from distill.data.lazy import LabelCoder, LazyData, finish_data
from distill.data.records import LazySplit
from distill.data.transforms import Pipeline


class UserItems:
    """A user's map-style torch dataset as a source: items are (input, target) pairs or dicts."""

    def __init__(self, name: str, dataset: Any, coder: LabelCoder | None = None):
        from distill.data.loading import TARGET_KEYS

        self.name, self.dataset = name, dataset
        targets = getattr(dataset, "targets", None)
        if targets is None:  # read every item once for its label (say so: it costs a pass)
            print(
                f"dataset {name!r}: reading every item once for its label (give the dataset a "
                f"`targets` attribute to skip this)",
                file=sys.stderr,
            )
            targets = []
            for i in range(len(dataset)):
                item = dataset[i]
                if isinstance(item, dict):
                    key = next((k for k in TARGET_KEYS if k in item), None)
                    if key is None:
                        raise DataError(
                            f"dataset {name!r}: item {i} has keys {sorted(item)}, none a label "
                            f"({', '.join(TARGET_KEYS)})"
                        )
                    targets.append(item[key])
                else:
                    targets.append(item[1])
        self.values = [int(t) if isinstance(t, Tensor) else t for t in list(targets)]
        self.coder = LabelCoder(self.values, f"dataset {name!r}") if coder is None else coder
        self.targets = self.coder.encode(self.values, f"dataset {name!r}")
        self.names = self.coder.names

    def read(self, i: int) -> Any:
        from distill.data.loading import INPUT_KEYS

        item = self.dataset[int(i)]
        if isinstance(item, dict):
            key = next((k for k in INPUT_KEYS if k in item), None)
            if key is None:
                raise DataError(
                    f"dataset {self.name!r}: item {i} has keys {sorted(item)}, none an input"
                )
            return item[key]
        return item[0]

    def describe(self, i: int) -> str:
        return f"item {int(i)} of dataset {self.name!r}"

    def fingerprint(self) -> str:
        # the user's code is opaque: key by its type and length only, so a cache entry is
        # exact only while the code is unchanged (documented in docs/data.md)
        return (
            f"{type(self.dataset).__module__}.{type(self.dataset).__qualname__}:{len(self.dataset)}"
        )


def from_torch(name: str, obj: dict[str, Any]) -> LazyData | DataSplits:
    """A user loader's {'train': Dataset, 'test': Dataset[, 'val': ...]} as distill data:
    map-style datasets become lazy splits, IterableDatasets streams (then 'val' is needed)."""
    train, test, val = obj["train"], obj["test"], obj.get("val")
    iterable = [
        isinstance(d, torch.utils.data.IterableDataset) for d in (train, test, val) if d is not None
    ]
    if any(iterable):
        if not all(iterable) or val is None:
            raise DataError(
                f"dataset {name!r}: IterableDatasets cannot be split at random: return train, "
                f"val and test, all IterableDatasets"
            )
        from distill.data.loading import stream_batches, stream_loader

        first = next(stream_batches(stream_loader(test, batch_size=2, workers=0, pin_memory=False)))
        n = obj.get("num_classes")
        if n is None:
            raise DataError(f"dataset {name!r}: with IterableDatasets, return num_classes too")
        return DataSplits(name, train, val, test, tuple(first["input"].shape[1:]), int(n))
    none = Pipeline([])
    src_train = UserItems(name, train)
    src_test = UserItems(name, test, src_train.coder)  # labels mapped as train's are
    data = finish_data(
        name, src_train, src_test, none, none, names=src_train.names, test_fraction=0.2
    )
    if obj.get("num_classes"):
        data.num_classes = int(obj["num_classes"])
    if val is not None:
        src_val = UserItems(name, val, src_train.coder)
        data.val = LazySplit(src_val, np.arange(len(src_val.targets)), src_val.targets, none)
    return data
