"""The user's own data on disk: image folders, image lists, tables and Hugging Face datasets.

Every loader here returns `LazyData`: a train and a test `LazySplit` (see
`distill.data.records`) that read samples on access, so the data may be far larger than
memory. Decoding is Pillow's, file formats are Arrow's through Hugging Face `datasets`
(CSV, Parquet, JSON/JSONL, Arrow, `save_to_disk` folders, `imagefolder`): distill writes
no decoder of its own.

| `data.name`    | what it reads                                                    |
| -------------- | ---------------------------------------------------------------- |
| `image_folder` | `train/<class>/*.png` (the ImageNet layout), optional `test` dir |
| `image_csv`    | a CSV of image paths and labels                                  |
| `table`        | CSV / Parquet / JSON rows: named feature columns and a label     |
| `hf`           | any local Hugging Face dataset, map-style or `streaming: true`   |

Labels that are strings are mapped to 0..C-1 in sorted order, and the mapping is printed
and kept (`DataSplits.class_names`). Without a test set, one is carved out of train,
stratified, with `test_fraction`.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distill.data.records import LazySplit
from distill.data.transforms import Pipeline, build_transforms
from distill.errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


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

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.test.input_shape is None:
            self.test[0]  # reads one sample to fix the shape
        return tuple(self.test.input_shape)


# ------------------------------------------------------------------------ sources
class ImageFiles:
    """Image files decoded with Pillow into `mode` ('RGB', 'L', ...)."""

    always_finite = True  # 8-bit pixels

    def __init__(self, name: str, paths: list[str], targets: np.ndarray, mode: str = "RGB"):
        self.name, self.paths, self.mode = name, paths, mode
        self.targets = np.asarray(targets, dtype=np.int64)

    def read(self, i: int) -> Any:
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            img.load()  # decode now, so a truncated file fails here and names itself
            return img if img.mode == self.mode else img.convert(self.mode)

    def describe(self, i: int) -> str:
        return f"image {self.paths[i]!r}"

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.mode.encode())
        for p in self.paths:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        h.update(self.targets.tobytes())
        return h.hexdigest()


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
        self.image = len(columns) == 1 and _is_image(table.features[columns[0]])
        self.text = len(columns) == 1 and _is_text(table.features[columns[0]])

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
        return np.concatenate(values) if len(values) > 1 else values[0]

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
            return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        if getattr(self, "_numpy", None) is None:
            self._numpy = self.table.select_columns(self.columns).with_format("numpy")
        cols = self._numpy[positions.tolist()]
        parts = [
            np.asarray(cols[c], dtype=np.float32).reshape(len(positions), -1) for c in self.columns
        ]
        return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

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


def _is_image(feature: Any) -> bool:
    return type(feature).__name__ == "Image"


def _is_text(feature: Any) -> bool:
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
def _transforms(options: dict[str, Any], name: str) -> tuple[Pipeline, Pipeline]:
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

    def __init__(self, values: list[Any], where: str, names: list[str] | None = None):
        values = self._clean(values, where)
        ints = bool(values) and all(isinstance(v, int) for v in values)
        distinct = sorted(set(values))
        self.keyed = not (ints and (names is not None or distinct == list(range(len(distinct)))))
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
                f"{where}: label(s) {unknown[:5]} do not appear in the training labels "
                f"{self.names[:8]}; every test class must be a training class"
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


def _finish(
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


# ------------------------------------------------------------------------ image folders
PIL_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I", "F", "I;16")


def _check_mode(mode: str, name: str) -> None:
    if mode not in PIL_MODES:
        raise ConfigError(
            f"dataset {name!r}: mode {mode!r} is not a Pillow mode; use RGB (colour), L (grey) "
            f"or one of {list(PIL_MODES)}"
        )


def _image_files(folder: Path, extensions: tuple[str, ...]) -> list[str]:
    """Image files below `folder` (any depth; hidden names skipped), sorted by path. Walked
    with os.scandir on strings: a 200k-file tree lists in well under a second."""
    found, stack = [], [str(folder)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    stack.append(entry.path)
                elif os.path.splitext(entry.name)[1].lower() in extensions and entry.is_file():
                    found.append(entry.path)
    return sorted(found)


def _scan_folder(root: Path, name: str, extensions: tuple[str, ...], classes: list[str] | None):
    if not root.is_dir():
        raise DataError(
            f"dataset {name!r}: {str(root)!r} is not a folder; give a folder with one sub-folder "
            f"of images per class (train/cat/1.png, train/dog/2.png, ...)"
        )
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise DataError(
            f"dataset {name!r}: {str(root)!r} has no class sub-folders; put each class's images "
            f"in a sub-folder named after the class"
        )
    if classes is not None:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DataError(
                f"dataset {name!r}: {str(root)!r} has class folder(s) {extra[:5]} that the train "
                f"folder lacks ({classes[:8]}); the test classes must be training classes"
            )
    splits = {"train", "test", "val", "valid", "validation", "dev"}
    if set(found) <= splits and all(any(d.is_dir() for d in (root / c).iterdir()) for c in found):
        raise DataError(
            f"dataset {name!r}: {str(root)!r} holds split folders {found}, not class folders; "
            f"point train: (and test:) at the split folders, e.g. train: {str(root / found[0])!r}"
        )
    names = classes if classes is not None else found
    paths, labels = [], []
    for c in found:
        files = _image_files(root / c, extensions)
        if not files:
            raise DataError(
                f"dataset {name!r}: class folder {str(root / c)!r} holds no images (looked for "
                f"{', '.join(extensions)}); add images or remove the folder"
            )
        paths += files
        labels += [names.index(c)] * len(files)
    return paths, np.asarray(labels, dtype=np.int64), names


def _check_sizes(name: str, paths: list[str], pipeline: Pipeline, sample: int = 64) -> None:
    """Mixed image sizes with no step that sizes them: say so now, from the files' headers
    (up to `sample` of them, spread over the set), rather than at the first odd batch."""
    if pipeline.sizes_inputs or not paths:
        return
    from PIL import Image

    step = max(1, len(paths) // sample)
    sizes: dict[tuple[int, int], str] = {}
    for p in paths[::step][:sample]:
        try:
            with Image.open(p) as img:
                sizes.setdefault(img.size, p)
        except Exception as e:
            raise DataError(
                f"cannot read image {p!r}: {type(e).__name__}: {e}; replace or remove it"
            ) from None
    if len(sizes) > 1:
        (s1, p1), (s2, p2) = list(sizes.items())[:2]
        raise DataError(
            f"dataset {name!r}: images differ in size ({p1!r} is {s1[0]}x{s1[1]}, {p2!r} is "
            f"{s2[0]}x{s2[1]}) and no transform resizes them; add transforms: "
            f"[{{resize: [H, W]}}] (or a crop)"
        )


def load_image_folder(
    *,
    train: str,
    test: str | None = None,
    test_fraction: float = 0.2,
    mode: str = "RGB",
    extensions: list[str] | None = None,
    **options: Any,
) -> LazyData:
    """Images in one sub-folder per class (`train/<class>/<file>`), class ids in sorted
    folder-name order; `test` is a folder with the same layout (or a subset of the classes).

    Options: `transforms`, `train_transforms`, `eval_transforms` (see distill.data.transforms),
    `mode` (Pillow mode: RGB, L, RGBA), `extensions`."""
    name = "image_folder"
    train_tf, eval_tf = _transforms(options, name)
    _no_other_options(name, options, load_image_folder)
    _check_mode(mode, name)
    ext = tuple(
        e.lower() if e.startswith(".") else f".{e.lower()}"
        for e in (extensions or IMAGE_EXTENSIONS)
    )
    paths, labels, names = _scan_folder(Path(train).expanduser(), name, ext, None)
    _check_sizes(name, paths, train_tf)
    src_train = ImageFiles(name, paths, labels, mode)
    src_test = None
    if test is not None:
        t_paths, t_labels, _ = _scan_folder(Path(test).expanduser(), name, ext, names)
        _check_sizes(name, t_paths, eval_tf)
        src_test = ImageFiles(name, t_paths, t_labels, mode)
    return _finish(
        name,
        src_train,
        src_test,
        train_tf,
        eval_tf,
        names=names,
        test_fraction=test_fraction,
        input_range=_range_of(eval_tf),
    )


def _range_of(pipeline: Pipeline) -> tuple[float, float] | None:
    """[0, 1] for images left unnormalised (adversarial evaluation clips to it)."""
    return (
        None
        if any(n == "normalize" or n.startswith("user:") for n, _ in pipeline.steps)
        else (0.0, 1.0)
    )


def _no_other_options(name: str, options: dict[str, Any], known: Any = None) -> None:
    """Refuse options the loader does not take, suggesting the nearest it does (`known`: the
    loader function, whose keyword arguments are the valid names)."""
    if not options:
        return
    import inspect

    from distill.errors import did_you_mean

    valid = ["transforms", "train_transforms", "eval_transforms"]
    if known is not None:
        valid += [p for p in inspect.signature(known).parameters if p != "options"]
    bad = sorted(options)
    raise ConfigError(
        f"dataset {name!r}: unknown option {bad[0]!r}{did_you_mean(bad[0], valid)}"
        + (f" (and {bad[1:]})" if len(bad) > 1 else "")
        + f"; it takes {sorted(valid)}"
    )


# ------------------------------------------------------------------------ tables (via datasets)
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


def _require_datasets(what: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            f"{what} reads files through Hugging Face datasets, which is not installed; "
            f"pip install 'distill[data]' (or: pip install datasets)"
        ) from None
    datasets.disable_progress_bars()
    return datasets


def _file_format(path: str, given: str | None, name: str) -> str:
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
    datasets = _require_datasets(f"dataset {name!r}")
    if not any(ch in path for ch in "*?[") and not Path(path).expanduser().exists():
        raise DataError(f"dataset {name!r}: file {path!r} does not exist; check the path")
    fmt = _file_format(path, fmt, name)
    if delimiter is None and fmt == "csv" and path.endswith(".tsv"):
        delimiter = "\t"
    kwargs = {"delimiter": delimiter} if delimiter is not None else {}
    try:
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


def _column(table: Any, column: str, name: str, role: str, origin: str) -> None:
    columns = list(table.column_names or [])
    if column not in columns:
        from distill.errors import did_you_mean

        raise DataError(
            f"dataset {name!r}: {origin} has no {role} column {column!r}{did_you_mean(column, columns)}; "
            f"its columns are {columns[:12]}"
        )


LABEL_COLUMNS = ("label", "labels", "target", "targets", "class", "y")


def find_label_column(table: Any, given: str | None, name: str, origin: str) -> str:
    """The label column: the one given, else the first of LABEL_COLUMNS the table has."""
    if given is not None:
        _column(table, given, name, "label", origin)
        return given
    found = next((c for c in LABEL_COLUMNS if c in (table.column_names or [])), None)
    if found is None:
        raise DataError(
            f"dataset {name!r}: {origin} has no column named like a label {list(LABEL_COLUMNS)}; "
            f"say which one with label: <column> (its columns are {list(table.column_names)[:12]})"
        )
    return found


def _labels_of(
    table: Any, column: str, where: str, coder: LabelCoder | None = None, names=None
) -> tuple[np.ndarray, LabelCoder | None]:
    """Class ids of a split's label column: a ClassLabel as it is, else through `coder`
    (fitted here on the training split when None; `names` are the user's class names)."""
    feature = table.features[column]
    if type(feature).__name__ == "ClassLabel":
        ids = np.asarray(table[column], dtype=np.int64)
        return ids, coder or _ClassLabels(names or list(feature.names))
    if coder is None:
        coder = LabelCoder(list(table[column]), where, names)
        return coder.ids, coder
    return coder.encode(list(table[column]), where), coder


class _ClassLabels:
    """A Hugging Face ClassLabel's ids and names (other splits use their own ClassLabel)."""

    def __init__(self, names: list[str]):
        self.names = names

    def encode(self, values: list[Any], where: str) -> np.ndarray:
        return LabelCoder(values, where, self.names).ids


def _feature_columns(
    table: Any, label: str, features: list[str] | str | None, name: str, origin: str
) -> list[str]:
    if isinstance(features, str):
        features = [features]
    if features is None:
        features = [c for c in table.column_names if c != label]
    for c in features:
        _column(table, c, name, "feature", origin)
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
    return features


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
    **options: Any,
) -> LazyData:
    """Rows of a CSV, Parquet or JSON(L) file: the `features` columns (default: every column
    but the label) as one float32 vector, or one `text` column tokenized with `tokenizer`
    (a local Hugging Face tokenizer folder; `max_length`), and the `label` column."""
    name = "table"
    text_options = {k: options.pop(k) for k in ("tokenizer", "max_length") if k in options}
    train_tf, eval_tf = _transforms(options, name)
    _no_other_options(name, options, load_table)
    table = read_table(train, fmt=format, name=name, delimiter=delimiter)
    label = find_label_column(table, label, name, repr(train))
    if text is not None:  # one text column, tokenized on access
        _column(table, text, name, "text", repr(train))
        cols = [text]
        train_tf = eval_tf = text_pipeline(text_options, name)
    else:
        if text_options:
            raise ConfigError(
                f"dataset {name!r}: tokenizer and max_length apply to a text column; name it "
                f"with text: <column>"
            )
        cols = _feature_columns(table, label, features, name, repr(train))
    y, coder = _labels_of(table, label, f"dataset {name!r}: {train!r}")
    names = coder.names
    src_train = TableRows(name, table, cols, y, repr(train))
    src_test = None
    if test is not None:
        t_table = read_table(test, fmt=format, name=name, delimiter=delimiter)
        for c in [label, *cols]:
            _column(t_table, c, name, "label" if c == label else "feature", repr(test))
        t_y, _ = _labels_of(t_table, label, f"dataset {name!r}: {test!r}", coder)
        src_test = TableRows(name, t_table, cols, t_y, repr(test))
    return _finish(
        name, src_train, src_test, train_tf, eval_tf, names=names, test_fraction=test_fraction
    )


