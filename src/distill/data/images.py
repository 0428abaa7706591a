"""Images on disk, decoded by Pillow on access: `data.name: image_folder` (one sub-folder
per class) and `image_csv` (a CSV of paths and labels)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from distill.core.errors import ConfigError, DataError
from distill.data.lazy import (
    LabelCoder,
    LazyData,
    finish_data,
    no_other_options,
    range_of,
    split_transforms,
)
from distill.data.tables import check_column, find_label_column, labels_of, read_table
from distill.data.transforms import Pipeline

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


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
    train_tf, eval_tf = split_transforms(options, name)
    no_other_options(name, options, load_image_folder)
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
    return finish_data(
        name,
        src_train,
        src_test,
        train_tf,
        eval_tf,
        names=names,
        test_fraction=test_fraction,
        input_range=range_of(eval_tf),
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
    train_tf, eval_tf = split_transforms(options, name)
    no_other_options(name, options, load_image_csv)
    _check_mode(mode, name)

    def source(csv: str, coder: LabelCoder | None) -> tuple[ImageFiles, LabelCoder]:
        table = read_table(csv, fmt="csv", name=name, delimiter=delimiter)
        check_column(table, path_column, name, "path", repr(csv))
        label = find_label_column(table, label_column, name, repr(csv))
        base = Path(root).expanduser() if root else Path(csv).expanduser().parent
        paths = [str(p if Path(p).is_absolute() else base / p) for p in table[path_column]]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise DataError(
                f"dataset {name!r}: {len(missing)} image(s) listed in {csv!r} do not exist (first: "
                f"{missing[0]!r}); paths are relative to {str(base)!r} (set root: to change that)"
            )
        y, coder = labels_of(table, label, f"dataset {name!r}: {csv!r}", coder)
        return ImageFiles(name, paths, y, mode), coder

    src_train, coder = source(train, None)
    names = coder.names
    _check_sizes(name, src_train.paths, train_tf)
    src_test = source(test, coder)[0] if test is not None else None
    return finish_data(
        name,
        src_train,
        src_test,
        train_tf,
        eval_tf,
        names=names,
        test_fraction=test_fraction,
        input_range=range_of(eval_tf),
    )
