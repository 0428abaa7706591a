"""Crash and resume, signals, numerical faults."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fault_losses
import pytest
import torch
import yaml
from helpers import kd_cfg, make_teacher, synthetic_cfg

from distill.checkpoint import load_checkpoint
from distill.config import parse_config
from distill.errors import CheckpointError, NonFiniteError
from distill.run import run_experiment

TESTS = Path(__file__).parent


def _fault_cfg(tmp_path, loss):
    teacher = make_teacher(tmp_path / "t.safetensors")
    cfg = kd_cfg(tmp_path / "r", teacher)
    cfg["objective"]["terms"].append(
        {"loss": f"fault_losses:{loss}", "name": "boom", "weight": 1.0}
    )
    cfg["train"]["checkpoint_every_steps"] = 2
    return cfg


def test_nan_term_stops_within_one_step_and_names_it(tmp_path):
    fault_losses.calls["n"] = -1  # the dry forward in build() calls it once
    with pytest.raises(NonFiniteError) as err:
        run_experiment(parse_config(_fault_cfg(tmp_path, "nan_from_call_6")))
    msg = str(err.value)
    assert "term 'boom' is not finite" in msg and "step 5" in msg
    assert "last good checkpoint is" in msg and "--resume" in msg
    ckpt = load_checkpoint(tmp_path / "r/checkpoints/last.safetensors")  # intact, checksum OK
    assert ckpt["trainer"]["step"] == 4


def test_nan_gradient_with_finite_loss_is_caught_before_the_update(tmp_path):
    with pytest.raises(NonFiniteError, match=r"non-finite gradient .* in student\.") as err:
        run_experiment(parse_config(_fault_cfg(tmp_path, "nan_gradient")))
    assert "no checkpoint had been saved yet" in str(err.value)


def _script_cfg(tmp_path, run_dir):
    cfg = synthetic_cfg(
        run_dir,
        train={"epochs": 4, "batch_size": 8, "deterministic": True, "checkpoint_every_steps": 3},
    )
    cfg["student"] = {"name": "mlp", "args": {"hidden": [64, 64], "dropout": 0.1}}
    cfg["data"]["augment"] = [{"name": "noise", "args": {"std": 0.05}}]
    path = tmp_path / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _distill(*args, **kw):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "distill", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _checkpoint_step(ckpt: Path) -> int:
    """The step a checkpoint holds; -1 if a read races the writer's rename (os.replace is atomic)."""
    try:
        return load_checkpoint(ckpt)["trainer"]["step"]
    except (OSError, CheckpointError):
        return -1


def _wait_for_step(ckpt: Path, step: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpt.is_file() and _checkpoint_step(ckpt) >= step:
            return
        time.sleep(0.02)
    raise AssertionError(f"the run never reached step {step}: {proc.poll()=}")


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path):
    full = _distill("run", _script_cfg(tmp_path, tmp_path / "full"))
    assert full.wait(timeout=120) == 0, full.stderr.read()
    killed_cfg = _script_cfg(tmp_path, tmp_path / "killed")
    proc = _distill("run", killed_cfg)
    _wait_for_step(tmp_path / "killed/checkpoints/last.safetensors", 7, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    step_at_kill = load_checkpoint(tmp_path / "killed/checkpoints/last.safetensors")["trainer"][
        "step"
    ]
    assert step_at_kill < 4 * 35  # killed before the end
    resumed = _distill("run", killed_cfg, "--resume")
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read()
    a = load_checkpoint(tmp_path / "full/checkpoints/last.safetensors")
    b = load_checkpoint(tmp_path / "killed/checkpoints/last.safetensors")
    for key, value in a["modules"].items():
        assert torch.equal(value, b["modules"][key]), key
    rows = lambda d: (tmp_path / d / "metrics.jsonl").read_text()  # noqa: E731
    assert rows("full") == rows("killed")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_save_and_exit_cleanly(tmp_path, sig):
    cfg = _script_cfg(tmp_path, tmp_path / "r")
    proc = _distill("run", cfg, "train.epochs=200", "train.checkpoint_every_steps=null")
    _wait_for_step(tmp_path / "r/checkpoints/last.safetensors", 1, proc)  # first epoch done
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err
    assert f"stopped by {signal.Signals(sig).name}" in err and "--resume" in err
    result = json.loads(out)
    assert result["complete"] is False and result["stopped_by"] == signal.Signals(sig).name
    ckpt = load_checkpoint(tmp_path / "r/checkpoints/last.safetensors")
    assert ckpt["trainer"]["step"] == result["steps"]  # saved at the step it stopped on
