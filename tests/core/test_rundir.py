"""Run directories (distill.core.rundir): marker, lock, what --overwrite may remove."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from helpers import REPO, synthetic_cfg

from distill.app.cli import main
from distill.app.run import run_experiment
from distill.core import rundir
from distill.core.config import parse_config
from distill.core.errors import ConfigError

CONFIGS = REPO / "configs"


def test_a_run_marks_its_dir_and_overwrite_removes_only_what_it_wrote(tmp_path, capsys):
    cfg = parse_config(synthetic_cfg(tmp_path / "r", train={"epochs": 1}))
    run_experiment(cfg)
    marker = (tmp_path / "r" / rundir.MARKER).read_text()
    assert rundir.foreign_files(tmp_path / "r") == []
    run_experiment(cfg, overwrite=True)  # a run dir holding only run outputs is cleared
    assert (tmp_path / "r" / rundir.MARKER).read_text() != marker  # a new run, a new id
    assert (tmp_path / "r/results.json").is_file()
    (tmp_path / "r/checkpoints/notes.md").write_text("mine")
    with pytest.raises(ConfigError, match=r"did not write \('checkpoints/notes.md'\)"):
        run_experiment(cfg, overwrite=True)
    assert (tmp_path / "r/checkpoints/notes.md").read_text() == "mine"
    assert (tmp_path / "r/checkpoints/best.safetensors").is_file()  # nothing was removed


def test_a_user_symlink_in_a_run_dir_blocks_overwrite_and_its_target_survives(tmp_path):
    cfg = parse_config(synthetic_cfg(tmp_path / "r", train={"epochs": 1}))
    run_experiment(cfg)
    (tmp_path / "data").mkdir()
    (tmp_path / "data/results.json").write_text("precious")
    os.symlink(tmp_path / "data", tmp_path / "r/linked")
    with pytest.raises(ConfigError, match="linked"):
        run_experiment(cfg, overwrite=True)
    assert (tmp_path / "data/results.json").read_text() == "precious"


def test_protected_folders():
    assert "root" in rundir.protected_reason(Path("/"))
    assert "home" in rundir.protected_reason(Path.home())
    assert "working directory" in rundir.protected_reason(Path("."))
    assert "working directory" in rundir.protected_reason(Path("..").resolve())


def test_a_folder_without_the_marker_is_never_cleared_whatever_its_file_names(tmp_path):
    """Issue 39: run-output names (results.json, report.md, *.onnx) in a folder without the
    marker may be a person's own files: --overwrite refuses and removes nothing."""
    cfg = parse_config(synthetic_cfg(tmp_path / "r", train={"epochs": 1}))
    run_experiment(cfg)
    (tmp_path / "r" / rundir.MARKER).unlink()  # as an older distill, or a person, left it
    (tmp_path / "r/report.md").write_text("notes")
    before = {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="no .distill-run marker"):
        run_experiment(cfg, overwrite=True)
    after = {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()}
    assert after == before
    assert "will not clear it" in rundir.replace_advice(tmp_path / "r")
    (tmp_path / "empty").mkdir()  # an empty folder may be taken
    rundir.check_clearable(tmp_path / "empty")


def test_the_lock_is_exclusive_across_processes_and_dies_with_its_holder(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pathlib import Path
                from distill.core.rundir import RunLock
                with RunLock(Path({str(tmp_path / "r")!r})):
                    print("held", flush=True)
                    time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"PID {holder.pid}"):
            rundir.RunLock(tmp_path / "r").__enter__()
    finally:
        holder.kill()  # SIGKILL: no cleanup runs in the holder
        holder.wait()
    with rundir.RunLock(tmp_path / "r"):  # the kernel dropped the lock with the process
        assert (tmp_path / "r" / rundir.LOCK).read_text().strip() == str(os.getpid())


def test_compress_and_federated_overwrite_go_through_the_same_guard(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out/thesis.txt").write_text("mine")
    fed = {
        "name": "f",
        "run_dir": "out",
        "data": {"name": "synthetic"},
        "client": {"name": "mlp", "args": {"hidden": [8]}},
    }
    path = tmp_path / "fed.yaml"
    path.write_text(yaml.safe_dump(fed))
    assert main(["federated", str(path), "--overwrite"]) == 2
    assert "thesis.txt" in capsys.readouterr().err
    assert (tmp_path / "out/thesis.txt").read_text() == "mine"
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp/thesis.txt").write_text("mine")
    comp = yaml.safe_load((CONFIGS / "compress_digits.yaml").read_text())
    comp["run_dir"] = "cmp"
    (tmp_path / "comp.yaml").write_text(yaml.safe_dump(comp))
    assert main(["compress", str(tmp_path / "comp.yaml"), "--overwrite"]) == 2
    assert "thesis.txt" in capsys.readouterr().err
    assert (tmp_path / "cmp/thesis.txt").read_text() == "mine"


def test_lm_cache_out_never_replaces_a_folder_of_the_users(tmp_path):
    from distill.llm.cache_build import _prepare

    meta = {"format": "x", "rows": 1, "shards": 1, "temperature": 1.0, "layout": {},
            "fingerprint": {"teacher": "a"}}  # fmt: skip
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="not an LM teacher cache .*notes.txt"):
        _prepare(tmp_path / "mine", meta)
    _prepare(tmp_path / "cache", meta)  # a new folder gets the cache's manifest
    (tmp_path / "cache" / "shard-00000.json").write_text("{}")
    _prepare(tmp_path / "cache", meta)  # a cache distill wrote may be built on (resumed)
    with pytest.raises(ConfigError, match="holds a cache with another teacher"):
        _prepare(tmp_path / "cache", {**meta, "fingerprint": {"teacher": "b"}})
    assert (tmp_path / "mine/notes.txt").read_text() == "x"
    assert (tmp_path / "cache" / "shard-00000.json").read_text() == "{}"
