"""Tables on disk (CSV / TSV / Parquet / JSON, read as memory-mapped Arrow through Hugging
Face `datasets`): `data.name: table`, and the column and label helpers the other sources
share."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from distill.core.errors import ConfigError, DataError
from distill.data.lazy import (
    LabelCoder,
    LazyData,
    finish_data,
    is_image,
    is_text,
    no_other_options,
    split_transforms,
    text_pipeline,
)
from distill.data.scaling import apply_scale


class TableRows:
    """Rows of a Hugging Face (Arrow) dataset: the input columns as one float32 vector, or
    the single input column as stored (an image column decodes to a Pillow image)."""

    def __init__(
        self,
        name: str,
        table: Any,
        columns: list[str],
        targets: np.ndarray,
        origin: str,
        mode: str = "RGB",
    ):
        self.name, self.table, self.columns, self.origin = name, table, columns, origin
        self.mode = mode
        self.targets = np.asarray(targets, dtype=np.int64)
        # (offset, divisor) per feature, fitted on the training rows (`scale_features`)
        self.scaling: tuple[np.ndarray, np.ndarray] | None = None
        self.image = len(columns) == 1 and is_image(table.features[columns[0]])
        self.text = len(columns) == 1 and is_text(table.features[columns[0]])

    def read(self, i: int) -> Any:
        row = self.table[int(i)]
        if self.text:
            value = row[self.columns[0]]
            if not isinstance(value, str):
                raise DataError(f"{self.describe(i)}: the text is {value!r}, not a string")
            return value
        if self.image:
            image = row[self.columns[0]]
            return image.convert(self.mode) if hasattr(image, "convert") else image
        values = [np.asarray(row[c], dtype=np.float32).reshape(-1) for c in self.columns]
        return self._scaled(np.concatenate(values) if len(values) > 1 else values[0])

    def _scaled(self, x: np.ndarray) -> np.ndarray:
        if self.scaling is None:
            return x
        offset, divisor = self.scaling
        return ((x - offset) / divisor).astype(np.float32)

    def read_many(self, positions: np.ndarray) -> np.ndarray | None:
        """Rows `positions` as one (n, features) float32 array, read column by column from
        Arrow (many times faster than row by row); None for image and text inputs."""
        if self.image or self.text:
            return None
        arrow = self._arrow()
        if arrow is not None:  # scalar numeric columns: one Arrow gather, no Python rows
            import pyarrow as pa

            taken = arrow.take(pa.array(positions, type=pa.int64()))
            parts = [
                taken.column(c).to_numpy(zero_copy_only=False).astype(np.float32)[:, None]
                for c in self.columns
            ]
            return self._scaled(np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0])
        if getattr(self, "_numpy", None) is None:
            self._numpy = self.table.select_columns(self.columns).with_format("numpy")
        cols = self._numpy[positions.tolist()]
        parts = [
            np.asarray(cols[c], dtype=np.float32).reshape(len(positions), -1) for c in self.columns
        ]
        return self._scaled(np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0])

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers get the dataset (re-opened from its memory-mapped files by
        # datasets' own pickling), never a copy of the gathered Arrow table
        return {k: v for k, v in self.__dict__.items() if k not in ("_arrow_table", "_numpy")}

    def _arrow(self) -> Any:
        """The table's Arrow columns when they are all scalar numbers and the dataset has no
        index mapping (a select()ed view): then rows are gathered straight from Arrow."""
        if getattr(self, "_arrow_table", False) is not False:
            return self._arrow_table
        self._arrow_table = None
        if getattr(self.table, "_indices", None) is None and hasattr(self.table, "data"):
            import pyarrow as pa

            table = self.table.data.table.select(self.columns)
            numeric = all(
                pa.types.is_integer(f.type) or pa.types.is_floating(f.type) for f in table.schema
            )
            if numeric:
                self._arrow_table = table
        return self._arrow_table

    def describe(self, i: int) -> str:
        return f"row {int(i)} of {self.origin}"

    def fingerprint(self) -> str:
        return hashlib.sha256(
            f"{getattr(self.table, '_fingerprint', id(self.table))}:{self.columns}".encode()
        ).hexdigest()


_FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".json": "json",
    ".jsonl": "json",
    ".arrow": "arrow",
    ".txt": "text",
}


def hf_cache_dir() -> str:
    from distill.data.raw import cache_dir

    return str(cache_dir() / "hf")


def require_datasets(what: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            f"{what} reads files through Hugging Face datasets, which is not installed; "
            f"pip install 'distill[data]' (or: pip install datasets)"
        ) from None
    datasets.disable_progress_bars()
    return datasets


def file_format(path: str, given: str | None, name: str) -> str:
    if given:
        return given
    fmt = _FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"dataset {name!r}: cannot tell the format of {path!r} from its extension; set "
            f"format: csv | parquet | json | arrow"
        )
    return fmt


def read_table(
    path: str, *, fmt: str | None, name: str, streaming: bool = False, delimiter: str | None = None
) -> Any:
    """One file (or a glob) as a Hugging Face Dataset (memory-mapped Arrow) or IterableDataset."""
    datasets = require_datasets(f"dataset {name!r}")
    if not any(ch in path for ch in "*?[") and not Path(path).expanduser().exists():
        raise DataError(f"dataset {name!r}: file {path!r} does not exist; check the path")
    fmt = file_format(path, fmt, name)
    if delimiter is None and fmt == "csv" and path.endswith(".tsv"):
        delimiter = "\t"
    kwargs = {"delimiter": delimiter} if delimiter is not None else {}
    try:
        with _quiet_readers():  # a failed read is reported below, once, with the fix
            return datasets.load_dataset(
                fmt,
                data_files=str(Path(path).expanduser()),
                split="train",
                cache_dir=hf_cache_dir(),
                streaming=streaming,
                **kwargs,
            )
    except (ValueError, OSError, TypeError) as e:
        if "corresponds to no data" in str(e):
            raise DataError(f"dataset {name!r}: {path!r} holds no rows; check the file") from None
        raise DataError(f"dataset {name!r}: cannot read {path!r} as {fmt}: {e}") from None
    except datasets.exceptions.DatasetGenerationError as e:
        # datasets wraps the parser's own error (pandas' "Expected 3 fields in line 5",
        # a decoding error): that one names the row, so it is the one to show
        raise DataError(
            f"dataset {name!r}: cannot read {path!r} as {fmt}: {_root_cause(e)}. "
            + _FORMAT_ADVICE.get(fmt, "Check the file, or set format: to what it holds")
        ) from None


_FORMAT_ADVICE = {
    "csv": "A CSV needs UTF-8 text with a header line and as many fields in every row as in "
    "the header; fix or remove that row (or set delimiter: when it is not a comma)",
    "json": "JSON lines need one object per line, every line valid JSON",
    "parquet": "Check the file is a whole Parquet file (rewrite it with pyarrow or pandas)",
}


@contextlib.contextmanager
def _quiet_readers() -> Iterator[None]:
    """Hold back the `datasets` file readers' own error log while a file is read: their
    failure comes back as an exception, which `read_table` reports with the fix."""
    logger = logging.getLogger("datasets")
    was = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(was)


def _root_cause(error: BaseException) -> str:
    """The innermost error of the `raise ... from` chain (its type and first line): the
    parser's own words."""
    while error.__cause__ is not None:
        error = error.__cause__
    line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {line}"


