"""Splits of data that is not in-memory arrays.

Data read from disk (`distill.data.lazy.LazyData`) is split by index lists and label
arrays: the stratified validation split, `train_samples` / `unlabeled`, `classes`,
`task_classes` and `label_map` never touch the inputs. Data its loader already split (text
corpora, streams) is passed through, and the options that need random access to a stream
are refused with the alternative.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from distill.core.errors import ConfigError, DataError
from distill.data.core import DataSplits, split_indices
from distill.data.raw import RawData, check_label_range, labelled_rows
from distill.data.records import LazySplit


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


@dataclass(frozen=True)
class SplitOptions:
    """The data section's split and subset options (see `distill.core.config.DataConfig`)."""

    val_fraction: float = 0.1
    split_seed: int = 0
    train_samples: int | None = None
    unlabeled: bool = False
    classes: list[int] | None = None
    task_classes: list[int] | None = None
    label_map: list[int] | None = None
    view: str | None = None
    paired: str | None = None

    @property
    def needs_access(self) -> bool:
        """Whether an option needs random access to the samples (a stream has none)."""
        subset = self.train_samples is not None or self.unlabeled or self.classes is not None
        return subset or bool(self.task_classes) or self.label_map is not None


def lazy_splits(data: Any, o: SplitOptions) -> DataSplits:
    """`make_splits` for data on disk: every step on index lists and label arrays."""
    y = data.train._targets
    raw = RawData(data.name, (y, y), (data.test._targets,) * 2, (1,), num_classes=data.num_classes)
    check_label_range(raw, data.name)
    train, test, num_classes, names = _select(data, o.classes, o.task_classes, o.label_map)
    if data.val is not None:  # the files carry a validation split: train keeps every sample
        fit_idx, val = np.arange(len(train)), data.val
    else:
        fit_idx, val_idx = split_indices(train._targets, o.val_fraction, o.split_seed)
        if len(val_idx) == 0:
            raise DataError(
                f"dataset {data.name!r}: data.val_fraction={o.val_fraction} leaves no validation "
                f"samples; raise it (e.g. 0.1): the best checkpoint is chosen on the validation "
                f"split"
            )
        val = train.subset(val_idx).with_transform(data.eval_transform)
    fit_idx, fit_y = labelled_rows(
        data.name, train._targets[fit_idx], fit_idx, o.train_samples, o.unlabeled, o.split_seed
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
        preprocessing=getattr(data, "preprocessing", None),
    )


def split_prepared(raw: Any, name: str, o: SplitOptions) -> DataSplits:
    """Splits of data read from disk (by index lists) or already split by its loader (text
    corpora, streams: the options that need random access are refused)."""
    from distill.data.lazy import LazyData
    from distill.data.loading import is_stream

    views = o.view is not None or o.paired is not None
    if isinstance(raw, LazyData):
        if views:
            raise ConfigError(
                f"dataset {name!r} is read from disk sample by sample; data.view and data.paired "
                f"need in-memory arrays (use transforms for per-sample changes)"
            )
        return lazy_splits(raw, o)
    if is_stream(raw.train) and (o.needs_access or views):
        raise ConfigError(
            f"dataset {name!r} is streamed, and data.train_samples, data.unlabeled, "
            f"data.classes, data.task_classes, data.label_map, data.view and data.paired "
            f"need random access to it; drop them, or load it map-style (streaming: false)"
        )
    if o.train_samples is not None or o.unlabeled or o.classes is not None or o.task_classes:
        raise ConfigError(
            f"dataset {name!r} makes its own splits; data.train_samples, data.unlabeled and "
            f"data.classes do not apply to it (set its options under data.options)"
        )
    return raw
