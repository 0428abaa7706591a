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
from helpers import TESTS_DIR, kd_cfg, make_teacher, mount_tmpfs, synthetic_cfg

from distill.app.run import run_experiment
from distill.core.checkpoint import load_checkpoint
from distill.core.config import parse_config
from distill.core.errors import CheckpointError, ConfigError, NonFiniteError
from distill.loop.trainer import Trainer

TESTS = TESTS_DIR


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


# ------------------------------------------------------------------ issue 23: nothing lost
def _write_cfg(tmp_path: Path, name: str, cfg: dict) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _stages_cfg(tmp_path: Path, run_dir: Path) -> dict:
    teacher = make_teacher(tmp_path / "t.safetensors")
    cfg = kd_cfg(run_dir, teacher)
    cfg["train"] = {**cfg["train"], "epochs": 3, "batch_size": 8, "checkpoint_every_steps": 4}
    cfg["train"]["deterministic"] = True
    cfg["data"]["augment"] = [{"name": "noise", "args": {"std": 0.05}}]
    cfg["stages"] = [
        {
            "name": "hint",
            "objective": {
                "task_weight": 0.0,
                "terms": [
                    {
                        "loss": "mse",
                        "student": "blocks.0",
                        "teacher": "blocks.0",
                        "adapter": "linear",
                    }
                ],
            },
            "train": {"epochs": 2},
        },
        {"name": "kd", "train": {"epochs": 3}},
    ]
    return cfg


def _dml_cfg(run_dir: Path) -> dict:
    cfg = synthetic_cfg(
        run_dir,
        train={"epochs": 6, "batch_size": 8, "deterministic": True, "checkpoint_every_steps": 5},
    )
    cfg["scheme"] = {"name": "dml", "args": {"temperature": 1.0, "kd_weight": 1.0}}
    cfg["peers"] = [{"name": "mlp", "args": {"hidden": [24]}}]
    cfg["data"]["augment"] = [{"name": "noise", "args": {"std": 0.05}}]
    return cfg


def _weights_of(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints/last.safetensors")["modules"]


def _progress(run_dir: Path) -> int:
    """Optimizer steps saved so far, over every (stage) run dir below `run_dir`."""
    return sum(max(_checkpoint_step(p), 0) for p in run_dir.rglob("checkpoints/last.safetensors"))


def _kill_at_random_points(config: str, run_dir: Path, total: int, seed: int) -> int:
    """SIGKILL the run at 5 random points of its `total` saved steps (a moment after a
    checkpoint: inside the next steps or the next write), resuming each time; then let it
    finish. Returns how many kills landed."""
    import random

    rng = random.Random(seed)
    landed = 0
    for target in sorted(rng.sample(range(1, int(0.8 * total)), 5)):
        resume = any(run_dir.rglob("last.safetensors"))
        proc = _distill("run", config, *(["--resume"] if resume else []))
        deadline = time.monotonic() + 120
        while proc.poll() is None and _progress(run_dir) < target and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.05))
        if proc.poll() is not None:  # it finished first: no kill this time
            assert proc.returncode == 0, proc.stderr.read()
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        landed += 1
    if not (run_dir / "results.json").is_file():
        done = _distill("run", config, "--resume")
        _out, err = done.communicate(timeout=180)
        assert done.returncode == 0, err
    assert not [p for p in run_dir.rglob("*.tmp")], "temporary files were left behind"
    return landed


def _same_run(a: Path, b: Path) -> None:
    dirs_a = sorted(p.parent.parent.relative_to(a) for p in a.rglob("checkpoints/last.safetensors"))
    dirs_b = sorted(p.parent.parent.relative_to(b) for p in b.rglob("checkpoints/last.safetensors"))
    assert dirs_a == dirs_b and dirs_a
    for d in dirs_a:
        wa, wb = _weights_of(a / d), _weights_of(b / d)
        for key, value in wa.items():
            assert torch.equal(value, wb[key]), (d, key)
        assert (a / d / "metrics.jsonl").read_text() == (b / d / "metrics.jsonl").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["stages", "dml"])
