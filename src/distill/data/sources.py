"""The dataset table (`DATASETS`) and `load_dataset`, which loads and splits a named one.

Built-in loaders (digits, MNIST-1D, synthetic clusters) live here; every other entry names
its loader as `module:attr` (files on disk, Hugging Face datasets, and the domains' data:
text for language models, sentences, digit scenes, graphs), imported on first use, so the
data layer never imports a domain. Arrays, checks and splits are `distill.data.raw`.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from distill.core.errors import ConfigError, DataError
from distill.core.registry import lookup, resolve
from distill.data.core import DataSplits, split_indices
from distill.data.raw import (
    RawData,
    cache_dir,
    cached_arrays,
    check_raw,
    keep_task,
    make_splits,
    map_labels,
    select_classes,
    with_views,
)


def as_raw(obj: object, name: str) -> Any:
    """Accept a RawData, a mapping with x, y, x_test, y_test, or a mapping with torch
    datasets under 'train' and 'test' (and optionally 'val', 'num_classes') from a user loader."""
    if isinstance(obj, RawData):
        return obj
    datasets_given = isinstance(obj, dict) and {"train", "test"} <= set(obj)
    if datasets_given and all(
        isinstance(obj[k], torch.utils.data.Dataset) for k in ("train", "test")
    ):
        from distill.data.user import from_torch

        return from_torch(name, obj)
    if isinstance(obj, dict) and {"x", "y", "x_test", "y_test"} <= set(obj):
        x = np.asarray(obj["x"])
        shape = tuple(obj.get("input_shape", x.shape[1:]))
        return RawData(
            name,
            (x, np.asarray(obj["y"])),
            (np.asarray(obj["x_test"]), np.asarray(obj["y_test"])),
            shape,
            num_classes=obj.get("num_classes"),
            input_range=tuple(obj["input_range"]) if obj.get("input_range") else None,
        )
    raise DataError(
        f"dataset {name!r} returned {type(obj).__name__}; a dataset loader must return "
        f"distill.data.sources.RawData, a dict with keys x, y, x_test, y_test (and "
        f"optionally num_classes, input_shape), or a dict of torch datasets under train, test "
        f"(and optionally val)"
    )


def load_digits(*, test_fraction: float = 0.25) -> RawData:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images), scaled to [0, 1]."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x, y = bunch.data.astype(np.float32) / 16.0, bunch.target.astype(np.int64)
    train_idx, test_idx = split_indices(y, test_fraction, seed=12345)  # fixed test set
    train, test = (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])
    return RawData("digits", train, test, (1, 8, 8), input_range=(0.0, 1.0))


def load_digits_2d(*, test_fraction: float = 0.25) -> RawData:
    """A real 2-D point cloud: the digits projected on their first two principal
    components (fitted on the training split) and standardised; labels are the digits.
    Ten overlapping clusters, for diffusion models on low-dimensional data."""
    raw = load_digits(test_fraction=test_fraction)
    (x_tr, y_tr), (x_te, y_te) = raw.train, raw.test
    mean = x_tr.mean(0)
    _, _, vt = np.linalg.svd(x_tr - mean, full_matrices=False)
    proj_tr, proj_te = (x_tr - mean) @ vt[:2].T, (x_te - mean) @ vt[:2].T
    mu, sd = proj_tr.mean(0), proj_tr.std(0)
    norm = lambda p: ((p - mu) / sd).astype(np.float32)  # noqa: E731
    return RawData("digits_2d", (norm(proj_tr), y_tr), (norm(proj_te), y_te), (2,))


def _make_mnist1d(num_samples: int, seed: int) -> dict[str, np.ndarray]:
    """Generate MNIST-1D locally; restore the global RNGs that `make_dataset` reseeds."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test")}


def load_mnist1d(*, num_samples: int = 5000, seed: int = 42) -> RawData:
    """MNIST-1D (Greydanus 2020): 40-sample 1-D signals of 10 digit templates, 80/20 train/test.

    Generated with `mnist1d.data.make_dataset` and cached as .npz under `cache_dir()`,
    keyed by its arguments; the default (5,000 samples, seed 42) matches the paper's set.
    """
    key = hashlib.sha256(json.dumps([num_samples, seed, "v1"]).encode()).hexdigest()[:12]
    path = cache_dir() / f"mnist1d-{num_samples}-{seed}-{key}.npz"
    data = cached_arrays(path, lambda: _make_mnist1d(num_samples, seed))
    length = data["x"].shape[-1]
    return RawData("mnist1d", (data["x"], data["y"]), (data["x_test"], data["y_test"]), (1, length))