def images_from_structs(table: Any) -> Any:
    """`table` with every column of `{bytes, path}` structs read as images: the layout
    pyarrow and pandas write for encoded images (PNG, JPEG) when the file carries no
    Hugging Face metadata saying so. Other columns are left as they are."""
    import datasets

    features = getattr(table, "features", None) or {}
    for column, feature in features.items():
        if isinstance(feature, dict) and set(feature) == {"bytes", "path"}:
            kind = getattr(feature["bytes"], "dtype", None)
            if kind in ("binary", "large_binary"):
                table = table.cast_column(column, datasets.Image())
    return table


def check_column(table: Any, column: str, name: str, role: str, origin: str) -> None:
    columns = list(table.column_names or [])
    if column not in columns:
        from distill.core.errors import did_you_mean

        raise DataError(
            f"dataset {name!r}: {origin} has no {role} column {column!r}{did_you_mean(column, columns)}; "
            f"its columns are {columns[:12]}"
        )


LABEL_COLUMNS = ("label", "labels", "target", "targets", "class", "y")


def find_label_column(table: Any, given: str | None, name: str, origin: str) -> str:
    """The label column: the one given, else the first of LABEL_COLUMNS the table has."""
    if given is not None:
        check_column(table, given, name, "label", origin)
        return given
    found = next((c for c in LABEL_COLUMNS if c in (table.column_names or [])), None)
    if found is None:
        raise DataError(
            f"dataset {name!r}: {origin} has no column named like a label {list(LABEL_COLUMNS)}; "
            f"say which one with label: <column> (its columns are {list(table.column_names)[:12]})"
        )
    return found


