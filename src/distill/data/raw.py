"""Datasets as arrays: `RawData`, the label and class checks, class subsets and label maps,
the validation split (`make_splits`), and the on-disk cache of generated arrays.

This is the bottom of the data layer: it imports nothing of distill but the data core, the
checkpoint writer and the errors, so loaders anywhere (the domains too) build on it.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distill.core.checkpoint import atomic_write_bytes
from distill.core.errors import ConfigError, DataError
from distill.data.core import ArrayDataset, DataSplits, split_indices, stratified_take


def cache_dir() -> Path:
    """Where generated datasets are kept: $DISTILL_CACHE_DIR, else ~/.cache/distill."""
    return Path(os.environ.get("DISTILL_CACHE_DIR", Path.home() / ".cache" / "distill"))


@dataclass
class RawData:
    """A dataset as arrays, before the validation split: what each loader returns."""

    name: str
    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    input_shape: tuple[int, ...]
    # a second modality of the same samples (train, test) and its shape (data.paired)
    paired: tuple[np.ndarray, np.ndarray] | None = None
    paired_shape: tuple[int, ...] | None = None
    # the class count when the loader fixes it (labels must then lie in 0..C-1); None: the
    # largest label + 1, and then no label in 0..C-1 may be missing from train
    num_classes: int | None = None
    input_range: tuple[float, float] | None = None  # e.g. (0, 1) for images scaled to [0, 1]


def check_raw(raw: RawData, name: str) -> RawData:
    """Reject data that would train silently wrong: empty, mislabelled or non-finite."""
    for split, (x, y) in (("train", raw.train), ("test", raw.test)):
        if len(x) == 0:
            raise DataError(
                f"dataset {name!r}: the {split} split is empty; give it at least one sample per class"
            )
        if len(x) != len(y):
            raise DataError(
                f"dataset {name!r}: {split} has {len(x)} inputs but {len(y)} labels; they must pair up"
            )
        if not np.issubdtype(np.asarray(y).dtype, np.integer):
            raise DataError(
                f"dataset {name!r}: {split} labels have dtype {np.asarray(y).dtype}; class labels must be "
                f"integers 0..C-1 (convert with y.astype(int), or map names to indices)"
            )
        if y.min() < 0:
            raise DataError(
                f"dataset {name!r}: {split} has label {int(y.min())}; labels must be 0..C-1 "
                f"(hide labels with data.train_samples and data.unlabeled instead of -1)"
            )
        bad = ~np.isfinite(np.asarray(x, dtype=np.float64).reshape(len(x), -1)).all(axis=1)
        if bad.any():
            raise DataError(
                f"dataset {name!r}: {int(bad.sum())} {split} input(s) hold NaN or inf (first at index "
                f"{int(np.flatnonzero(bad)[0])}); clean or drop them before training"
            )
        if math.prod(raw.input_shape) != math.prod(x.shape[1:]):
            raise DataError(
                f"dataset {name!r}: input_shape {raw.input_shape} does not fit {split} inputs of shape {x.shape[1:]}"
            )
    check_label_range(raw, name)
    n_train_classes = int(raw.train[1].max()) + 1
    if int(raw.test[1].max()) >= n_train_classes:
        raise DataError(
            f"dataset {name!r}: the test split has label {int(raw.test[1].max())}, never seen in train "
            f"(labels 0..{n_train_classes - 1}); split so that every class appears in train"
        )
    return raw


def check_label_range(raw: RawData, name: str) -> None:
    """Labels must be 0..C-1: below a fixed C, and with no class id left unused when C is
    inferred (labels 1..3 would build a phantom class 0; a stray 50 a 51-way head)."""
    y = np.asarray(raw.train[1])
    if raw.num_classes is not None:
        for split, labels in (("train", y), ("test", np.asarray(raw.test[1]))):
            if int(labels.max()) >= raw.num_classes:
                first = int(np.flatnonzero(labels >= raw.num_classes)[0])
                raise DataError(
                    f"dataset {name!r}: {split} label {int(labels[first])} at index {first} is "
                    f"outside 0..{raw.num_classes - 1} (the loader says num_classes="
                    f"{raw.num_classes}); fix the label, or the class count"
                )
        return
    present = np.unique(y)
    if len(present) < int(y.max()) + 1:
        missing = sorted(set(range(int(y.max()) + 1)) - set(present.tolist()))
        shown = ", ".join(map(str, missing[:6])) + (" ..." if len(missing) > 6 else "")
        raise DataError(
            f"dataset {name!r}: train labels run {int(y.min())}..{int(y.max())} but never use "
            f"{shown}; the class count is the largest label + 1 = {int(y.max()) + 1}, so "
            f"those would be classes with no samples. Relabel to 0..C-1 (e.g. "
            f"np.unique(y, return_inverse=True)[1]; labels 1..C: y - 1), or return "
            f"num_classes from the loader if those classes are real"
        )


def select_classes(raw: RawData, classes: list[int]) -> RawData:
    """Keep the samples of `classes` and relabel them by their position in the list."""
    present = set(np.unique(raw.train[1]).tolist())
    missing = [c for c in classes if c not in present]
    if missing or len(set(classes)) != len(classes) or len(classes) < 2:
        raise ConfigError(
            f"data.classes: need two or more distinct classes of the dataset "
            f"(it has {sorted(present)}), got {classes}"
        )
    lookup_table = np.full(max(max(present), max(classes)) + 1, -1)
    lookup_table[classes] = np.arange(len(classes))

    def keep(xy: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        x, y = xy
        mask = np.isin(y, classes)
        return x[mask], lookup_table[y[mask]]

    return RawData(
        raw.name, keep(raw.train), keep(raw.test), raw.input_shape, input_range=raw.input_range
    )


def keep_task(raw: RawData, classes: list[int]) -> RawData:
    """Keep the samples of `classes` with their labels (one task of a class sequence)."""
    present = set(np.unique(raw.train[1]).tolist())
    missing = [c for c in classes if c not in present]
    if missing or len(set(classes)) != len(classes) or not classes:
        raise ConfigError(
            f"data.task_classes: need distinct classes of the dataset (it has {sorted(present)}), "
            f"got {classes}"
        )

    def keep(xy: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        mask = np.isin(xy[1], classes)
        return xy[0][mask], xy[1][mask]

    return RawData(
        raw.name, keep(raw.train), keep(raw.test), raw.input_shape, input_range=raw.input_range
    )


def map_labels(raw: RawData, label_map: list[int]) -> RawData:
    """Relabel class c as label_map[c]: a related task with another label space."""
    n = int(max(raw.train[1].max(), raw.test[1].max())) + 1
    if len(label_map) != n or min(label_map) < 0:
        raise ConfigError(
            f"data.label_map: give one new label (>= 0) for each of the {n} classes, got "
            f"{len(label_map)} entries"
        )
    if sorted(set(label_map)) != list(range(max(label_map) + 1)):
        raise ConfigError(
            f"data.label_map: the new labels must be 0..k-1 with none unused, got "
            f"{sorted(set(label_map))}"
        )
    table = np.asarray(label_map)
    return RawData(
        raw.name,
        (raw.train[0], table[raw.train[1]]),
        (raw.test[0], table[raw.test[1]]),
        raw.input_shape,
        input_range=raw.input_range,
    )


def with_views(raw: RawData, view: str | None, paired: str | None) -> RawData:
    """`raw` with its inputs in modality `view` and modality `paired` kept beside them."""
    from distill.data.views import make_view

    if not isinstance(raw.train[0], np.ndarray) or len(raw.input_shape) < 1:
        raise ConfigError(f"dataset {raw.name!r} has no array inputs to take views of")

    def shaped(x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float32).reshape(len(x), *raw.input_shape)

    base = shaped(raw.train[0]), shaped(raw.test[0])
    train, test, shape = make_view(view or "raw", *base)
    out = RawData(
        raw.name, (train, raw.train[1]), (test, raw.test[1]), shape, num_classes=raw.num_classes
    )
    if paired is not None:
        p_train, p_test, p_shape = make_view(paired, *base)
        out.paired, out.paired_shape = (p_train, p_test), p_shape
    return out


def labelled_rows(
    name: str,
    fit_y: np.ndarray,
    fit_idx: np.ndarray,
    train_samples: int | None,
    unlabeled: bool,
    seed: int,
    held_out: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, fit labels) keeping `train_samples` labels (stratified); the rest
    dropped, or kept with label -1 when `unlabeled` (a transfer set the teacher still
    teaches on). `held_out`: the samples that went to validation (for the message)."""
    if train_samples is None:
        return fit_idx, fit_y
    if train_samples > len(fit_idx):
        after = f" (after {held_out} went to validation)" if held_out else ""
        raise DataError(
            f"dataset {name!r}: data.train_samples={train_samples} but the training split has "
            f"only {len(fit_idx)} samples{after}; lower it, or leave it out to keep every label"
        )
    labelled = stratified_take(fit_y, train_samples, seed + 1)
    if not unlabeled:
        return fit_idx[labelled], fit_y[labelled]
    hidden = np.ones(len(fit_idx), dtype=bool)
    hidden[labelled] = False
    fit_y = fit_y.copy()
    fit_y[hidden] = -1
    return fit_idx, fit_y


