"""Hugging Face `datasets` held locally, map-style or streamed, and the user's torch datasets.

`data.name: hf` reads what `datasets.load_dataset` / `load_from_disk` read offline: Parquet,
JSON/JSONL, CSV and Arrow files, `imagefolder` trees and `save_to_disk` folders, with the
split names the files carry. A column mapping says which column is the input (`input`: one
column, or a list of numeric columns concatenated) and which the label (`label`).

Map-style data is memory-mapped Arrow: splits and subsets are index lists
(`distill.data.records`). With `streaming: true` nothing is indexed: samples are read in
file order (shuffled in a buffer when `shuffle_buffer` is set), shared out by rank
(`datasets.distributed.split_dataset_by_node`) and by DataLoader worker (the stream's own
shards), and options that need random access (a carved validation split, `train_samples`,
`classes`, the teacher cache) are refused with the alternative. A streamed sample's random
transforms are seeded by (seed, epoch, rank, worker, position in that reader's share), so a
streamed run is reproducible for a fixed number of ranks and workers.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from distill.core.errors import ConfigError, DataError
from distill.data.core import DataSplits
from distill.data.lazy import (
    LazyData,
    finish_data,
    is_image,
    is_text,
    no_other_options,
    range_of,
    split_transforms,
    text_pipeline,
)
from distill.data.records import LazySplit, sample_seed
from distill.data.tables import (
    LABEL_COLUMNS,
    TableRows,
    check_column,
    feature_columns,
    hf_cache_dir,
    labels_of,
    require_datasets,
)
from distill.data.transforms import Pipeline

TEST_SPLITS = ("test", "validation", "valid", "val", "dev")
# datasets' packaged builders that read local files (path: parquet + data_files: ...)
BUILDERS = ("parquet", "json", "csv", "arrow", "text", "imagefolder", "audiofolder", "pandas")


def open_dataset(
    path: str, fmt: str | None, data_files: Any, data_dir: str | None, streaming: bool
):
    """A DatasetDict (or IterableDatasetDict) from a save_to_disk folder, a builder name
    (parquet, json, csv, arrow, imagefolder, text) or a file."""
    datasets = require_datasets("dataset 'hf'")
    p = Path(path).expanduser()
    if fmt is None and path not in BUILDERS and not p.exists():
        # never let datasets look the name up on the Hub: nothing is downloaded
        raise DataError(
            f"dataset 'hf': {path!r} is neither a local file or folder nor a file format "
            f"({', '.join(BUILDERS)}); distill reads local data only: check the path"
        )
    saved = p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file())
    try:
        if saved:
            ds = datasets.load_from_disk(str(p))
            if streaming:
                ds = _to_stream(ds)
        else:
            # a folder of data files: datasets infers the format from what it holds
            builder = fmt or (str(p) if p.is_dir() else path)
            if data_files is None and data_dir is None:
                if fmt is not None and p.is_dir():
                    data_dir = str(p)
                elif p.is_file():
                    from distill.data.tables import file_format

                    builder, data_files = file_format(str(p), fmt, "hf"), str(p)
            ds = datasets.load_dataset(
                builder,
                data_files=data_files,
                data_dir=data_dir,
                cache_dir=hf_cache_dir(),
                streaming=streaming,
            )
    except (FileNotFoundError, ValueError, OSError) as e:
        raise DataError(
            f"dataset 'hf': cannot open {path!r}: {type(e).__name__}: {e}; give a save_to_disk "
            f"folder, a file, or format: parquet | json | csv | arrow | imagefolder with "
            f"data_files / data_dir"
        ) from None
    if not hasattr(ds, "keys"):  # one split: call it train
        ds = {"train": ds}
    return ds


def _to_stream(ds: Any) -> Any:
    if hasattr(ds, "keys"):
        return {k: v.to_iterable_dataset() for k, v in ds.items()}
    return ds.to_iterable_dataset()


def pick_split(splits: Any, wanted: str | None, fallbacks: tuple[str, ...], role: str):
    names = list(splits.keys())
    if wanted is not None:
        if wanted not in names:
            raise DataError(f"dataset 'hf': no {role} split {wanted!r}; the data has {names}")
        return wanted
    return next((n for n in fallbacks if n in names), None)


def _default_input(columns: list[str], features: Any, label: str) -> list[str]:
    for c in ("image", "img", "pixel_values", "input", "x", "features"):
        if c in columns:
            return [c]
    return [c for c in columns if c != label]


@dataclass
class _Columns:
    """Where a dataset's samples come from: its path, input columns, label column, mode."""

    path: str
    inputs: list[str]
    label: str
    mode: str
    text: bool = False  # one text column, tokenized by the transform