def labels_of(
    table: Any,
    column: str,
    where: str,
    coder: LabelCoder | None = None,
    names=None,
    by_value: bool = False,
) -> tuple[np.ndarray, LabelCoder | None]:
    """Class ids of a split's label column: a ClassLabel as it is, else through `coder`
    (fitted here on the training split when None; `names` are the user's class names, or
    with `by_value` the label values in class order)."""
    feature = table.features[column]
    if type(feature).__name__ == "ClassLabel":
        ids = np.asarray(table[column], dtype=np.int64)
        return ids, coder or _ClassLabels(names or list(feature.names))
    if coder is None:
        coder = LabelCoder(list(table[column]), where, names, by_value=by_value)
        return coder.ids, coder
    return coder.encode(list(table[column]), where), coder


class _ClassLabels:
    """A Hugging Face ClassLabel's ids and names (other splits use their own ClassLabel)."""

    def __init__(self, names: list[str]):
        self.names = names

    def encode(self, values: list[Any], where: str) -> np.ndarray:
        return LabelCoder(values, where, self.names).ids


def feature_columns(
    table: Any, label: str, features: list[str] | str | None, name: str, origin: str
) -> list[str]:
    if isinstance(features, str):
        features = [features]
    if features is None:
        features = [c for c in table.column_names if c != label]
    for c in features:
        check_column(table, c, name, "feature", origin)
        dtype = getattr(table.features[c], "dtype", "list")
        if dtype in ("string", "large_string"):
            raise DataError(
                f"dataset {name!r}: feature column {c!r} of {origin} holds strings; distill reads "
                f"numeric features: encode it (e.g. one-hot) or leave it out with features: "
                f"[...]; for text classification give text: {c} and tokenizer: <folder>"
            )
    if not features:
        raise DataError(
            f"dataset {name!r}: {origin} has no feature columns besides the label {label!r}"
        )
    listed = [c for c in features if _is_list_feature(table.features[c])]
    if listed:
        print(
            f"dataset {name!r}: column(s) {listed[:5]} of {origin} hold lists; each list's "
            f"values become that many features, side by side with the other columns (name "
            f"the columns to use with features: [...] to leave them out)",
            file=sys.stderr,
        )
    return features


def _is_list_feature(feature: Any) -> bool:
    return type(feature).__name__ in ("Sequence", "List", "LargeList") or isinstance(feature, list)


def check_finite_columns(table: Any, columns: list[str], name: str, origin: str) -> None:
    """Refuse a missing or non-finite value in any feature column, naming the column and
    the first row. Read once per column from Arrow when the table is opened: a run that
    never reaches that row (a short run, a dropped last batch) must not train on it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arrow = getattr(getattr(table, "data", None), "table", None)
    if arrow is None:  # a streamed table: its rows are checked as they are read
        return
    for column in columns:
        values = arrow.column(column)
        while pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
            if values.null_count:
                break
            values = pc.list_flatten(values)
        if values.null_count:
            row = _first_true(pc.is_null(arrow.column(column)))
            raise DataError(
                f"dataset {name!r}: {origin} has a missing value (empty, NA or NaN) in column "
                f"{column!r} at row {row}; fill or drop that row (distill trains on numbers only)"
            )
        if pa.types.is_floating(values.type):
            bad = pc.invert(pc.is_finite(values))
            if pc.any(bad).as_py():
                row = _first_bad_row(arrow.column(column))
                raise DataError(
                    f"dataset {name!r}: {origin} has a NaN or infinite value in column "
                    f"{column!r} at row {row}; fill or drop that row"
                )


def _first_true(mask: Any) -> int:
    return int(np.flatnonzero(mask.to_numpy(zero_copy_only=False))[0])


def _first_bad_row(column: Any) -> int:
    """The first row of a (possibly list) column holding a NaN or infinity."""
    for i, value in enumerate(column.to_pylist()):
        if not np.isfinite(np.asarray(value, dtype=np.float64)).all():
            return i
    return -1


def _train_labels(table: Any, label: str, train: str, label_values: Any) -> tuple[Any, Any]:
    """The training file's labels coded to 0..C-1 (by `label_values` when given)."""
    name = "table"
    if label_values is not None and (not isinstance(label_values, list) or not label_values):
        raise ConfigError(
            f"dataset {name!r}: label_values must be a list of the label values in class "
            f"order, e.g. label_values: [-1, 1], got {label_values!r}"
        )
    where = f"dataset {name!r}: {train!r}"
    return labels_of(table, label, where, names=label_values, by_value=label_values is not None)