def load_synthetic(
    *,
    num_samples: int = 600,
    num_features: int = 16,
    num_classes: int = 4,
    noise: float = 1.0,
    seed: int = 0,
) -> RawData:
    """Gaussian class clusters in `num_features` dims: fast and deterministic, for tests."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 2.0, size=(num_classes, num_features))
    y = rng.integers(0, num_classes, size=num_samples)
    x = (centers[y] + noise * rng.normal(size=(num_samples, num_features))).astype(np.float32)
    n_test = num_samples // 5
    return RawData("synthetic", (x[n_test:], y[n_test:]), (x[:n_test], y[:n_test]), (num_features,))


class Loader:
    """A table entry whose loader is named by `module:attr` and imported when first called
    (`options_of` gives it to `distill datasets`, which lists its keyword-only options)."""

    def __init__(self, target: str, doc: str):
        self.target, self.__doc__ = target, doc

    def __call__(self, **options: Any) -> Any:
        return resolve(self.target)(**options)

    def options_of(self) -> Callable:
        return resolve(self.target)


DATASETS: dict[str, Callable[..., RawData | DataSplits]] = {
    "hf": Loader(
        "distill.data.hub:load_hf",
        "A local Hugging Face dataset, map-style or streamed (see `distill.data.hub`).",
    ),
    "image_folder": Loader(
        "distill.data.images:load_image_folder",
        "Images in one sub-folder per class, read lazily (see `distill.data.images`).",
    ),
    "image_csv": Loader(
        "distill.data.images:load_image_csv",
        "A CSV of image paths and labels, read lazily (see `distill.data.images`).",
    ),
    "table": Loader(
        "distill.data.tables:load_table",
        "Rows of a CSV / Parquet / JSON file: feature columns and a label (`distill.data.tables`).",
    ),
    "digits": load_digits,
    "digits_2d": load_digits_2d,
    "mnist1d": load_mnist1d,
    "synthetic": load_synthetic,
    "graph": Loader(
        "distill.paradigms.graph:load_graph",
        "A kNN graph over a dataset's samples, nodes as two-hop trees (distill.paradigms.graph).",
    ),
    "scenes": Loader(
        "distill.dense.scenes:load_scenes",
        "Digit scenes with boxes or masks, for detection and segmentation (distill.dense).",
    ),
    "text": Loader(
        "distill.llm.text:text_dataset",
        "Token blocks of a text corpus for language models (see `distill.llm.text`).",
    ),
    "sentences": Loader(
        "distill.llm.embed:sentences_dataset",
        "Sentences for embedding distillation (see `distill.llm.embed`).",
    ),
    "jsonl": Loader(
        "distill.app.blackbox:jsonl_dataset",
        "(prompt, response) JSONL, e.g. from `distill generate` (see `distill.app.blackbox`).",
    ),
    "hf_text": Loader(
        "distill.llm.hf_text:load_hf_text",
        "Local text, prompt/completion or chat datasets for LMs (see `distill.llm.hf_text`).",
    ),
}


def load_dataset(
    name: str,
    *,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    train_samples: int | None = None,
    unlabeled: bool = False,
    classes: list[int] | None = None,
    task_classes: list[int] | None = None,
    label_map: list[int] | None = None,
    view: str | None = None,
    paired: str | None = None,
    **options: object,
) -> DataSplits:
    """A named dataset (options go to its loader), split by `make_splits`.

    `classes` keeps only those classes, relabelled 0..k-1 in the order given (to train a
    specialist teacher for multi-teacher distillation); `task_classes` keeps those classes'
    samples with their labels and the full class count (one task of a class-incremental
    sequence). `view` turns the inputs into another
    modality and `paired` keeps a second modality beside them (see `distill.data.views`).
    """
    from distill.data.disk_splits import SplitOptions, split_prepared
    from distill.data.lazy import LazyData

    raw = _call_loader(name, options)
    if not isinstance(raw, DataSplits | LazyData):
        raw = as_raw(raw, name)
    if isinstance(raw, LazyData | DataSplits):  # index lists: split without loading
        split = SplitOptions(
            val_fraction, split_seed, train_samples, unlabeled, classes, task_classes,
            label_map, view, paired,
        )  # fmt: skip
        return split_prepared(raw, name, split)
    raw, num_classes = _relabelled(check_raw(raw, name), name, classes, task_classes, label_map)
    if view is not None or paired is not None:
        raw = with_views(raw, view, paired)
    return make_splits(
        raw,
        val_fraction=val_fraction,
        split_seed=split_seed,
        train_samples=train_samples,
        unlabeled=unlabeled,
        num_classes=num_classes,
    )


def _call_loader(name: str, options: dict[str, Any]) -> Any:
    loader = lookup("dataset", name, DATASETS)
    try:
        return loader(**options)
    except TypeError as e:
        raise ConfigError(
            f"dataset {name!r}: {e}; its loader is called with the entries of data.options as "
            f"keyword arguments (options: {{n: 500}} calls it with n=500): set them there"
        ) from None


def _relabelled(
    raw: RawData, name: str, classes: Any, task_classes: Any, label_map: Any
) -> tuple[RawData, int | None]:
    """`raw` with its class subset, task or label map applied, and the class count to keep
    (None: counted from the labels)."""
    if ":" in name and raw.num_classes is None:  # the user's loader: say what was inferred
        n = int(max(raw.train[1].max(), raw.test[1].max())) + 1
        print(
            f"dataset {name!r}: {n} classes (labels 0..{n - 1}), inferred from its labels",
            file=sys.stderr,
        )
    num_classes = raw.num_classes
    if classes is not None:  # (a new label space: 0..k-1)
        raw, num_classes = select_classes(raw, classes), None
    if task_classes is not None:
        num_classes = num_classes or int(max(raw.train[1].max(), raw.test[1].max())) + 1
        raw = keep_task(raw, task_classes)
    if label_map is not None:
        raw, num_classes = map_labels(raw, label_map), None
    return raw, num_classes