def test_sigkill_at_five_random_points_then_resume_is_bit_identical(tmp_path, kind):
    make = (lambda d: _stages_cfg(tmp_path, d)) if kind == "stages" else _dml_cfg
    full_cfg = _write_cfg(tmp_path, "full", make(tmp_path / "full"))
    full = _distill("run", full_cfg)
    assert full.wait(timeout=180) == 0, full.stderr.read()
    killed_cfg = _write_cfg(tmp_path, "killed", make(tmp_path / "killed"))
    total = _progress(tmp_path / "full")
    seed = 23 if kind == "dml" else 5
    landed = _kill_at_random_points(killed_cfg, tmp_path / "killed", total, seed)
    assert landed == 5
    _same_run(tmp_path / "full", tmp_path / "killed")


def test_a_second_writer_is_refused_naming_the_pid(tmp_path):
    cfg = _script_cfg(tmp_path, tmp_path / "r")
    first = _distill("run", cfg, "train.epochs=400", "train.checkpoint_every_steps=1")
    try:
        _wait_for_step(tmp_path / "r/checkpoints/last.safetensors", 2, first)
        # a resume of the same run dir while it trains: checked, restored, then refused
        second = _distill(
            "run", cfg, "train.epochs=400", "train.checkpoint_every_steps=1", "--resume"
        )
        out, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        assert f"in use by another distill process (PID {first.pid})" in err
        assert "Traceback" not in err
        assert first.poll() is None  # the first run goes on undisturbed
    finally:
        first.kill()
        first.wait(timeout=30)
    # the lock died with the killed process: a resume now takes it
    third = _distill("run", cfg, "train.epochs=1", "train.checkpoint_every_steps=1", "--resume")
    out, err = third.communicate(timeout=120)
    assert "in use by another" not in err


