"""Issue 39: the Python API refuses, when the object is made, what the CLI refuses; files
the user wrote in other encodings or layouts are read or named; a completed write
survives a power cut (the folder is synced after the rename)."""

import os
import stat
import subprocess

import numpy as np
import pytest
import torch
import yaml
from helpers import mount_tmpfs, synthetic_cfg
from torch.utils.data import TensorDataset

from distill import Objective, Term, Trainer, TrainSettings, build_model, kd_loss, load_dataset
from distill.app.cli import main
from distill.core.checkpoint import atomic_write_text, load_weights, save_weights
from distill.core.config import load_config
from distill.core.errors import CheckpointError, ConfigError, DataError
from distill.schemes.supervised import Supervised


def _trainer(train, run_dir, classes=3):
    student = build_model("mlp", (8,), classes, {"hidden": [8]})
    settings = TrainSettings(epochs=1, batch_size=16, progress=False)
    return Trainer(Supervised(student, Objective()), train, train, settings, run_dir=run_dir)


def test_trainer_refuses_a_label_beyond_the_model_classes_when_made(tmp_path):
    y = torch.randint(0, 3, (64,))
    y[9] = 7
    with pytest.raises(DataError, match=r"label 7 at index 9 is outside 0..2.*num_classes=8"):
        _trainer(TensorDataset(torch.randn(64, 8), y), tmp_path / "r")
    y[9] = -1  # an unlabelled sample is fine
    _trainer(TensorDataset(torch.randn(64, 8), y), tmp_path / "r")
    assert not (tmp_path / "r").exists()  # made, not run: nothing written


def test_trainer_refuses_empty_data_and_a_run_dir_that_is_a_file(tmp_path):
    empty = TensorDataset(torch.randn(0, 8), torch.zeros(0, dtype=torch.long))
    with pytest.raises(DataError, match="training data is empty"):
        _trainer(empty, tmp_path / "r")
    (tmp_path / "afile").write_text("mine")
    data = TensorDataset(torch.randn(32, 8), torch.randint(0, 3, (32,)))
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        _trainer(data, tmp_path / "afile")
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_misspelt_loss_argument_fails_when_the_term_is_made():
    with pytest.raises(ValueError, match="no argument 'temprature'; did you mean 'temperature'"):
        Term("kd", kd_loss, loss_args={"temprature": 4})
    Term("kd", kd_loss, loss_args={"temperature": 4})


def test_load_weights_refuses_nan_unless_asked(tmp_path):
    layer = torch.nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    save_weights(tmp_path / "w.safetensors", layer)
    with pytest.raises(CheckpointError, match=r"hold NaN or inf \(in weight\)"):
        load_weights(tmp_path / "w.safetensors")
    state, _ = load_weights(tmp_path / "w.safetensors", allow_non_finite=True)
    assert torch.isnan(state["weight"][0, 0])


def test_a_write_syncs_its_folder_after_the_rename(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    atomic_write_text(tmp_path / "f.txt", "x")
    assert synced == [False, True]  # the file's bytes, then the folder's entry


def test_a_utf16_config_is_read_and_random_bytes_are_named(tmp_path):
    cfg = synthetic_cfg(tmp_path / "r")
    (tmp_path / "c16.yaml").write_bytes(yaml.safe_dump(cfg).encode("utf-16"))  # with a BOM
    assert load_config(tmp_path / "c16.yaml").student.name == "mlp"
    (tmp_path / "bad.yaml").write_bytes(b"name: x\n\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8 text .byte 0xff at offset 8"):
        load_config(tmp_path / "bad.yaml")


def test_table_label_values_map_a_negative_label_and_list_columns_are_announced(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 3)), rng.integers(0, 2, 60)
    y[4] = -1  # a -1/1 style label the user maps explicitly
    y[y == 0] = 1
    y[:10] = -1
    pq.write_table(pa.table({"v": [list(r) for r in x], "label": y}), tmp_path / "t.parquet")
    data = load_dataset("table", train=str(tmp_path / "t.parquet"), label_values=[-1, 1])
    assert data.class_names == ["-1", "1"] and data.num_classes == 2
    assert data.input_shape == (3,)
    assert "column(s) ['v']" in capsys.readouterr().err
    with pytest.raises(DataError, match=r"label\(s\) \['-1'\] are not among the classes"):
        load_dataset("table", train=str(tmp_path / "t.parquet"), label_values=[1])


def test_resume_on_a_full_disk_writes_nothing(tmp_path, capsys):
    mnt = tmp_path / "mnt"
    mount_tmpfs(mnt, "size=4m")
    try:
        cfg = synthetic_cfg(mnt / "r", train={"epochs": 2, "max_steps": 3})
        cfg["student"]["args"] = {"hidden": [256]}
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(cfg))
        assert main(["run", str(path)]) == 0
        before = {p: p.read_bytes() for p in (mnt / "r").rglob("*") if p.is_file()}
        free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
        (mnt / "filler").write_bytes(b"\0" * (free - 4096))  # the disk is now full
        capsys.readouterr()
        assert main(["run", str(path), "--resume", "train.epochs=4"]) == 2
        err = capsys.readouterr().err
        assert "ENOSPC" in err and "nothing was written" in err, err
        after = {p: p.read_bytes() for p in (mnt / "r").rglob("*") if p.is_file()}
        assert after == before  # config.yaml still says 2 epochs; the checkpoint is as it was
        (mnt / "filler").unlink()
        assert main(["run", str(path), "--resume", "train.epochs=4"]) == 0
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_export_to_onnx_without_its_packages_is_one_line(tmp_path, monkeypatch, capsys):
    import sys

    from distill.app.run import run_experiment
    from distill.core.config import parse_config

    run_experiment(parse_config(synthetic_cfg(tmp_path / "r", train={"epochs": 1})))
    # a machine without onnx: an import of it fails (the package itself is installed here)
    monkeypatch.setitem(sys.modules, "onnx", None)
    capsys.readouterr()
    assert main(["export", str(tmp_path / "r"), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "pip install" in err and len(err.splitlines()) == 2
    assert not (tmp_path / "r/export").exists()


def test_a_teacher_cache_build_shows_progress_off_a_terminal(capsys):
    from distill.core.progress import WorkProgress

    with WorkProgress(4, "teacher cache", every_s=0.0) as bar:
        for _ in range(4):
            bar.update()
    err = capsys.readouterr().err
    assert "teacher cache: 25% (1 of 4)" in err and "left" in err
    with WorkProgress(4, "quiet", enabled=False) as bar:
        bar.update(4)
    assert capsys.readouterr().err == ""
