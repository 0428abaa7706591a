"""The user's own data on disk: image folders, image CSVs, tables, Hugging Face datasets,
streams, DataLoaders and torch datasets, through the one loop.

Everything is written inside the test's temporary directory from scikit-learn's bundled
digits (8x8 images, 1,797 samples): a PNG class folder, a CSV of image paths, CSV and
Parquet tables, and a `save_to_disk` Hugging Face dataset. No downloads.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("datasets")
pytest.importorskip("PIL")

from helpers import REPO, stand_in_vision
from PIL import Image  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from distill.app.run import run_experiment  # noqa: E402
from distill.core.config import parse_config  # noqa: E402
from distill.core.errors import ConfigError, DataError  # noqa: E402
from distill.data import load_dataset  # noqa: E402
from distill.data.loading import stream_batches, stream_loader  # noqa: E402

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    """The digits as files (`distill sample-data`): digits_png/{train,test}/<name>/<i>.png,
    digits_png/list.csv, digits.parquet, digits.csv, digits_hf/ (save_to_disk)."""
    from distill.data.samples import write_digits

    root = write_digits(tmp_path_factory.mktemp("digits"))
    d = load_digits()
    pixels = (d.images / 16 * 255).round().astype(np.uint8)
    return root, d, pixels


def _first(data, n=8):
    return next(stream_batches(stream_loader(data, batch_size=n, workers=0, pin_memory=False)))


# ---------------------------------------------------------------- sources read what was written
def test_image_folder_reads_classes_labels_and_pixels(disk):
    root, d, pixels = disk
    s = load_dataset(
        "image_folder",
        train=str(root / "digits_png/train"),
        test=str(root / "digits_png/test"),
        mode="L",
    )
    assert s.class_names == sorted(NAMES) and s.num_classes == 10
    assert s.input_shape == (1, 8, 8) and s.input_range == (0.0, 1.0)
    assert len(s.test) == len(range(0, 1797, 5)) and len(s.train) + len(s.val) == 1797 - len(s.test)
    for split in (
        s.train,
        s.val,
        s.test,
    ):  # each sample's label is its folder's, its pixels the file's
        for i in (0, len(split) // 2, len(split) - 1):
            x, y = split[i]
            path = split.source.paths[split.positions[i]]
            k = int(path.rsplit("/", 1)[1][:4])
            assert s.class_names[y] == NAMES[d.target[k]]
            torch.testing.assert_close(x[0], torch.from_numpy(pixels[k] / 255.0).float())
    assert not hasattr(s.train, "inputs")  # nothing is held in memory but labels and indices


def test_tables_from_parquet_and_csv_hold_the_features_and_map_string_labels(disk, capsys):
    root, d, _ = disk
    s = load_dataset("table", train=str(root / "digits.parquet"), label="digit")
    assert s.input_shape == (64,) and s.num_classes == 10 and s.class_names is None
    x, y = s.test[3]
    k = int(s.test.positions[3])
    torch.testing.assert_close(x, torch.from_numpy(d.data[k].astype(np.float32)))
    assert y == d.target[k]
    many = s.train.__getitems__([0, 5, 9])  # the columnar path the loop reads batches with
    for (xa, ya), i in zip(many, [0, 5, 9]):
        xb, yb = s.train[i]
        assert torch.equal(xa, xb) and ya == yb
    c = load_dataset("table", train=str(root / "digits.csv"), label="name")
    assert c.class_names == sorted(NAMES)
    assert "labels are strings; mapped 10 classes" in capsys.readouterr().err
    x, y = c.train[0]
    k = int(c.train.positions[0])
    assert c.class_names[y] == NAMES[d.target[k]] and x.shape == (64,)


def test_image_csv_resolves_paths_from_the_csv_folder(disk):
    root, d, pixels = disk
    s = load_dataset(
        "image_csv",
        train=str(root / "digits_png/list.csv"),
        path_column="file",
        label_column="digit",
        mode="L",
    )
    assert s.class_names == sorted(NAMES) and len(s.train) + len(s.val) + len(s.test) == 1797
    x, y = s.test[0]
    k = int(s.test.positions[0])
    torch.testing.assert_close(x[0], torch.from_numpy(pixels[k] / 255.0).float())
    assert s.class_names[y] == NAMES[d.target[k]]


@pytest.fixture(scope="module")
def saved(disk):
    """A save_to_disk DatasetDict with an Image column and a ClassLabel, train/validation/test."""
    return disk[0] / "digits_hf"


def test_hf_save_to_disk_uses_its_splits_and_class_names(saved):
    s = load_dataset("hf", path=str(saved), mode="L", val_split="validation")
    assert s.class_names == NAMES and s.input_shape == (1, 8, 8)
    assert (len(s.train), len(s.val), len(s.test)) == (1293, 144, 360)
    assert float(s.train[0][0].min()) >= 0.0 and float(s.train[0][0].max()) <= 1.0


def test_hf_reads_folders_of_files_and_the_imagefolder_builder(disk):
    root, *_ = disk
    for opts in (
        {"path": str(root / "digits_png")},  # the format inferred from the files
        {"path": "imagefolder", "data_dir": str(root / "digits_png")},
    ):
        s = load_dataset("hf", **opts, mode="L")
        assert s.class_names == sorted(NAMES) and len(s.test) == 360 and s.input_shape == (1, 8, 8)
    t = load_dataset("hf", path=str(root / "digits_split"), label="digit")
    assert t.input_shape == (64,) and len(t.test) == 360


def test_streamed_split_reads_the_same_rows_as_map_style(disk):
    root, d, _ = disk
    opts = {"path": str(root / "digits.parquet"), "label": "digit", "test_split": "train"}
    streamed = load_dataset("hf", **opts, streaming=True, val_samples=100, num_classes=10)
    b = _first(streamed.val, n=16)
    torch.testing.assert_close(b["input"], torch.from_numpy(d.data[:16].astype(np.float32)))
    assert b["target"].tolist() == d.target[:16].tolist()
    train = _first(streamed.train, n=4)  # the first val_samples rows are held out of training
    torch.testing.assert_close(train["input"], torch.from_numpy(d.data[100:104].astype(np.float32)))


# ---------------------------------------------------------------- transforms are seeded per sample
def test_views_are_a_pure_function_of_seed_epoch_and_sample(disk):
    root, *_ = disk
    s = load_dataset(
        "image_folder",
        train=str(root / "digits_png/train"),
        mode="L",
        train_transforms=[{"random_resized_crop": {"size": 8, "scale": [0.3, 1.0]}}, "hflip"],
    )
    train = s.train
    assert train.random and not s.val.random
    train.set_epoch(3, 7)
    a = torch.stack([train[i][0] for i in range(6)])
    b = torch.stack([train[i][0] for i in reversed(range(6))]).flip(0)  # order does not matter
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    loader = torch.utils.data.DataLoader(train, batch_size=3, num_workers=2)
    torch.testing.assert_close(torch.cat([x for x, _ in loader])[:6], a, rtol=0, atol=0)
    train.set_epoch(4, 7)
    assert not torch.equal(torch.stack([train[i][0] for i in range(6)]), a)
    train.set_epoch(3, 8)
    assert not torch.equal(torch.stack([train[i][0] for i in range(6)]), a)


def test_named_transforms_do_what_they_say():
    from distill.data.transforms import build_transforms

    img = Image.fromarray(np.arange(12 * 20, dtype=np.uint8).reshape(12, 20))
    gen = torch.Generator().manual_seed(0)
    assert build_transforms([{"resize": 6}], "t")(img, gen).shape == (1, 6, 10)  # shorter side
    assert build_transforms([{"resize": [5, 7]}], "t")(img, gen).shape == (1, 5, 7)
    crop = build_transforms([{"center_crop": 4}], "t")(img, gen)
    torch.testing.assert_close(crop[0], torch.from_numpy(np.asarray(img)[4:8, 8:12] / 255).float())
    flipped = build_transforms([{"hflip": {"p": 1.0}}], "t")(img, gen)
    torch.testing.assert_close(flipped[0], torch.from_numpy(np.asarray(img)[:, ::-1] / 255).float())
    rgb = Image.fromarray(np.full((2, 2, 3), 255, dtype=np.uint8))
    norm = build_transforms([{"normalize": {"mean": "imagenet"}}], "t")(rgb, gen)
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(norm[:, 0, 0], expected)
    rrc = build_transforms([{"random_resized_crop": {"size": [3, 5]}}], "t")(img, gen)
    assert rrc.shape == (1, 3, 5)
    with pytest.raises(ConfigError, match="did you mean 'hflip'"):
        build_transforms(["hflp"], "t")
    with pytest.raises(ConfigError, match="unknown argument"):
        build_transforms([{"resize": {"sise": 3}}], "t")


# ---------------------------------------------------------------- end to end from YAML
def _yaml(tmp_path, name, data, **extra):
    cfg = {
        "name": name,
        "run_dir": str(tmp_path / name),
        "scheme": extra.pop("scheme", "supervised"),
        "data": data,
        "student": extra.pop("student", {"name": "convnet", "args": {"channels": [8, 16]}}),
        "train": {
            "epochs": 3,
            "batch_size": 64,
            "progress": False,
            "optimizer": {"name": "adamw", "lr": 0.01},
            **extra.pop("train", {}),
        },
        **extra,
    }
    return parse_config(cfg)


def _train_folder(tmp_path, disk, workers):
    root, *_ = disk
    data = {
        "name": "image_folder",
        "options": {
            "train": str(root / "digits_png/train"),
            "test": str(root / "digits_png/test"),
            "mode": "L",
            "train_transforms": [{"random_crop": {"size": 8, "padding": 1}}],
        },
    }
    return run_experiment(_yaml(tmp_path, f"w{workers}", data, train={"workers": workers}))


def test_image_folder_trains_from_yaml_and_worker_count_does_not_change_the_run(tmp_path, disk):
    """Views are seeded per sample, so 0 and 2 DataLoader workers train the same weights."""
    a = _train_folder(tmp_path / "a", disk, 0)
    b = _train_folder(tmp_path / "b", disk, 2)
    assert a["complete"] and a["test_acc"] > 0.7  # chance is 0.1
    assert a["test_acc"] == b["test_acc"] and a["best_val_acc"] == b["best_val_acc"]


def test_streamed_parquet_trains_with_max_steps_and_is_tested(tmp_path, disk):
    root, *_ = disk
    data = {
        "name": "hf",
        "options": {
            "path": str(root / "digits.parquet"),
            "label": "digit",
            "streaming": True,
            "val_samples": 150,
            "num_classes": 10,
            "test_split": "train",
            "shuffle_buffer": 256,
        },
    }
    result = run_experiment(
        _yaml(tmp_path, "s", data, student={"name": "mlp", "args": {}}, train={"max_steps": 40})
    )
    assert result["complete"] and result["steps"] == 40 and result["test_acc"] > 0.7


def test_augmentation_exact_cache_matches_the_live_teacher(tmp_path, disk):
    """Teacher outputs cached for every epoch's random views equal the live teacher's on
    the views the student sees, and the student trains to identical weights."""
    from distill.app.build import build

    root, *_ = disk
    data = {
        "name": "image_folder",
        "options": {
            "train": str(root / "digits_png/train"),
            "mode": "L",
            "train_transforms": [{"random_crop": {"size": 8, "padding": 2}}, "hflip"],
        },
    }
    teacher = run_experiment(_yaml(tmp_path, "teacher", data, train={"epochs": 2}))
    assert teacher["complete"]

    def kd(name, mode):
        return _yaml(
            tmp_path,
            name,
            data,
            scheme="offline",
            teacher={
                "name": "convnet",
                "args": {"channels": [8, 16]},
                "weights": str(tmp_path / "teacher"),
            },
            objective={"task_weight": 0.5, "terms": [{"loss": "kd", "weight": 0.5}]},
            train={"epochs": 2, "cache": {"mode": mode, "dir": str(tmp_path / "cache")}},
        )

    built = build(kd("probe", "on"))
    cache = built.scheme.teacher_cache.ensure()
    assert "every epoch" in built.cache_plan.reason
    train = built.data.train
    for epoch in (0, 1):
        train.set_epoch(epoch, built.cfg.train.seed)
        index = torch.arange(0, 200, 7)
        x = torch.stack([train[int(i)][0] for i in index])
        with torch.no_grad():
            live = built.teacher.eval()(x)
        cached = cache.lookup(index, torch.full_like(index, epoch)).logits
        assert (cached - live).abs().max() <= 1e-5
    cached_run = run_experiment(kd("cached", "on"))
    live_run = run_experiment(kd("live", "off"))
    assert "every epoch" in cached_run["teacher_cache"] and "off" in live_run["teacher_cache"]
    from safetensors.torch import load_file

    a = load_file(tmp_path / "cached/checkpoints/best.safetensors")
    b = load_file(tmp_path / "live/checkpoints/best.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_resume_mid_epoch_on_disk_data_is_exact(tmp_path, disk):
    root, *_ = disk
    data = {
        "name": "image_folder",
        "options": {
            "train": str(root / "digits_png/train"),
            "mode": "L",
            "train_transforms": ["hflip"],
        },
    }
    full = run_experiment(_yaml(tmp_path, "full", data, train={"epochs": 2}))
    part = run_experiment(_yaml(tmp_path, "part", data, train={"epochs": 2, "max_steps": 27}))
    assert not part["complete"]
    back = run_experiment(_yaml(tmp_path, "part", data, train={"epochs": 2}), resume=True)
    assert back["complete"] and back["test_acc"] == full["test_acc"]
    from safetensors.torch import load_file

    a = load_file(tmp_path / "full/checkpoints/best.safetensors")
    b = load_file(tmp_path / "part/checkpoints/best.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- Python: DataLoaders and HF datasets
def _scheme_and_settings(input_shape, epochs=2, **train):
    from distill.core.settings import TrainSettings
    from distill.models import build_model
    from distill.schemes.supervised import Supervised

    torch.manual_seed(0)
    scheme = Supervised(build_model("mlp", input_shape, 10))
    return scheme, TrainSettings(epochs=epochs, batch_size=32, progress=False, **train)


def test_trainer_takes_a_user_dataloader_as_it_is(tmp_path, disk):
    """Its sampler (here: only the even samples), its collate function (dict batches) and
    its batch size are the user's."""
    from distill.loop.trainer import Trainer

    _, d, _ = disk
    x = torch.from_numpy(d.data.astype(np.float32))
    y = torch.from_numpy(d.target)
    data = torch.utils.data.TensorDataset(x, y)
    seen = []

    def collate(items):
        xs, ys = zip(*items)
        return {"pixel_values": torch.stack(xs), "labels": torch.stack(ys)}

    class EvenSampler(torch.utils.data.Sampler):
        def __iter__(self):
            return iter(range(0, len(data), 2))

        def __len__(self):
            return (len(data) + 1) // 2

    loader = torch.utils.data.DataLoader(
        data, batch_size=50, sampler=EvenSampler(), collate_fn=collate
    )
    val = torch.utils.data.Subset(data, range(1, 400, 2))
    scheme, settings = _scheme_and_settings((64,))
    step = scheme.step

    def spy(batch, i):
        seen.append(len(batch["target"]))
        return step(batch, i)

    scheme.step = spy
    trainer = Trainer(scheme, loader, val, settings, run_dir=tmp_path / "r")
    assert trainer.batches_per_epoch == len(loader) == 18
    result = trainer.fit()
    assert result["complete"] and result["steps"] == 2 * 18
    assert seen[:18] == [50] * 17 + [899 - 850]  # the user's batch size, its last batch kept
    assert result["best_val_acc"] > 0.5