def _test_rows(
    test: str, fmt: str | None, delimiter: str | None, label: str, cols: list[str],
    numeric: bool, coder: Any,
) -> TableRows:  # fmt: skip
    """The test file's rows: the training file's columns, labels coded the same way."""
    name = "table"
    t_table = images_from_structs(read_table(test, fmt=fmt, name=name, delimiter=delimiter))
    for c in [label, *cols]:
        check_column(t_table, c, name, "label" if c == label else "feature", repr(test))
    if numeric:
        check_finite_columns(t_table, cols, name, repr(test))
    t_y, _ = labels_of(t_table, label, f"dataset {name!r}: {test!r}", coder)
    return TableRows(name, t_table, cols, t_y, repr(test))


def load_table(
    *,
    train: str,
    test: str | None = None,
    label: str | None = None,
    features: list[str] | None = None,
    text: str | None = None,
    format: str | None = None,
    delimiter: str | None = None,
    test_fraction: float = 0.2,
    label_values: list[Any] | None = None,
    scale: str = "none",
    **options: Any,
) -> LazyData:
    """Rows of a CSV, Parquet or JSON(L) file: the `features` columns (default: every column
    but the label) as one float32 vector, or one `text` column tokenized with `tokenizer`
    (a local Hugging Face tokenizer folder; `max_length`), and the `label` column.

    `label_values` lists the label values in class order (`[-1, 1]`, `[cat, dog]`): each label
    becomes its index there, and a label not listed is an error. Without it, integer labels
    0..C-1 stay as they are, other labels map to their sorted order (said on stderr), and a
    negative integer label is refused.

    `scale` ('none', 'standard' or 'minmax'; 'auto': standard for numeric features, nothing
    for a text or image column) scales numeric features with statistics
    fitted on the training rows (those outside the test split) and applied to every split;
    the fitted numbers are recorded with the run (preprocessing.json). With 'none', features
    far from unit scale (raw 0-255 pixels, money amounts) are warned about."""
    name = "table"
    text_options = {k: options.pop(k) for k in ("tokenizer", "max_length") if k in options}
    train_tf, eval_tf = split_transforms(options, name)
    no_other_options(name, options, load_table)
    table = images_from_structs(read_table(train, fmt=format, name=name, delimiter=delimiter))
    label = find_label_column(table, label, name, repr(train))
    if text is not None:  # one text column, tokenized on access
        check_column(table, text, name, "text", repr(train))
        cols = [text]
        train_tf = eval_tf = text_pipeline(text_options, name)
    else:
        if text_options:
            raise ConfigError(
                f"dataset {name!r}: tokenizer and max_length apply to a text column; name it "
                f"with text: <column>"
            )
        cols = feature_columns(table, label, features, name, repr(train))
        check_finite_columns(table, cols, name, repr(train))
    y, coder = _train_labels(table, label, train, label_values)
    names = coder.names
    src_train = TableRows(name, table, cols, y, repr(train))
    src_test = None
    if test is not None:
        src_test = _test_rows(test, format, delimiter, label, cols, text is None, coder)
    data = finish_data(
        name, src_train, src_test, train_tf, eval_tf, names=names, test_fraction=test_fraction
    )
    numeric = text is None and not src_train.image
    apply_scale(data, [src_train, src_test], cols, scale, name, numeric, "text" if text else "")
    return data