def load_image_csv(
    *,
    train: str,
    test: str | None = None,
    path_column: str = "path",
    label_column: str | None = None,
    root: str | None = None,
    mode: str = "RGB",
    delimiter: str | None = None,
    test_fraction: float = 0.2,
    **options: Any,
) -> LazyData:
    """A CSV listing image files and their labels; relative paths are taken from `root`
    (default: the CSV's own folder)."""
    name = "image_csv"
    train_tf, eval_tf = _transforms(options, name)
    _no_other_options(name, options, load_image_csv)
    _check_mode(mode, name)

    def source(csv: str, coder: LabelCoder | None) -> tuple[ImageFiles, LabelCoder]:
        table = read_table(csv, fmt="csv", name=name, delimiter=delimiter)
        _column(table, path_column, name, "path", repr(csv))
        label = find_label_column(table, label_column, name, repr(csv))
        base = Path(root).expanduser() if root else Path(csv).expanduser().parent
        paths = [str(p if Path(p).is_absolute() else base / p) for p in table[path_column]]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise DataError(
                f"dataset {name!r}: {len(missing)} image(s) listed in {csv!r} do not exist (first: "
                f"{missing[0]!r}); paths are relative to {str(base)!r} (set root: to change that)"
            )
        y, coder = _labels_of(table, label, f"dataset {name!r}: {csv!r}", coder)
        return ImageFiles(name, paths, y, mode), coder

    src_train, coder = source(train, None)
    names = coder.names
    _check_sizes(name, src_train.paths, train_tf)
    src_test = source(test, coder)[0] if test is not None else None
    return _finish(
        name,
        src_train,
        src_test,
        train_tf,
        eval_tf,
        names=names,
        test_fraction=test_fraction,
        input_range=_range_of(eval_tf),
    )