def load_hf(
    *,
    path: str,
    format: str | None = None,
    data_files: Any = None,
    data_dir: str | None = None,
    input: str | list[str] | None = None,
    text: str | None = None,
    label: str | None = None,
    train_split: str = "train",
    test_split: str | None = None,
    val_split: str | None = None,
    streaming: bool = False,
    test_fraction: float = 0.2,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    shuffle_buffer: int | None = None,
    val_samples: int | None = None,
    mode: str = "RGB",
    **options: Any,
) -> LazyData | DataSplits:
    """A local Hugging Face dataset for classification (see the module docstring)."""
    train_tf, eval_tf = _hf_transforms(options, text)
    input = text if text is not None else input  # one text column, tokenized on access
    no_other_options("hf", options, load_hf)
    splits = open_dataset(path, format, data_files, data_dir, streaming)
    pick_split(splits, train_split, (), "train")
    names = {
        "train": train_split,
        "test": pick_split(splits, test_split, TEST_SPLITS, "test"),
        "val": pick_split(splits, val_split, (), "validation") if val_split else None,
    }
    cols = _columns_of(splits[train_split], path, input, label, mode, text is not None)
    if streaming:
        if shuffle_buffer is not None and shuffle_buffer < 1:
            raise ConfigError("dataset 'hf': shuffle_buffer must be >= 1")
        return _streamed(
            splits,
            names,
            cols,
            train_tf,
            eval_tf,
            num_classes=num_classes,
            class_names=class_names,
            shuffle_buffer=shuffle_buffer,
            val_samples=val_samples,
        )
    if val_samples is not None or shuffle_buffer is not None:
        raise ConfigError(
            "dataset 'hf': val_samples and shuffle_buffer are for streaming: true; map-style "
            "data is shuffled each epoch and split with data.val_fraction"
        )
    return _map_style(
        splits, names, cols, train_tf, eval_tf, test_fraction, num_classes, class_names
    )


def _hf_transforms(options: dict[str, Any], text: str | None) -> tuple[Pipeline, Pipeline]:
    """The train and eval pipelines: the named transforms, or tokenisation of a text column
    (the `tokenizer` and `max_length` options, taken out of `options`)."""
    text_options = {k: options.pop(k) for k in ("tokenizer", "max_length") if k in options}
    train_tf, eval_tf = split_transforms(options, "hf")
    if text is not None:
        train_tf = eval_tf = text_pipeline(text_options, "hf")
    elif text_options:
        raise ConfigError(
            "dataset 'hf': tokenizer and max_length apply to a text column; name it with "
            "text: <column>"
        )
    return train_tf, eval_tf


def _columns_of(
    train: Any, path: str, input: Any, label: str | None, mode: str, text: bool
) -> _Columns:
    """Which columns are the input and the label (found by name when not given)."""
    columns = list(train.column_names or [])
    if not columns:  # a stream may not know its columns until read
        columns = list(next(iter(train)).keys())
    if label is None:
        label = next((c for c in LABEL_COLUMNS if c in columns), None)
        if label is None:
            raise DataError(
                f"dataset 'hf': {path!r} has no column named like a label {list(LABEL_COLUMNS)}; "
                f"say which one with label: <column> (its columns are {columns[:12]})"
            )
    inputs = [input] if isinstance(input, str) else input
    return _Columns(
        path, inputs or _default_input(columns, train.features, label), label, mode, text
    )


def _rows(splits: Any, split: str, cols: _Columns, coder: Any, feature_cols: list[str], names=None):
    """TableRows of one split (its columns checked) and the label coder (fitted on train)."""
    table = splits[split]
    origin = f"split {split!r} of {cols.path!r}"
    for c in [cols.label, *feature_cols]:
        check_column(table, c, "hf", "label" if c == cols.label else "input", origin)
    y, coder = labels_of(table, cols.label, f"dataset 'hf': {origin}", coder, names)
    return TableRows("hf", table, feature_cols, y, origin, cols.mode), coder


