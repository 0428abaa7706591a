"""Scenes of real digits on a canvas: a detection and segmentation testbed that works offline.

Each scene places 1 to `max_objects` digit images from scikit-learn's digits (8x8, scaled to
`min_size`..`max_size` pixels with bilinear interpolation) at random positions on a
`canvas` x `canvas` image, with little overlap (IoU <= 0.1 between boxes), plus faint noise.
Training and validation scenes use digits of the digits' training split, test scenes digits
of its test split, so no digit image is seen in both.

Targets:
- detection: (max_objects, 5) rows [class, x1, y1, x2, y2] in pixels (tight boxes around the
  digit's ink), padded with class -1;
- segmentation: (canvas, canvas) labels, 0 background and 1 + digit for its ink pixels.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
import torch.nn.functional as F

from distill.core.errors import ConfigError
from distill.data.core import ArrayDataset, DataSplits, split_indices
from distill.data.raw import cache_dir, cached_arrays
from distill.dense.detection import box_iou

INK = 0.25  # a pixel belongs to a digit (box and mask) above this intensity


def compose(
    images: np.ndarray,
    labels: np.ndarray,
    n: int,
    *,
    canvas: int,
    max_objects: int,
    min_size: int,
    max_size: int,
    noise: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scenes (n, 1, canvas, canvas), boxes (n, max_objects, 5), masks (n, canvas, canvas))."""
    rng = np.random.default_rng(seed)
    scenes = np.zeros((n, 1, canvas, canvas), np.float32)
    boxes = np.full((n, max_objects, 5), -1.0, np.float32)
    masks = np.zeros((n, canvas, canvas), np.int64)
    src = torch.as_tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8)
    for i in range(n):
        placed: list[np.ndarray] = []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            for _attempt in range(20):
                size = int(rng.integers(min_size, max_size + 1))
                x0, y0 = (int(v) for v in rng.integers(0, canvas - size + 1, size=2))
                k = int(rng.integers(len(images)))
                digit = F.interpolate(src[k : k + 1], size=(size, size), mode="bilinear")[0, 0]
                digit = digit.clamp(0, 1).numpy()
                ys, xs = np.nonzero(digit > INK)
                if len(xs) == 0:
                    continue
                box = np.array(
                    [x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1],
                    np.float32,
                )
                if (
                    placed
                    and box_iou(torch.as_tensor(box)[None], torch.as_tensor(np.stack(placed))).max()
                    > 0.1
                ):
                    continue
                region = scenes[i, 0, y0 : y0 + size, x0 : x0 + size]
                np.maximum(region, digit, out=region)
                masks[i, y0 : y0 + size, x0 : x0 + size][digit > INK] = labels[k] + 1
                boxes[i, len(placed)] = [labels[k], *box]
                placed.append(box)
                break
        scenes[i, 0] += noise * rng.random((canvas, canvas), dtype=np.float32)
    return np.clip(scenes, 0, 1), boxes, masks


def load_scenes(
    *,
    task: str = "detection",
    canvas: int = 64,
    max_objects: int = 4,
    min_size: int = 12,
    max_size: int = 24,
    noise: float = 0.05,
    num_train: int = 2000,
    num_val: int = 300,
    num_test: int = 500,
    seed: int = 0,
) -> DataSplits:
    """Detection or segmentation splits of digit scenes (see the module docstring)."""
    from sklearn.datasets import load_digits

    if task not in ("detection", "segmentation"):
        raise ConfigError(f"scenes task must be 'detection' or 'segmentation', got {task!r}")
    if not 8 <= min_size <= max_size <= canvas:
        raise ConfigError(
            f"scenes: need 8 <= min_size <= max_size <= canvas, got {min_size}, {max_size}, "
            f"{canvas}"
        )
    opts = dict(
        canvas=canvas, max_objects=max_objects, min_size=min_size, max_size=max_size, noise=noise
    )
    sizes = {"train": num_train, "val": num_val, "test": num_test}
    key = hashlib.sha256(json.dumps([opts, sizes, seed, "v1"], sort_keys=True).encode())
    path = cache_dir() / f"scenes-{key.hexdigest()[:16]}.npz"

    def make() -> dict[str, np.ndarray]:
        bunch = load_digits()
        x, y = bunch.data.astype(np.float32) / 16.0, bunch.target.astype(np.int64)
        train_idx, test_idx = split_indices(y, 0.25, seed=12345)  # the digits' own test split
        source = {"train": train_idx, "val": train_idx, "test": test_idx}
        arrays = {}
        for i, (k, n) in enumerate(sizes.items()):
            sx, sb, sm = compose(x[source[k]], y[source[k]], n, seed=seed + i, **opts)
            arrays.update({f"{k}_x": sx, f"{k}_boxes": sb, f"{k}_masks": sm})
        return arrays

    arrays = cached_arrays(path, make, compressed=True)
    parts = {k: (arrays[f"{k}_x"], arrays[f"{k}_boxes"], arrays[f"{k}_masks"]) for k in sizes}

    def dataset(part: tuple[np.ndarray, np.ndarray, np.ndarray]) -> ArrayDataset:
        scenes, boxes, masks = part
        target = boxes if task == "detection" else masks
        return ArrayDataset(torch.as_tensor(scenes), torch.as_tensor(target))

    return DataSplits(
        name=f"scenes-{task}",
        train=dataset(parts["train"]),
        val=dataset(parts["val"]),
        test=dataset(parts["test"]),
        input_shape=(1, canvas, canvas),
        num_classes=10 if task == "detection" else 11,
    )


__all__ = ["compose", "load_scenes"]
