"""What every on-disk source shares: `LazyData` (train and test `LazySplit`s read on
access), label coding (`LabelCoder`: strings and stray ids to 0..C-1, announced), the
transform pipelines, the carved test split and the checks of a loader's options.

The user's own data on disk is read by these loaders, each returning `LazyData`, so the
data may be far larger than memory. Decoding is Pillow's, file formats are Arrow's through
Hugging Face `datasets` (CSV, Parquet, JSON/JSONL, Arrow, `save_to_disk` folders,
`imagefolder`): distill writes no decoder of its own.

| `data.name`    | what it reads                                                    | module   |
| -------------- | ---------------------------------------------------------------- | -------- |
| `image_folder` | `train/<class>/*.png` (the ImageNet layout), optional `test` dir | `images` |
| `image_csv`    | a CSV of image paths and labels                                  | `images` |
| `table`        | CSV / Parquet / JSON rows: named feature columns and a label     | `tables` |
| `hf`           | any local Hugging Face dataset, map-style or `streaming: true`   | `hub`    |

Labels that are strings are mapped to 0..C-1 in sorted order, and the mapping is printed
and kept (`DataSplits.class_names`). Without a test set, one is carved out of train,
stratified, with `test_fraction`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from distill.core.errors import ConfigError, DataError
from distill.data.records import LazySplit
from distill.data.transforms import Pipeline, build_transforms


@dataclass
class LazyData:
    """A dataset on disk before the validation split: what the loaders of this module return."""

    name: str
    train: LazySplit  # with the train transforms
    test: LazySplit  # with the eval transforms
    eval_transform: Pipeline  # what validation samples (carved from train) go through
    num_classes: int
    class_names: list[str] | None = None
    input_range: tuple[float, float] | None = None
    val: LazySplit | None = None  # a validation split the files carry (else carved from train)
    # what was fitted to the training rows and applied to every split (table feature
    # scaling): recorded with the run as preprocessing.json
    preprocessing: dict | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.test.input_shape is None:
            self.test[0]  # reads one sample to fix the shape
        return tuple(self.test.input_shape)


def is_image(feature: Any) -> bool:
    return type(feature).__name__ == "Image"


def is_text(feature: Any) -> bool:
    return getattr(feature, "dtype", None) in ("string", "large_string")


def text_pipeline(options: dict[str, Any], name: str) -> Pipeline:
    """The one step text inputs take: `tokenizer` (a local Hugging Face tokenizer folder)
    and `max_length` (default 128) turn each string into (2, max_length) token ids and
    attention mask (what `hf_model`'s sequence classifiers read)."""
    from distill.data.transforms import Tokenize

    path = options.pop("tokenizer", None)
    max_length = options.pop("max_length", 128)
    if path is None:
        raise ConfigError(
            f"dataset {name!r}: the input column holds text; give tokenizer: <a folder with a "
            f"Hugging Face tokenizer> (and max_length) to turn it into token ids"
        )
    if (
        options.get("transforms")
        or options.get("train_transforms")
        or options.get("eval_transforms")
    ):
        raise ConfigError(f"dataset {name!r}: text inputs take a tokenizer, not image transforms")
    return Pipeline([("tokenize", Tokenize(path, max_length))])


# ------------------------------------------------------------------------ shared pieces
def split_transforms(options: dict[str, Any], name: str) -> tuple[Pipeline, Pipeline]:
    """(train, eval) pipelines: `transforms` applies to both; `train_transforms` and
    `eval_transforms` override it for one side."""
    both = options.pop("transforms", None)
    train = options.pop("train_transforms", both)
    evaluation = options.pop("eval_transforms", both)
    return (
        build_transforms(train, f"dataset {name!r}: train_transforms"),
        build_transforms(evaluation, f"dataset {name!r}: eval_transforms"),
    )


def _as_int(v: Any) -> Any:
    """An integral float label (1.0, as a CSV reader may give) as an int; anything else as is."""
    if isinstance(v, float | np.floating) and float(v).is_integer():
        return int(v)
    return int(v) if isinstance(v, np.integer) else v


def _announce(where: str, what: str, names: list[str]) -> None:
    shown = ", ".join(f"{n}={i}" for i, n in enumerate(names[:8]))
    print(
        f"{where}: {what}; mapped {len(names)} classes to 0..{len(names) - 1} in sorted order "
        f"({shown}{' ...' if len(names) > 8 else ''})",
        file=sys.stderr,
    )


class LabelCoder:
    """Labels as class ids 0..C-1, fitted on the training split and applied to the others.

    Integers 0..C-1 with every class used are kept as they are (`names` may name them).
    Class names (strings), and integers that are not 0..C-1 (1..C, or ids with gaps), are
    mapped to their index in the sorted distinct training values (or in the `names` given),
    announced on stderr; the names are kept (as strings) so every split maps the same way."""

    def __init__(
        self,
        values: list[Any],
        where: str,
        names: list[str] | None = None,
        *,
        by_value: bool = False,
    ):
        values = self._clean(values, where)
        ints = bool(values) and all(isinstance(v, int) for v in values)
        distinct = sorted(set(values))
        if ints and not by_value and distinct[0] < 0:
            first = next(i for i, v in enumerate(values) if v < 0)
            raise DataError(
                f"{where}: sample {first} has label {values[first]}, and a negative label is no "
                f"class (labels run {distinct[0]}..{distinct[-1]}); fix or drop those rows, or "
                f"list every label value in class order with label_values: [...] (a table "
                f"option) to map each to its index"
            )
        # by_value: `names` are the label values in class order, and every label is looked
        # up among them (the user's own mapping); otherwise integer 0..C-1 stay as they are
        self.keyed = by_value or not (
            ints and (names is not None or distinct == list(range(len(distinct))))
        )
        self.names = [str(n) for n in names] if names is not None else None
        if self.keyed and self.names is None:
            self.names = [str(v) for v in distinct]
            what = "labels are strings"
            if ints:
                what = f"integer labels {distinct[0]}..{distinct[-1]} are not 0..C-1"
            _announce(where, what, self.names)
        self.ids = self.encode(values, where) if values else np.zeros(0, np.int64)

    @staticmethod
    def _clean(values: list[Any], where: str) -> list[Any]:
        values = [_as_int(v) for v in values]
        if any(v is None for v in values):
            first = next(i for i, v in enumerate(values) if v is None)
            raise DataError(
                f"{where}: the label of sample {first} is missing; give every sample a label"
            )
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in values) or all(
            isinstance(v, str) for v in values
        )
        if not ok:
            kinds = sorted({type(v).__name__ for v in values})
            raise DataError(
                f"{where}: labels must be integers or class names (strings), got {kinds}; "
                f"convert the label column"
            )
        return values

    def encode(self, values: list[Any], where: str) -> np.ndarray:
        values = self._clean(values, where)
        if not self.keyed:
            if any(isinstance(v, str) for v in values):
                raise DataError(
                    f"{where}: labels are strings, but the training labels are integers; use "
                    f"the same kind of label in every split"
                )
            return np.asarray(values, dtype=np.int64)
        index = {n: i for i, n in enumerate(self.names)}
        keys = [str(v) for v in values]
        unknown = sorted(set(keys) - set(index))
        if unknown:
            raise DataError(
                f"{where}: label(s) {unknown[:5]} are not among the classes "
                f"{self.names[:8]}; every label must be one of them (a test class must be a "
                f"training class, and with label_values: [...] given, a listed value)"
            )
        return np.asarray([index[k] for k in keys], dtype=np.int64)