def test_trainer_takes_a_hugging_face_dataset_in_torch_format(tmp_path, disk):
    from datasets import Dataset

    from distill.loop.trainer import Trainer

    _, d, _ = disk
    ds = Dataset.from_dict({"features": d.data.astype(np.float32), "label": d.target}).with_format(
        "torch"
    )
    train, val = ds.select(range(1400)), ds.select(range(1400, 1797))
    scheme, settings = _scheme_and_settings((64,), epochs=3)
    result = Trainer(scheme, train, val, settings, run_dir=tmp_path / "r").fit()
    assert result["complete"] and result["best_val_acc"] > 0.8


def test_trainer_takes_an_iterable_dataset_with_max_steps(tmp_path, disk):
    from distill.loop.trainer import Trainer

    _, d, _ = disk

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            for i in range(1400):
                yield torch.from_numpy(d.data[i].astype(np.float32)), int(d.target[i])

    val = torch.utils.data.TensorDataset(
        torch.from_numpy(d.data[1400:].astype(np.float32)), torch.from_numpy(d.target[1400:])
    )
    scheme, settings = _scheme_and_settings((64,), epochs=5)
    with pytest.raises(ConfigError, match="train.max_steps"):
        Trainer(scheme, Stream(), val, settings, run_dir=tmp_path / "r")
    scheme, settings = _scheme_and_settings((64,), epochs=5, max_steps=60)
    result = Trainer(scheme, Stream(), val, settings, run_dir=tmp_path / "r2").fit()
    assert result["complete"] and result["steps"] == 60 and result["best_val_acc"] > 0.7


