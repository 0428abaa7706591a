"""Splits of data that is not in-memory arrays.

Data read from disk (`distill.data.files.LazyData`) is split by index lists and label
arrays: the stratified validation split, `train_samples` / `unlabeled`, `classes`,
`task_classes` and `label_map` never touch the inputs. Data its loader already split (text
corpora, streams) is passed through, and the options that need random access to a stream
are refused with the alternative.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from distill.data.core import DataSplits, split_indices, stratified_take
from distill.data.records import LazySplit
from distill.data.sources import RawData, _check_label_range
from distill.errors import ConfigError, DataError


def _keep_classes(split: LazySplit, classes: list[int], relabel: bool) -> LazySplit:
    """The samples of `classes`, relabelled 0..k-1 in list order if `relabel`."""
    y = split._targets
    mask = np.isin(y, classes)
    table = np.full(int(max(y.max(initial=0), max(classes))) + 1, -1)
    table[classes] = np.arange(len(classes)) if relabel else classes
    return split.subset(np.flatnonzero(mask), table[y[mask]])


def _relabel(split: LazySplit, table: np.ndarray) -> LazySplit:
    return split.subset(np.arange(len(split)), table[split._targets])


def _select(data: Any, classes, task_classes, label_map):
    """(train, test, num_classes, class names) after data.classes / task_classes / label_map."""
    train, test, n, names = data.train, data.test, data.num_classes, data.class_names
    present = sorted(set(np.unique(train._targets).tolist()))
    for key, chosen in (("classes", classes), ("task_classes", task_classes)):
        if chosen is not None and (
            set(chosen) - set(present) or len(set(chosen)) != len(chosen) or not chosen
        ):
            raise ConfigError(
                f"data.{key}: need distinct classes of the dataset (it has {present}), got {chosen}"
            )
    if classes is not None:
        train, test = _keep_classes(train, classes, True), _keep_classes(test, classes, True)
        n, names = len(classes), [names[c] for c in classes] if names else None
    if task_classes is not None:
        train = _keep_classes(train, task_classes, False)
        test = _keep_classes(test, task_classes, False)
    if label_map is not None:
        if len(label_map) != n or sorted(set(label_map)) != list(range(max(label_map) + 1)):
            raise ConfigError(
                f"data.label_map: give one new label for each of the {n} classes, the new "
                f"labels 0..k-1 with none unused; got {label_map}"
            )
        table = np.asarray(label_map)
        train, test = _relabel(train, table), _relabel(test, table)
        n, names = max(label_map) + 1, None
    return train, test, n, names


def _labelled(name: str, fit_y: np.ndarray, fit_idx: np.ndarray, train_samples, unlabeled, seed):
    """(fit indices, fit labels) keeping `train_samples` labels; the rest dropped, or kept
    with label -1 when `unlabeled` (a transfer set the teacher still teaches on)."""
    if train_samples is None:
        return fit_idx, fit_y
    if train_samples > len(fit_idx):
        raise DataError(
            f"dataset {name!r}: data.train_samples={train_samples} but the training split has "
            f"only {len(fit_idx)} samples; lower it, or leave it out to keep every label"
        )
    labelled = stratified_take(fit_y, train_samples, seed + 1)
    if not unlabeled:
        return fit_idx[labelled], fit_y[labelled]
    hidden = np.ones(len(fit_idx), dtype=bool)
    hidden[labelled] = False
    fit_y = fit_y.copy()
    fit_y[hidden] = -1
    return fit_idx, fit_y


def lazy_splits(
    data: Any,
    *,
    val_fraction: float,
    split_seed: int,
    train_samples: int | None,
    unlabeled: bool,
    classes: list[int] | None,
    task_classes: list[int] | None,
    label_map: list[int] | None,
) -> DataSplits:
    """`make_splits` for data on disk: every step on index lists and label arrays."""
    y = data.train._targets
    raw = RawData(data.name, (y, y), (data.test._targets,) * 2, (1,), num_classes=data.num_classes)
    _check_label_range(raw, data.name)
    train, test, num_classes, names = _select(data, classes, task_classes, label_map)
    if data.val is not None:  # the files carry a validation split: train keeps every sample
        fit_idx, val = np.arange(len(train)), data.val
    else:
        fit_idx, val_idx = split_indices(train._targets, val_fraction, split_seed)
        if len(val_idx) == 0:
            raise DataError(
                f"dataset {data.name!r}: data.val_fraction={val_fraction} leaves no validation "
                f"samples; raise it (e.g. 0.1): the best checkpoint is chosen on the validation "
                f"split"
            )
        val = train.subset(val_idx).with_transform(data.eval_transform)
    fit_idx, fit_y = _labelled(
        data.name, train._targets[fit_idx], fit_idx, train_samples, unlabeled, split_seed
    )
    return DataSplits(
        name=data.name,
        train=train.subset(fit_idx, fit_y),
        val=val,
        test=test,
        input_shape=data.input_shape,
        num_classes=num_classes,
        input_range=data.input_range,
        class_names=names,
    )


def split_prepared(
    raw: Any,
    name: str,
    *,
    val_fraction: float,
    split_seed: int,
    train_samples: int | None,
    unlabeled: bool,
    classes: list[int] | None,
    task_classes: list[int] | None,
    label_map: list[int] | None,
    view: str | None,
    paired: str | None,
) -> DataSplits:
    """Splits of data read from disk (by index lists) or already split by its loader (text
    corpora, streams: the options that need random access are refused)."""
    from distill.data.files import LazyData
    from distill.data.loading import is_stream

    if isinstance(raw, LazyData):
        if view is not None or paired is not None:
            raise ConfigError(
                f"dataset {name!r} is read from disk sample by sample; data.view and data.paired "
                f"need in-memory arrays (use transforms for per-sample changes)"
            )
        return lazy_splits(
            raw,
            val_fraction=val_fraction,
            split_seed=split_seed,
            train_samples=train_samples,
            unlabeled=unlabeled,
            classes=classes,
            task_classes=task_classes,
            label_map=label_map,
        )
    needs_access = train_samples is not None or unlabeled or classes is not None
    needs_access = needs_access or bool(task_classes) or label_map is not None
    if is_stream(raw.train) and (needs_access or view is not None or paired is not None):
        raise ConfigError(
            f"dataset {name!r} is streamed, and data.train_samples, data.unlabeled, "
            f"data.classes, data.task_classes, data.label_map, data.view and data.paired "
            f"need random access to it; drop them, or load it map-style (streaming: false)"
        )
    if train_samples is not None or unlabeled or classes is not None or task_classes:
        raise ConfigError(
            f"dataset {name!r} makes its own splits; data.train_samples, data.unlabeled and "
            f"data.classes do not apply to it (set its options under data.options)"
        )
    return raw