def _map_style(splits, names, cols, train_tf, eval_tf, test_fraction, num_classes, class_names):
    train = splits[names["train"]]
    origin = f"split {names['train']!r} of {cols.path!r}"
    check_column(train, cols.label, "hf", "label", origin)
    if cols.text:
        check_column(train, cols.inputs[0], "hf", "text", origin)
        feature_cols = cols.inputs
    else:
        feature_cols = _input_columns(train, cols.inputs, cols.label, origin)
    src_train, coder = _rows(splits, names["train"], cols, None, feature_cols, class_names)
    classes = coder.names
    src_test = None
    if names["test"] is not None:
        src_test, _ = _rows(splits, names["test"], cols, coder, feature_cols)
    data = finish_data(
        "hf",
        src_train,
        src_test,
        train_tf,
        eval_tf,
        names=classes,
        test_fraction=test_fraction,
        input_range=range_of(eval_tf) if src_train.image else None,
    )
    if num_classes is not None:
        data.num_classes = max(data.num_classes, num_classes)
    if names["val"] is not None:
        src_val, _ = _rows(splits, names["val"], cols, coder, feature_cols)
        data.val = LazySplit(src_val, np.arange(len(src_val.targets)), src_val.targets, eval_tf)
    return data


def _input_columns(table: Any, inputs: list[str], label: str, origin: str) -> list[str]:
    for c in inputs:
        check_column(table, c, "hf", "input", origin)
    if len(inputs) == 1 and is_image(table.features[inputs[0]]):
        return inputs
    if len(inputs) == 1 and is_text(table.features[inputs[0]]):
        raise DataError(
            f"dataset 'hf': input column {inputs[0]!r} of {origin} holds text; name it with "
            f"text: {inputs[0]} and give tokenizer: <a Hugging Face tokenizer folder>"
        )
    return feature_columns(table, label, inputs, "hf", origin)


# ------------------------------------------------------------------------ streams
def stream_rows(
    ds: Any, skip: int, take: int | None, shuffle_buffer: int | None, seed: int, epoch: int
) -> Any:
    """The rows of a streamed split this reader gets: after `skip`, up to `take`, shuffled
    in a buffer (seeded by seed and epoch), and this rank's share when distributed (the
    DataLoader workers' shares are cut by `datasets` itself)."""
    from distill.core import distributed

    if skip:
        ds = ds.skip(skip)
    if take is not None:
        ds = ds.take(take)
    if shuffle_buffer:
        ds = ds.shuffle(seed=seed, buffer_size=shuffle_buffer)
        ds.set_epoch(epoch)
    if distributed.active():
        from datasets.distributed import split_dataset_by_node

        ds = split_dataset_by_node(ds, rank=distributed.rank(), world_size=distributed.world_size())
    return ds