def _user_module(tmp_path, monkeypatch):
    (tmp_path / "userdata.py").write_text(
        "import numpy as np, torch\n"
        "from sklearn.datasets import load_digits\n"
        "class Digits(torch.utils.data.Dataset):\n"
        "    def __init__(self, rows):\n"
        "        d = load_digits(); self.x, self.y = d.data[rows].astype(np.float32), d.target[rows]\n"
        "    def __len__(self): return len(self.y)\n"
        "    def __getitem__(self, i): return {'x': torch.from_numpy(self.x[i]), 'label': int(self.y[i])}\n"
        "def splits():\n"
        "    return {'train': Digits(slice(0, 1400)), 'test': Digits(slice(1400, None))}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("userdata", None)


def test_a_user_loader_may_return_torch_datasets(tmp_path, monkeypatch, capsys):
    _user_module(tmp_path, monkeypatch)
    s = load_dataset("userdata:splits")
    assert "reading every item once" in capsys.readouterr().err
    assert s.num_classes == 10 and s.input_shape == (64,) and len(s.test) == 397
    result = run_experiment(
        _yaml(tmp_path, "u", {"name": "userdata:splits"}, student={"name": "mlp", "args": {}})
    )
    assert result["complete"] and result["test_acc"] > 0.8


# ---------------------------------------------------------------- bad input: one line naming the fix
def _folder(tmp_path, layout: dict[str, list[tuple[int, int]]]):
    for cls, sizes in layout.items():
        (tmp_path / cls).mkdir(parents=True, exist_ok=True)
        for i, (h, w) in enumerate(sizes):
            Image.fromarray(np.zeros((h, w), np.uint8)).save(tmp_path / cls / f"{i}.png")
    return str(tmp_path)


def test_bad_folders_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset("image_folder", train=str(tmp_path / "empty"))
    with pytest.raises(DataError, match="is not a folder"):
        load_dataset("image_folder", train=str(tmp_path / "missing"))
    root = _folder(tmp_path / "a", {"cat": [(8, 8)] * 3, "dog": [(8, 8)] * 3})
    (tmp_path / "a" / "bird").mkdir()
    with pytest.raises(DataError, match=r"class folder .*bird.* holds no images"):
        load_dataset("image_folder", train=root)
    mixed = _folder(tmp_path / "m", {"cat": [(8, 8), (9, 7)] * 3, "dog": [(8, 8)] * 3})
    with pytest.raises(DataError, match=r"differ in size .* resize"):
        load_dataset("image_folder", train=mixed)
    ok = load_dataset(
        "image_folder",
        train=mixed,
        transforms=[{"resize": [8, 8]}],
        test_fraction=0.3,
        val_fraction=0.3,
    )
    assert ok.input_shape == (3, 8, 8)


def test_unreadable_and_truncated_images_are_named(tmp_path):
    root = _folder(tmp_path / "t", {"cat": [(16, 16)] * 6, "dog": [(16, 16)] * 6})
    bad = tmp_path / "t" / "dog" / "3.png"
    bad.write_bytes(b"not an image")  # no header: found when the folder is opened
    with pytest.raises(DataError, match=r"cannot read image .*dog/3\.png"):
        load_dataset("image_folder", train=root, test_fraction=0.3, val_fraction=0.2)
    noise = np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)
    Image.fromarray(noise).save(bad)
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # header intact, data cut
    s = load_dataset(
        "image_folder", train=root, test_fraction=0.3, val_fraction=0.2, transforms=[{"resize": 16}]
    )
    with pytest.raises(DataError, match=r"cannot read image .*dog/3\.png"):
        for split in (s.train, s.val, s.test):
            for i in range(len(split)):
                split[i]