def encode_labels(
    values: list[Any], where: str, names: list[str] | None = None
) -> tuple[np.ndarray, list[str] | None]:
    """The training labels as class ids, and the class names (see LabelCoder)."""
    coder = LabelCoder(values, where, names)
    return coder.ids, coder.names


def _carve_test(
    name: str, train: LazySplit, fraction: float, seed: int, eval_transform: Pipeline
) -> tuple[LazySplit, LazySplit]:
    from distill.data.core import split_indices

    if not 0 < fraction < 1:
        raise ConfigError(
            f"dataset {name!r}: no test set given, so test_fraction of train is held out; "
            f"it must be in (0, 1), got {fraction}"
        )
    kept, held = split_indices(train._targets, fraction, seed)
    return train.subset(kept), train.subset(held).with_transform(eval_transform)


def _num_classes(name: str, *targets: np.ndarray, names: list[str] | None = None) -> int:
    if names is not None:
        return len(names)
    return int(max(int(t.max()) for t in targets if len(t))) + 1


def finish_data(
    name: str,
    source_train: Any,
    source_test: Any | None,
    train_tf: Pipeline,
    eval_tf: Pipeline,
    *,
    names: list[str] | None,
    test_fraction: float,
    input_range: tuple[float, float] | None = None,
) -> LazyData:
    train = LazySplit(
        source_train, np.arange(len(source_train.targets)), source_train.targets, train_tf
    )
    if source_test is None:
        train, test = _carve_test(name, train, test_fraction, 12345, eval_tf)
    else:
        test = LazySplit(
            source_test, np.arange(len(source_test.targets)), source_test.targets, eval_tf
        )
    for split, part in (("train", train), ("test", test)):
        if len(part) == 0:
            raise DataError(
                f"dataset {name!r}: the {split} split is empty; it needs samples of every class"
            )
    n = _num_classes(name, train._targets, test._targets, names=names)
    if n < 2:
        raise DataError(
            f"dataset {name!r}: the training labels hold one class ({names or [0]}); a "
            f"classifier needs two or more: check the label column or the folders"
        )
    data = LazyData(name, train, test, eval_tf, n, names, input_range)
    _ = data.input_shape  # read one sample now: a bad file or transform fails at validate time
    return data


def range_of(pipeline: Pipeline) -> tuple[float, float] | None:
    """[0, 1] for images left unnormalised (adversarial evaluation clips to it)."""
    return (
        None
        if any(n == "normalize" or n.startswith("user:") for n, _ in pipeline.steps)
        else (0.0, 1.0)
    )


def no_other_options(name: str, options: dict[str, Any], known: Any = None) -> None:
    """Refuse options the loader does not take, suggesting the nearest it does (`known`: the
    loader function, whose keyword arguments are the valid names)."""
    if not options:
        return
    import inspect

    from distill.core.errors import did_you_mean

    valid = ["transforms", "train_transforms", "eval_transforms"]
    if known is not None:
        valid += [p for p in inspect.signature(known).parameters if p != "options"]
    bad = sorted(options)
    raise ConfigError(
        f"dataset {name!r}: unknown option {bad[0]!r}{did_you_mean(bad[0], valid)}"
        + (f" (and {bad[1:]})" if len(bad) > 1 else "")
        + f"; it takes {sorted(valid)}"
    )
