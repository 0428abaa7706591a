"""Datasets that live on disk: labels known up front, inputs read one sample at a time.

A *source* is the whole collection as it lies on disk (a folder of images, the rows of a
Parquet file): it knows every sample's label without reading the sample, and reads sample i
on request. A `LazySplit` is a split of a source: an index list into it, the labels of those
samples, and the transform its samples go through. Splitting, class selection, relabelling
and `train_samples` all work on those index lists and label arrays, so nothing here holds the
inputs in memory; samples are decoded on DataLoader workers when `train.workers` > 0.

Checks that cannot scan every file up front run on each sample as it is read, and name it:
an unreadable file, an image of another size than the first one, a NaN feature.

Random transforms draw from a generator seeded by (run seed, epoch, sample id), where the
sample id is its position in the source; the trainer announces the epoch with
`set_epoch(epoch, seed)` before each pass. A sample's view in an epoch therefore does not
depend on the batch it lands in, the worker that reads it, or a resume.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from distill.core.errors import DataError
from distill.data.transforms import Pipeline


class Source(Protocol):
    """A collection of samples on disk (see the module docstring)."""

    name: str
    targets: np.ndarray  # (N,) int64 class of every sample

    def read(self, i: int) -> Any:
        """Sample i as stored (a Pillow image, an array, a tensor)."""
        ...

    def describe(self, i: int) -> str:
        """Where sample i lives, for error messages ('file /data/cat/1.png')."""
        ...

    def fingerprint(self) -> str:
        """A digest that changes whenever a sample may have changed (paths, sizes, times)."""
        ...


@runtime_checkable
class EpochAware(Protocol):
    """Data whose random transforms depend on the epoch: the trainer calls `set_epoch`."""

    def set_epoch(self, epoch: int, seed: int) -> None: ...


def sample_seed(seed: int, epoch: int, sample: int) -> int:
    """The generator seed of one sample's view in one epoch: a hash of the three numbers, so
    neighbouring samples and epochs get unrelated streams."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class LazySplit(torch.utils.data.Dataset):
    """Samples `positions` of `source` with labels `targets`, read and transformed on access.

    Items are `(input, target)`; `input_shape` is fixed by the first sample read (or given),
    and every later sample must have it."""

    def __init__(
        self,
        source: Source,
        positions: np.ndarray,
        targets: np.ndarray,
        transform: Pipeline,
        *,
        input_shape: tuple[int, ...] | None = None,
        num_classes: int | None = None,
    ):
        self.source = source
        self.positions = np.asarray(positions, dtype=np.int64)
        self._targets = np.asarray(targets, dtype=np.int64)
        if len(self.positions) != len(self._targets):
            raise ValueError(f"{len(self.positions)} positions but {len(self._targets)} targets")
        self.transform = transform
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.epoch, self.seed = 0, 0
        self._fixed = torch.Generator().manual_seed(0)  # for transforms that draw nothing

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def targets(self) -> Tensor:
        return torch.from_numpy(self._targets)

    @property
    def random(self) -> bool:
        """Whether its transform draws random numbers (so views change from epoch to epoch)."""
        return self.transform.random

    def set_epoch(self, epoch: int, seed: int) -> None:
        self.epoch, self.seed = int(epoch), int(seed)

    def subset(self, index: np.ndarray | Tensor, targets: np.ndarray | None = None) -> LazySplit:
        """The samples at `index` of this split (optionally relabelled)."""
        index = np.asarray(index, dtype=np.int64)
        return LazySplit(
            self.source,
            self.positions[index],
            self._targets[index] if targets is None else targets,
            self.transform,
            input_shape=self.input_shape,
            num_classes=self.num_classes,
        )

    def with_transform(self, transform: Pipeline) -> LazySplit:
        return LazySplit(
            self.source,
            self.positions,
            self._targets,
            transform,
            input_shape=self.input_shape,
            num_classes=self.num_classes,
        )

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.source.fingerprint().encode())
        h.update(self.positions.tobytes())
        h.update(repr(self.transform).encode())
        return h.hexdigest()

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        p = int(self.positions[i])
        try:
            sample = self.source.read(p)
        except DataError:
            raise
        except Exception as e:  # Pillow and Arrow raise many types for a bad file
            raise DataError(
                f"cannot read {self.source.describe(p)}: {type(e).__name__}: {e}; replace or "
                f"remove that file"
            ) from None
        gen = self._fixed
        if self.transform.random:  # only random steps need this sample's own stream
            gen = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, p))
        x = self.transform(sample, gen)
        self._check(x, p)
        return x, int(self._targets[i])

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, int]]:
        """Many items at once (DataLoader and load_batch use this): rows of a table with no
        transforms are read in one columnar call; anything else item by item."""
        read_many = getattr(self.source, "read_many", None)
        if read_many is None or self.transform.steps:
            return [self[i] for i in indices]
        positions = self.positions[np.asarray(indices, dtype=np.int64)]
        rows = read_many(positions)
        if rows is None:
            return [self[i] for i in indices]
        x = torch.from_numpy(rows)
        bad = ~torch.isfinite(x).reshape(len(x), -1).all(dim=1)
        if bad.any():
            self._check(x[int(bad.nonzero()[0])], int(positions[int(bad.nonzero()[0])]))
        if self.input_shape is None:
            self.input_shape = tuple(x.shape[1:])
        elif tuple(x.shape[1:]) != tuple(self.input_shape):
            self._check(x[0], int(positions[0]))
        return [(x[k], int(self._targets[i])) for k, i in enumerate(indices)]

    def _check(self, x: Tensor, p: int) -> None:
        shape = tuple(x.shape)
        if self.input_shape is None:
            self.input_shape = shape
        elif shape != tuple(self.input_shape):
            fix = (
                "add a resize (transforms: [{resize: [H, W]}]) so every image comes out the same size"
                if len(shape) == 3
                else "every sample must have the same number of features"
            )
            raise DataError(
                f"{self.source.describe(p)} gives an input of shape {shape}, but the dataset's "
                f"inputs are {tuple(self.input_shape)}; {fix}"
            )
        # decoded 8-bit images cannot hold NaN (and normalize refuses std <= 0): only rows
        # of numbers from files are checked
        if not getattr(self.source, "always_finite", False) and not torch.isfinite(x).all():
            raise DataError(
                f"{self.source.describe(p)} holds NaN or inf; clean or drop that sample"
            )