def test_bad_tables_and_column_mappings_are_named(tmp_path, disk):
    root, *_ = disk
    with pytest.raises(
        DataError, match=r"no label column 'lable'.*did you mean 'label'|no label column 'lable'"
    ):
        load_dataset("table", train=str(root / "digits.parquet"), label="lable")
    with pytest.raises(DataError, match="no column named like a label .* label: <column>"):
        load_dataset("table", train=str(root / "digits.parquet"))
    with pytest.raises(DataError, match="no feature column 'px99'"):
        load_dataset(
            "table", train=str(root / "digits.parquet"), label="digit", features=["px1", "px99"]
        )
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("table", train=str(root / "nope.parquet"), label="digit")
    with pytest.raises(DataError, match="no input column 'pixels'"):
        load_dataset("hf", path=str(root / "digits.parquet"), label="digit", input="pixels")
    holes = tmp_path / "holes.csv"
    holes.write_text(
        "a,b,label\n" + "".join(f"{i},{'' if i == 7 else i},{i % 2}\n" for i in range(20))
    )
    # issue 39: the hole is found when the table is opened, not when (if ever) its row is read
    with pytest.raises(DataError, match=r"holes.csv.* missing value .* column 'b' at row 7"):
        load_dataset("table", train=str(holes), test_fraction=0.25, val_fraction=0.2)
    with pytest.raises(DataError, match="neither a local file or folder .* local data only"):
        load_dataset("hf", path=str(tmp_path / "no_such_dataset"))  # never a Hub lookup
    (tmp_path / "empty.csv").write_text("a,label\n")
    with pytest.raises(DataError, match="holds no rows"):
        load_dataset("table", train=str(tmp_path / "empty.csv"))
    with pytest.raises(ConfigError, match="'XYZ' is not a Pillow mode"):
        load_dataset("image_folder", train=str(root / "digits_png/train"), mode="XYZ")
    with pytest.raises(ConfigError, match="at least 1 pixel"):
        load_dataset(
            "image_folder", train=str(root / "digits_png/train"), transforms=[{"resize": 0}]
        )
    text = tmp_path / "t.csv"
    text.write_text("a,b,label\n1,x,0\n2,y,1\n3,z,0\n4,w,1\n5,v,0\n6,u,1\n")
    with pytest.raises(DataError, match="column 'b' .* holds strings"):
        load_dataset("table", train=str(text))
    with pytest.raises(DataError, match="no path column 'path'"):
        load_dataset("image_csv", train=str(root / "digits_png/list.csv"))
    with pytest.raises(DataError, match="holds split folders .* point train"):
        load_dataset("image_folder", train=str(root / "digits_png"))
    one = tmp_path / "one.csv"
    one.write_text("a,label\n1,3\n2,3\n3,3\n4,3\n5,3\n")
    with pytest.raises(DataError, match="one class"):
        load_dataset("table", train=str(one))