def test_two_writers_started_together_never_share_a_run_dir(tmp_path):
    cfg = _script_cfg(tmp_path, tmp_path / "r")
    procs = [_distill("run", cfg, "train.epochs=30") for _ in range(2)]
    results = [p.communicate(timeout=240) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [r[1][-500:] for r in results]
    loser = results[[p.returncode for p in procs].index(2)][1]
    assert "in use by another distill process" in loser or "already holds a run" in loser
    saved = yaml.safe_load((tmp_path / "r/config.yaml").read_text())
    assert saved["train"]["epochs"] == 30 and (tmp_path / "r/results.json").is_file()


def test_stale_temp_files_are_removed_on_start_and_resume(tmp_path, capsys):
    cfg = parse_config(synthetic_cfg(tmp_path / "r", train={"epochs": 2, "max_steps": 3}))
    run_experiment(cfg)
    stale = [
        tmp_path / "r/checkpoints/.last.safetensors.ab12cd34.tmp",
        tmp_path / "r/.metrics.jsonl.zz99yy88.tmp",
    ]
    for p in stale:
        p.write_bytes(b"half a file")
    (tmp_path / "r/my.tmp").write_text("a user file that only looks temporary")
    capsys.readouterr()
    run_experiment(parse_config(synthetic_cfg(tmp_path / "r", train={"epochs": 2})), resume=True)
    assert not any(p.exists() for p in stale)
    assert (tmp_path / "r/my.tmp").read_text().startswith("a user file")
    assert "removed 2 temporary file(s)" in capsys.readouterr().err


def _diverging_cfg(tmp_path: Path) -> dict:
    cfg = synthetic_cfg(tmp_path / "r", train={"epochs": 6, "batch_size": 16})
    cfg["train"]["optimizer"] = {"name": "sgd", "lr": 30.0, "momentum": 0.9}
    cfg["train"]["schedule"] = {"name": "constant"}
    cfg["student"]["args"] = {"hidden": [64]}
    return cfg


def test_after_a_divergence_the_printed_command_resumes_from_finite_weights(tmp_path):
    cfg = _diverging_cfg(tmp_path)
    path = _write_cfg(tmp_path, "c", cfg)
    proc = _distill("run", path, "train.checkpoint_every_steps=2", cwd=tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "Traceback" not in err and "went non-finite" in err or "non-finite gradient" in err
    command = err.split("resume from it with a tenth of the learning rate: ")[1].splitlines()[0]
    assert "--allow-change train.optimizer.lr" in command and "train.optimizer.lr=3" in command
    last = load_checkpoint(tmp_path / "r/checkpoints/last.safetensors")
    for key, value in last["modules"].items():  # the kept checkpoint is finite everywhere
        assert torch.isfinite(value).all(), key
    import shlex

    again = _distill(*shlex.split(command)[1:], cwd=tmp_path)
    out2, err2 = again.communicate(timeout=180)
    # the lower lr may or may not be enough for this toy; the command itself must be accepted
    assert "cannot resume" not in err2 and "Traceback" not in err2, err2
    assert "resume: train.optimizer.lr changed from 30.0 to 3.0" in err2


def test_resume_with_allowed_lr_change_uses_the_new_lr(tmp_path, capsys):
    base = synthetic_cfg(tmp_path / "r", train={"epochs": 3, "max_steps": 5})
    base["train"]["schedule"] = {"name": "constant"}
    run_experiment(parse_config(base))
    lower = {
        **base,
        "train": {**base["train"], "max_steps": None, "optimizer": {"name": "adamw", "lr": 0.001}},
    }
    with pytest.raises(ConfigError, match="train.optimizer.lr changed"):
        run_experiment(parse_config(lower), resume=True)
    capsys.readouterr()
    run_experiment(parse_config(lower), resume=True, allow_changes=["train.optimizer.lr"])
    err = capsys.readouterr().err
    assert "resume: train.optimizer.lr changed from 0.01 to 0.001" in err
    rows = [json.loads(line) for line in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["lr"] == pytest.approx(0.001)


def test_sigint_prints_the_exact_resume_command(tmp_path):
    cfg = _script_cfg(tmp_path, tmp_path / "default")
    proc = _distill(
        "run",
        cfg,
        f"run_dir={tmp_path / 'elsewhere'}",
        "train.epochs=200",
        "train.checkpoint_every_steps=null",
    )
    _wait_for_step(tmp_path / "elsewhere/checkpoints/last.safetensors", 1, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    command = err.split("Continue with: ")[1].splitlines()[0]
    assert f"run_dir={tmp_path / 'elsewhere'}" in command and "train.epochs=200" in command
    assert command.endswith("--resume")


def test_a_moved_run_dir_resumes_and_says_the_new_length(tmp_path, capsys):
    run_experiment(parse_config(synthetic_cfg(tmp_path / "a", train={"epochs": 2, "max_steps": 3})))
    (tmp_path / "a").rename(tmp_path / "b")
    capsys.readouterr()
    result = run_experiment(
        parse_config(synthetic_cfg(tmp_path / "b", train={"epochs": 4})), resume=True
    )
    assert result["complete"] and result["epochs"] == 4
    assert "at epoch 1 of 4 (was 2)" in capsys.readouterr().err


@pytest.mark.parametrize("fs", ["full", "read-only"])
def test_a_full_or_read_only_disk_is_a_clean_error(tmp_path, fs):
    mnt = tmp_path / "mnt"
    mount_tmpfs(mnt, "size=200k" if fs == "full" else "ro,size=1m")
    try:
        cfg = synthetic_cfg(mnt / "r", train={"epochs": 2})
        cfg["student"]["args"] = {"hidden": [4096]}  # weights of ~200 KB: the disk fills up
        proc = _distill("run", _write_cfg(tmp_path, "c", cfg))
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err
        assert "Traceback" not in err
        errno_name = "ENOSPC" if fs == "full" else "EROFS"
        assert errno_name in err and str(mnt) in err, err
        if fs == "full":
            assert "free space" in err
            assert not list(mnt.rglob("*.tmp"))  # a failed write leaves no half file
        else:
            assert "read-only" in err
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_a_checkpoint_with_a_non_finite_tensor_is_never_written(tmp_path, capsys):
    from distill.app.build import build

    cfg = parse_config(synthetic_cfg(tmp_path / "r", train={"epochs": 1}))
    built = build(cfg)
    trainer = Trainer(
        built.scheme, built.data.train, built.data.val, cfg.train, run_dir=tmp_path / "r"
    )
    trainer.save()
    good = (tmp_path / "r/checkpoints/last.safetensors").read_bytes()
    trainer.state["step"] = 9
    with torch.no_grad():
        next(built.student.parameters())[0, 0] = float("inf")
    trainer.save()
    assert (tmp_path / "r/checkpoints/last.safetensors").read_bytes() == good
    err = capsys.readouterr().err
    assert "checkpoint at step 9 not written: non-finite values in modules.student." in err
    assert "(step 0)" in err


def test_a_run_stopped_before_its_first_epoch_reports_no_infinite_best(tmp_path):
    result = run_experiment(
        parse_config(synthetic_cfg(tmp_path / "r", train={"epochs": 2, "max_steps": 2}))
    )
    assert result["epochs"] == 0 and result["best_val_acc"] is None
    json.dumps(result, allow_nan=False)  # strict JSON: no Infinity
