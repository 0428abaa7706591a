"""Sample data on disk in every layout distill reads: `distill sample-data DIR`.

scikit-learn's bundled handwritten digits (1,797 8x8 images, no download) written as

- `digits_png/{train,test}/<class name>/<id>.png`: an ImageNet-style class folder (every
  fifth image is in test);
- `digits_png/list.csv`: the same images listed as `file,digit` (paths relative to it);
- `digits.parquet`: 64 pixel columns `px0..px63` (0..16) and an integer `digit`;
- `digits_split/{train,test}.parquet`: the same rows split as the image folder is;
- `digits.csv`: the same pixels with the class *name* as label (`name`);
- `digits_hf/`: a Hugging Face `save_to_disk` folder with an `image` column, a `label`
  ClassLabel and train / validation / test splits.

The example configs in `examples/data/` read these, so every data source can be tried
offline in seconds.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def write_digits(out: str | Path, *, hf: bool = True) -> Path:
    """Write the digits under `out` in each layout above; returns `out`. Existing sample
    files are rewritten; nothing else in `out` is touched."""
    from PIL import Image
    from sklearn.datasets import load_digits

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    d = load_digits()
    pixels = (d.images / 16 * 255).round().astype(np.uint8)
    folder = out / "digits_png"
    rows = []
    for i, (img, label) in enumerate(zip(pixels, d.target)):
        split = "test" if i % 5 == 0 else "train"
        rel = Path(split) / CLASS_NAMES[label] / f"{i:04d}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / rel)
        rows.append((str(rel), CLASS_NAMES[label]))
    with open(folder / "list.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "digit"])
        w.writerows(rows)
    _write_tables(out, d.data, d.target)
    if hf:
        _write_hf(out / "digits_hf", pixels, d.target)
    return out


def _write_tables(out: Path, data: np.ndarray, target: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {f"px{j}": data[:, j].astype(np.float32) for j in range(data.shape[1])}
    table = pa.table({**cols, "digit": target.astype(np.int64)})
    pq.write_table(table, out / "digits.parquet")
    (out / "digits_split").mkdir(exist_ok=True)
    test = np.arange(len(target)) % 5 == 0  # the same test images as digits_png/test
    pq.write_table(table.filter(pa.array(~test)), out / "digits_split" / "train.parquet")
    pq.write_table(table.filter(pa.array(test)), out / "digits_split" / "test.parquet")
    with open(out / "digits.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*cols, "name"])
        for i in range(len(target)):
            w.writerow([*(int(v) for v in data[i]), CLASS_NAMES[target[i]]])


def _write_hf(path: Path, pixels: np.ndarray, target: np.ndarray) -> None:
    from datasets import ClassLabel, Dataset, DatasetDict, Features, disable_progress_bars
    from datasets import Image as HFImage
    from PIL import Image

    disable_progress_bars()
    feats = Features({"image": HFImage(), "label": ClassLabel(names=CLASS_NAMES)})
    ds = Dataset.from_dict(
        {"image": [Image.fromarray(p) for p in pixels], "label": target.tolist()}, features=feats
    )
    first = ds.train_test_split(test_size=0.2, seed=0)
    second = first["train"].train_test_split(test_size=0.1, seed=0)
    splits = {"train": second["train"], "validation": second["test"], "test": first["test"]}
    DatasetDict(splits).save_to_disk(str(path))