def test_streams_refuse_what_needs_random_access(tmp_path, disk):
    root, *_ = disk
    opts = {
        "path": str(root / "digits.parquet"),
        "label": "digit",
        "streaming": True,
        "test_split": "train",
    }
    with pytest.raises(ConfigError, match="num_classes"):
        load_dataset("hf", **opts, val_samples=10)
    with pytest.raises(ConfigError, match="val_split .* or val_samples"):
        load_dataset("hf", **opts, num_classes=10)
    with pytest.raises(ConfigError, match="streamed, and data.train_samples"):
        load_dataset("hf", **opts, num_classes=10, val_samples=10, train_samples=100)
    with pytest.raises(ConfigError, match="no test split"):
        load_dataset("hf", **{**opts, "test_split": None}, num_classes=10, val_samples=10)
    from safetensors.torch import save_file

    from distill.models import build_model

    save_file(build_model("mlp", (64,), 10).state_dict(), tmp_path / "t.safetensors")
    cfg = _yaml(
        tmp_path,
        "crd",
        {"name": "hf", "options": {**opts, "num_classes": 10, "val_samples": 10}},
        scheme="offline",
        student={"name": "mlp", "args": {}},
        teacher={"name": "mlp", "args": {}, "weights": str(tmp_path / "t.safetensors")},
        objective={"terms": [{"loss": "crd", "student": "logits", "teacher": "logits"}]},
        train={"max_steps": 3},
    )
    from distill.app.build import build

    with pytest.raises(ConfigError, match="memory bank .* streamed"):
        build(cfg)