def make_splits(
    raw: RawData,
    *,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    train_samples: int | None = None,
    unlabeled: bool = False,
    num_classes: int | None = None,
) -> DataSplits:
    """Carve a stratified validation set out of train; optionally keep fewer labelled samples.

    With `train_samples`, only that many training samples keep their labels (stratified).
    The rest are dropped, or with `unlabeled=True` kept as inputs with target -1: the task
    loss ignores them, but a teacher can still teach on them (a transfer set).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    if unlabeled and train_samples is None:
        raise ConfigError(
            "data.unlabeled needs data.train_samples: the number of samples that keep their labels"
        )
    x, y = raw.train
    fit_idx, val_idx = split_indices(y, val_fraction, split_seed)
    fit_idx, fit_y = labelled_rows(
        raw.name, y[fit_idx], fit_idx, train_samples, unlabeled, split_seed, len(val_idx)
    )
    if len(val_idx) == 0:
        raise DataError(
            f"dataset {raw.name!r}: data.val_fraction={val_fraction} leaves no validation samples; "
            f"raise it (e.g. 0.1): the best checkpoint is chosen on the validation split"
        )

    def make(xs: np.ndarray, ys: np.ndarray, ps: np.ndarray | None = None) -> ArrayDataset:
        inputs = torch.as_tensor(xs, dtype=torch.float32).reshape(len(xs), *raw.input_shape)
        if ps is not None:
            ps = torch.as_tensor(ps, dtype=torch.float32).reshape(len(ps), *raw.paired_shape)
        return ArrayDataset(inputs, torch.as_tensor(ys, dtype=torch.long), paired=ps)

    p_train, p_test = raw.paired if raw.paired is not None else (None, None)

    def rows(p: np.ndarray | None, idx: np.ndarray) -> np.ndarray | None:
        return None if p is None else p[idx]

    return DataSplits(
        name=raw.name,
        train=make(x[fit_idx], fit_y, rows(p_train, fit_idx)),
        val=make(x[val_idx], y[val_idx], rows(p_train, val_idx)),
        test=make(*raw.test, p_test),
        input_shape=tuple(raw.input_shape),
        num_classes=num_classes or int(max(y.max(), raw.test[1].max())) + 1,
        paired_shape=raw.paired_shape,
        input_range=raw.input_range,
    )


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def cached_arrays(
    path: Path, make: Callable[[], dict[str, np.ndarray]], *, compressed: bool = False
) -> dict[str, np.ndarray]:
    """The arrays `make()` returns, kept at `path` (.npz) with a SHA-256 of their contents.

    A cache file that is truncated, unreadable or fails its checksum is reported in one line
    on stderr (always: a rebuild costs time the user should know about) and made again."""
    if path.is_file():
        try:
            with np.load(path) as f:
                data = {k: f[k] for k in f.files}
            stored = str(data.pop("__sha256__", ""))
            problem = None if stored == _digest(data) else "its checksum does not match"
            if not stored:
                problem = "it has no checksum (an older distill wrote it)"
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            problem = f"it is unreadable ({type(e).__name__}: {e})"
        if problem is None:
            return data
        print(
            f"dataset cache {str(path)!r} is damaged: {problem}; making it again", file=sys.stderr
        )
    data = make()
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **data, __sha256__=_digest(data))
    atomic_write_bytes(path, buf.getvalue())
    return data