class StreamSplit(torch.utils.data.IterableDataset):
    """One split of a streamed dataset: rows mapped to (input, target), transformed, checked."""

    def __init__(
        self,
        stream: Any,
        inputs: list[str],
        label: str,
        names: list[str] | None,
        num_classes: int,
        transform: Pipeline,
        origin: str,
        *,
        mode: str = "RGB",
        shuffle_buffer: int | None = None,
        skip: int = 0,
        take: int | None = None,
    ):
        self.stream, self.inputs, self.label, self.names = stream, inputs, label, names
        self.num_classes, self.transform, self.origin, self.mode = (
            num_classes,
            transform,
            origin,
            mode,
        )
        self.shuffle_buffer, self.skip, self.take = shuffle_buffer, skip, take
        self.epoch, self.seed = 0, 0
        self.input_shape: tuple[int, ...] | None = None

    @property
    def random(self) -> bool:
        return self.transform.random

    def set_epoch(self, epoch: int, seed: int) -> None:
        self.epoch, self.seed = int(epoch), int(seed)

    def _rows(self) -> Any:
        return stream_rows(
            self.stream, self.skip, self.take, self.shuffle_buffer, self.seed, self.epoch
        )

    def _sample(self, row: dict[str, Any], where: str) -> tuple[Any, int]:
        if len(self.inputs) == 1 and isinstance(row[self.inputs[0]], str):
            x = row[self.inputs[0]]  # text, tokenized by the transform
        elif len(self.inputs) == 1 and hasattr(row[self.inputs[0]], "convert"):
            x = row[self.inputs[0]].convert(self.mode)
        else:
            parts = [np.asarray(row[c], dtype=np.float32).reshape(-1) for c in self.inputs]
            x = np.concatenate(parts) if len(parts) > 1 else parts[0]
        y = row[self.label]
        if isinstance(y, str):
            if self.names is None or y not in self.names:
                raise DataError(
                    f"{where}: label {y!r} is not one of the class_names {self.names}; list every "
                    f"class under data.options.class_names"
                )
            y = self.names.index(y)
        if not isinstance(y, int | np.integer) or not 0 <= int(y) < self.num_classes:
            raise DataError(
                f"{where}: label {y!r} is outside 0..{self.num_classes - 1}; fix the label or "
                f"set data.options.num_classes"
            )
        return x, int(y)

    def __iter__(self):
        from distill.core import distributed

        worker = torch.utils.data.get_worker_info()
        reader = (distributed.rank() if distributed.active() else 0, worker.id if worker else 0)
        for pos, row in enumerate(self._rows()):
            where = f"streamed sample {pos} (reader {reader}) of {self.origin}"
            missing = [c for c in (*self.inputs, self.label) if c not in row]
            if missing:
                raise DataError(
                    f"{where} has no column(s) {missing}; its columns are {sorted(row)}"
                )
            x, y = self._sample(row, where)
            key = (reader[0] * 1024 + reader[1]) * 2**40 + pos
            out = self.transform(
                x, torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, key))
            )
            self._check(out, where)
            yield out, y

    def _check(self, x: Tensor, where: str) -> None:
        if self.input_shape is None:
            self.input_shape = tuple(x.shape)
        elif tuple(x.shape) != self.input_shape:
            raise DataError(
                f"{where} gives an input of shape {tuple(x.shape)}, the stream's first gave "
                f"{self.input_shape}; add a resize transform (or fix the features)"
            )
        if not torch.isfinite(x).all():
            raise DataError(f"{where} holds NaN or inf; clean or drop that sample")

    def first_shape(self) -> tuple[int, ...]:
        for x, _ in self:
            return tuple(x.shape)
        raise DataError(f"{self.origin} is empty")


def _streamed(
    splits,
    names,
    cols: _Columns,
    train_tf,
    eval_tf,
    *,
    num_classes,
    class_names,
    shuffle_buffer,
    val_samples,
) -> DataSplits:
    train = splits[names["train"]]
    feature = (train.features or {}).get(cols.label) if train.features else None
    classes = class_names
    if feature is not None and type(feature).__name__ == "ClassLabel":
        classes = classes or list(feature.names)
    _check_stream_options(splits, names, num_classes, classes, val_samples)
    n = num_classes or len(classes)

    def split(name: str, tf: Pipeline, **kw: Any) -> StreamSplit:
        origin = f"split {name!r} of {cols.path!r}"
        return StreamSplit(
            splits[name], cols.inputs, cols.label, classes, n, tf, origin, mode=cols.mode, **kw
        )

    if names["val"] is not None:
        train_s = split(names["train"], train_tf, shuffle_buffer=shuffle_buffer)
        val_s = split(names["val"], eval_tf)
    else:
        train_s = split(names["train"], train_tf, shuffle_buffer=shuffle_buffer, skip=val_samples)
        val_s = split(names["train"], eval_tf, take=val_samples)
    test_s = split(names["test"], eval_tf)
    shape = test_s.first_shape()
    print(
        f"dataset 'hf': streaming {cols.path!r} ({n} classes); the teacher cache, data.classes, "
        f"data.train_samples and data.val_fraction do not apply to streams",
        file=sys.stderr,
    )
    image = len(cols.inputs) == 1 and len(shape) == 3
    return DataSplits(
        name="hf",
        train=train_s,
        val=val_s,
        test=test_s,
        input_shape=shape,
        num_classes=n,
        class_names=classes,
        input_range=range_of(eval_tf) if image else None,
    )


def _check_stream_options(splits, names, num_classes, classes, val_samples) -> None:
    if num_classes is None and classes is None:
        raise ConfigError(
            "dataset 'hf' with streaming: true cannot scan the labels up front; set "
            "data.options.num_classes (integer labels) or class_names (string labels)"
        )
    if names["test"] is None:
        raise ConfigError(
            f"dataset 'hf' with streaming: true: no test split in {list(splits.keys())}; a "
            f"stream cannot be split at random: give test_split (or files for a test split)"
        )
    if names["val"] is None and not val_samples:
        raise ConfigError(
            "dataset 'hf' with streaming: true: give val_split (a validation split of the files) "
            "or val_samples: N (the first N training samples, held out of training)"
        )