def test_a_streamed_label_out_of_range_names_the_sample(tmp_path, disk):
    root, *_ = disk
    s = load_dataset(
        "hf",
        path=str(root / "digits.parquet"),
        label="digit",
        streaming=True,
        val_samples=10,
        num_classes=5,
        test_split="train",
    )
    with pytest.raises(DataError, match=r"streamed sample \d+ .* outside 0..4"):
        list(stream_batches(stream_loader(s.train, batch_size=64, workers=0, pin_memory=False)))


def test_validate_reports_a_bad_data_option(tmp_path, disk, capsys):
    from distill.app.cli import main

    root, *_ = disk
    cfg = {
        "name": "v",
        "run_dir": str(tmp_path / "v"),
        "scheme": "supervised",
        "data": {
            "name": "image_folder",
            "options": {"train": str(root / "digits_png/train"), "trnasforms": []},
        },
        "student": {"name": "mlp"},
    }
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["validate", str(path)]) == 1
    assert "unknown option 'trnasforms'; did you mean 'transforms'" in capsys.readouterr().err


def test_results_json_is_strict_json(tmp_path, disk):
    root, *_ = disk
    data = {"name": "table", "options": {"train": str(root / "digits.parquet"), "label": "digit"}}
    run_experiment(
        _yaml(tmp_path, "j", data, student={"name": "mlp", "args": {}}, train={"epochs": 1})
    )
    json.loads((tmp_path / "j" / "results.json").read_text(), parse_constant=lambda c: 1 / 0)


EXAMPLES = sorted((REPO / "examples" / "data").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_data_example_trains(path, tmp_path, disk, monkeypatch):
    """Every config in examples/data runs on `distill sample-data data` output."""
    from distill.core.config import load_config

    (tmp_path / "data").symlink_to(disk[0])
    monkeypatch.chdir(tmp_path)
    overrides = [f"run_dir={tmp_path / 'run'}", "train.max_steps=3", "train.progress=false"]
    cfg = load_config(path, overrides)
    if cfg.teacher is not None:  # a stand-in teacher of the configured architecture
        from safetensors.torch import save_file

        from distill.app.build import load_data
        from distill.models import build_model

        data = load_data(cfg.data)
        teacher = build_model(
            cfg.teacher.name, data.input_shape, data.num_classes, cfg.teacher.args
        )
        save_file(teacher.state_dict(), tmp_path / "teacher.safetensors")
        cfg = load_config(
            path,
            [
                *overrides,
                f"teacher.weights={tmp_path / 'teacher.safetensors'}",
                f"train.cache.dir={tmp_path / 'cache'}",
            ],
        )
    result = run_experiment(cfg)
    assert result["steps"] == 3


def test_cli_lists_the_datasets_and_writes_sample_data(tmp_path, capsys):
    from distill.app.cli import main

    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("image_folder", "image_csv", "table", "hf", "mnist1d"):
        assert f"\n{name} " in out
    assert "streaming" in out and "label_column" in out
    assert main(["sample-data", str(tmp_path / "d")]) == 0
    assert len(list((tmp_path / "d" / "digits_png" / "test").rglob("*.png"))) == 360
    assert (tmp_path / "d" / "digits_hf" / "dataset_dict.json").is_file()


def test_labels_that_are_not_0_to_c_minus_1_are_mapped_the_same_in_every_split(tmp_path, capsys):
    train, test = tmp_path / "train.tsv", tmp_path / "test.tsv"
    rows = [(i, 1 + i % 3 * 4) for i in range(30)]  # labels 1, 5, 9 as floats, tab-separated
    train.write_text("x\ttarget\n" + "".join(f"{i}\t{y}.0\n" for i, y in rows))
    test.write_text("x\ttarget\n5\t9\n6\t1\n")
    s = load_dataset("table", train=str(train), test=str(test))
    assert "integer labels 1..9 are not 0..C-1" in capsys.readouterr().err
    assert s.class_names == ["1", "5", "9"] and s.num_classes == 3
    assert s.test.targets.tolist() == [2, 0]
    x, y = s.train[0]
    k = int(s.train.positions[0])
    assert float(x[0]) == rows[k][0] and ["1", "5", "9"][y] == str(rows[k][1])


def test_class_subsets_label_maps_and_few_labels_work_on_index_lists(disk):
    root, d, _ = disk
    opts = {
        "train": str(root / "digits_png/train"),
        "test": str(root / "digits_png/test"),
        "mode": "L",
    }
    names = sorted(NAMES)  # class ids follow the sorted folder names
    five, three = names.index("five"), names.index("three")
    s = load_dataset("image_folder", **opts, classes=[five, three])
    assert s.num_classes == 2 and s.class_names == ["five", "three"]
    for split in (s.train, s.val, s.test):
        labels = split.targets.tolist()
        assert set(labels) == {0, 1}
        k = int(split.source.paths[split.positions[0]].rsplit("/", 1)[1][:4])
        assert ["five", "three"][labels[0]] == NAMES[d.target[k]]
    t = load_dataset("image_folder", **opts, task_classes=[five, three])
    assert t.num_classes == 10 and set(t.train.targets.tolist()) == {five, three}
    parity = [NAMES.index(n) % 2 for n in names]
    p = load_dataset("image_folder", **opts, label_map=parity)
    assert p.num_classes == 2
    i = 17
    k = int(p.test.source.paths[p.test.positions[i]].rsplit("/", 1)[1][:4])
    assert int(p.test.targets[i]) == d.target[k] % 2
    u = load_dataset("image_folder", **opts, train_samples=100, unlabeled=True)
    labelled = int((u.train.targets >= 0).sum())  # stratified: about 100, 10 per class
    assert abs(labelled - 100) <= 5 and len(u.train) > 1000
    few = load_dataset("image_folder", **opts, train_samples=100)
    assert len(few.train) == labelled and np.bincount(few.train.targets.numpy()).min() >= 9
    with pytest.raises(ConfigError, match="data.view and data.paired"):
        load_dataset("image_folder", **opts, view="flatten")


def test_export_of_a_convnet_trained_on_an_image_folder(tmp_path, disk):
    pytest.importorskip("onnxruntime")
    from distill.app.artifacts import export_run

    root, *_ = disk
    data = {
        "name": "image_folder",
        "options": {"train": str(root / "digits_png/train"), "mode": "L"},
    }
    run_experiment(_yaml(tmp_path, "c", data, train={"epochs": 1}))
    assert export_run(tmp_path / "c", "onnx")["max_abs_logit_diff"] < 1e-4
    assert export_run(tmp_path / "c", "torchscript")["max_abs_logit_diff"] == 0.0
    with pytest.raises(ConfigError, match="needs a Hugging Face student"):
        export_run(tmp_path / "c", "hf")


def test_timm_and_torchvision_models_by_name_train_from_yaml(tmp_path, disk, monkeypatch):
    from distill.models import build_model

    root, *_ = disk
    seen = []
    stand_in_vision(monkeypatch, seen)
    data = {"name": "image_folder", "options": {"train": str(root / "digits_png/train")}}
    for name in ("timm", "torchvision"):
        student = {"name": name, "args": {"model": "resnet18", "drop_rate": 0.1}}
        result = run_experiment(_yaml(tmp_path, name, data, student=student, train={"epochs": 2}))
        assert result["complete"] and 0.0 <= result["test_acc"] <= 1.0
    assert seen[0] == ("timm", "resnet18", False, 10, 3, {"drop_rate": 0.1})
    assert ("torchvision", "resnet18", None, 10, {"drop_rate": 0.1}) in seen
    with pytest.raises(ConfigError, match="would download"):
        build_model("timm", (3, 8, 8), 10, {"model": "resnet18", "pretrained": True})
    with pytest.raises(ConfigError, match="3-channel images"):
        build_model("torchvision", (1, 8, 8), 10, {"model": "resnet18"})
    # a torch.save state dict next to the model name, as a teacher's weights
    torch.manual_seed(1)
    trained = build_model("timm", (3, 8, 8), 10, {"model": "resnet18"})
    torch.save(trained.state_dict(), tmp_path / "teacher.pt")
    cfg = _yaml(
        tmp_path,
        "kd",
        data,
        scheme="offline",
        teacher={
            "name": "timm",
            "args": {"model": "resnet18"},
            "weights": str(tmp_path / "teacher.pt"),
        },
        objective={"terms": [{"loss": "kd"}]},
        train={"epochs": 1},
    )
    from distill.app.build import build

    built = build(cfg)
    for key, value in trained.state_dict().items():
        assert torch.equal(built.teacher.state_dict()[key], value)


def test_without_timm_the_error_names_the_package(monkeypatch):
    from distill.models import build_model

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(ConfigError, match="needs timm, which is not installed: pip install"):
        build_model("timm", (3, 8, 8), 10, {"model": "resnet18"})


def test_distill_eval_and_report_on_a_run_over_an_image_folder(tmp_path, disk):
    from distill.app.assess import assess

    root, *_ = disk
    data = {
        "name": "image_folder",
        "options": {
            "train": str(root / "digits_png/train"),
            "test": str(root / "digits_png/test"),
            "mode": "L",
        },
    }
    run_experiment(_yaml(tmp_path, "e", data, train={"epochs": 1}))
    out = assess(tmp_path / "e", robustness_samples=50)
    assert out["test_samples"] == 360 and out["robustness_samples"] == 50
    assert out["robustness_clamp"] == [0.0, 1.0] and 0 <= out["metrics"]["top1"] <= 1


def test_a_stream_resumed_mid_epoch_skips_what_it_consumed(tmp_path, disk):
    """A user DataLoader (read in its own order) cut by max_steps in epoch 2 and resumed
    ends with the weights of the uninterrupted run: the resumed epoch skips the batches it
    had trained on."""
    from safetensors.torch import load_file

    from distill.loop.trainer import Trainer

    _, d, _ = disk
    data = torch.utils.data.TensorDataset(
        torch.from_numpy(d.data[:1400].astype(np.float32)), torch.from_numpy(d.target[:1400])
    )
    val = torch.utils.data.TensorDataset(
        torch.from_numpy(d.data[1400:].astype(np.float32)), torch.from_numpy(d.target[1400:])
    )

    def fit(name, resume=False, **train):
        loader = torch.utils.data.DataLoader(data, batch_size=100)  # 14 batches per pass
        scheme, settings = _scheme_and_settings((64,), epochs=2, **train)
        return Trainer(scheme, loader, val, settings, run_dir=tmp_path / name).fit(resume=resume)

    full = fit("full")
    cut = fit("cut", max_steps=20)
    assert not cut["complete"] and cut["steps"] == 20
    back = fit("cut", resume=True)
    assert back["complete"] and back["steps"] == full["steps"] == 28
    a = load_file(tmp_path / "full/checkpoints/last.safetensors")
    b = load_file(tmp_path / "cut/checkpoints/last.safetensors")
    weights = [k for k in a if k.startswith("modules.")]
    assert weights and all(torch.equal(a[k], b[k]) for k in weights)


def _digits_pixels_csv(path):
    """The 8x8 digits as a CSV of raw 0-255 pixel columns, the way a user exports images."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.clip(digits.data * 16, 0, 255).astype(int)
    header = ",".join(f"px{i}" for i in range(64)) + ",label\n"
    body = "".join(",".join(map(str, r)) + f",{y}\n" for r, y in zip(pixels, digits.target))
    path.write_text(header + body)
    return path


def test_raw_pixel_tables_are_warned_about_and_scaled_on_request(tmp_path, capsys):
    """Issue 39: 0-255 pixel columns trained to chance in silence."""
    csv = _digits_pixels_csv(tmp_path / "pixels.csv")
    plain = load_dataset("table", train=str(csv))
    assert "far from unit scale" in capsys.readouterr().err
    assert plain.preprocessing is None and float(plain.train[0][0].max()) > 20
    std = load_dataset("table", train=str(csv), scale="standard")
    capsys.readouterr()
    x = torch.stack([std.train[i][0] for i in range(len(std.train))])
    assert x.mean(0).abs().max() < 0.2  # fitted on the training rows (val rows among them)
    fitted = std.preprocessing
    assert fitted["scale"] == "standard" and len(fitted["offset"]) == 64
    mm = load_dataset("table", train=str(csv), scale="minmax")
    xs = torch.stack([mm.test[i][0] for i in range(len(mm.test))])
    assert xs.min() >= -0.5 and xs.max() <= 1.5  # the test rows go through the same map
    with pytest.raises(ConfigError, match="scale must be one of"):
        load_dataset("table", train=str(csv), scale="zscore")
    auto = load_dataset("table", train=str(csv), scale="auto")  # numeric: standardised
    assert auto.preprocessing["scale"] == "standard"


def test_a_scaled_table_trains_and_records_its_scaling(tmp_path):
    csv = _digits_pixels_csv(tmp_path / "pixels.csv")
    cfg = {
        "name": "pixels",
        "run_dir": str(tmp_path / "run"),
        "scheme": "supervised",
        "data": {"name": "table", "options": {"train": str(csv), "scale": "standard"}},
        "student": {"name": "mlp", "args": {"hidden": [32]}},
        "train": {"epochs": 10, "batch_size": 64, "progress": False},
    }
    result = run_experiment(parse_config(cfg))
    assert result["test_acc"] > 0.8
    saved = json.loads((tmp_path / "run/preprocessing.json").read_text())
    assert saved["scale"] == "standard" and saved["columns"][0] == "px0"


def test_a_parquet_of_png_structs_is_read_as_images(tmp_path):
    """pyarrow writes an image column as {bytes, path} structs with no Hugging Face
    metadata; that is the common layout, so it is read as images."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    cells = []
    for image in digits.images[:60]:
        buf = io.BytesIO()
        Image.fromarray((image * 16).astype("uint8")).save(buf, format="PNG")
        cells.append({"bytes": buf.getvalue(), "path": None})
    pq.write_table(pa.table({"image": cells, "label": digits.target[:60]}), tmp_path / "i.parquet")
    data = load_dataset("table", train=str(tmp_path / "i.parquet"))
    assert data.input_shape == (3, 8, 8) and data.num_classes == 10
    x, y = data.train[0]
    assert x.dtype == torch.float32 and float(x.min()) >= 0 and float(x.max()) <= 1
