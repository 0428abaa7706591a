"""distill bench: statistics, planning, resume, leaderboard."""

import math

import pytest
import yaml
from helpers import make_teacher, synthetic_cfg

from distill.app.bench import aggregate, ci95, welch_p
from distill.app.cli import main


def test_statistics_known_answers():
    assert ci95([1.0, 2.0, 3.0]) == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert welch_p([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert welch_p([1.0, 1.1, 0.9], [5.0, 5.1, 4.9]) < 0.001
    assert math.isnan(welch_p([1.0], [2.0, 3.0]))
    rows = aggregate(
        {("p", "scratch"): [80.0, 82.0], ("p", "kd"): [85.0, 86.0], ("p", "x"): [79.0, 80.0]}
    )
    by = {r["method"]: r for r in rows}
    assert by["kd"]["vs_scratch"] == pytest.approx(4.5) and not by["kd"]["negative_transfer"]
    assert by["x"]["vs_kd"] == pytest.approx(-6.0)
    assert [r["method"] for r in rows] == ["kd", "scratch", "x"]  # best first
    # issue 39: below scratch is not enough; the rule is p < 0.05 after Holm (here p = 0.35)
    assert by["x"]["p_scratch"] == pytest.approx(0.3499, abs=1e-3)
    assert not by["x"]["negative_transfer"]
    rows = aggregate(
        {
            ("p", "scratch"): [80.0, 80.5, 81.0],
            ("p", "kd"): [85.0, 86.0, 85.5],
            ("p", "x"): [70.0, 70.4, 70.2],
        }
    )
    by = {r["method"]: r for r in rows}
    assert by["x"]["negative_transfer"] and not by["kd"]["negative_transfer"]
    # Holm over the pair's two comparisons: the smaller p doubled, the other kept (monotone)
    assert by["x"]["p_scratch_holm"] == pytest.approx(2 * by["x"]["p_scratch"])
    assert by["kd"]["p_scratch_holm"] == pytest.approx(by["x"]["p_scratch_holm"])


def test_bench_end_to_end_and_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    base = synthetic_cfg(tmp_path / "unused", train={"epochs": 1})
    base["teacher"] = {"name": "mlp", "args": {"hidden": [32]}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "dist.yaml").write_text(
        yaml.safe_dump({"objective": {"terms": [{"loss": "dist"}]}})
    )
    spec = {
        "name": "tiny",
        "base": "base.yaml",
        "out": "out",
        "seeds": [0, 1],
        "jobs": 2,
        "methods": {
            "dist": "dist.yaml",
            "sp": {
                "terms": [
                    {"loss": "sp", "weight": 10.0, "student": "blocks.0", "teacher": "blocks.0"}
                ]
            },
        },
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert main(["bench", "spec.yaml"]) == 0
    board = (tmp_path / "out/leaderboard.md").read_text()
    for method in ("scratch", "kd", "dist", "sp"):
        assert f"| pair | {method} | 2 |" in board
    assert (tmp_path / "out/leaderboard.csv").read_text().startswith("pair,method,n,mean")
    assert "data:image/png;base64," in (tmp_path / "out/leaderboard.html").read_text()
    done = tmp_path / "out/pair/dist/seed1/results.json"
    stamp = done.stat().st_mtime_ns
    assert main(["bench", "spec.yaml"]) == 0  # a second sweep redoes nothing
    assert done.stat().st_mtime_ns == stamp
    capsys.readouterr()
    spec["methods"]["bad"] = {"terms": [{"loss": "nope"}]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert main(["bench", "spec.yaml"]) == 2
    assert "unknown loss 'nope'" in capsys.readouterr().err


def _wait_for(predicate, seconds=120):
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError("timed out")


def _lock_pid(run_dir):
    """The PID of the distill process training in `run_dir`, once it has started an epoch."""
    lock, metrics = run_dir / ".distill-lock", run_dir / "metrics.jsonl"
    if lock.is_file() and metrics.is_file() and lock.read_text().strip():
        return int(lock.read_text())
    return None


def _free(run_dir):
    from distill.core.rundir import RunLock

    with RunLock(run_dir):
        return True


@pytest.mark.slow  # one of the longest end-to-end checks: python -m pytest -m slow
def test_bench_under_signals_stops_its_workers_and_a_rerun_redoes_exactly_the_unfinished(
    tmp_path,
):
    """Issue 39: SIGTERM to one worker, then to the bench itself; nothing is orphaned and
    the reruns continue the stopped runs from their checkpoints."""
    import json
    import os
    import signal
    import subprocess
    import sys

    base = synthetic_cfg(tmp_path / "unused", train={"epochs": 400})
    base["teacher"] = {"name": "mlp", "args": {"hidden": [8]}}
    base["teacher"]["weights"] = str(
        make_teacher(tmp_path / "teacher.safetensors", {"hidden": [8]})
    )
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    spec = {"name": "sig", "base": "base.yaml", "out": "out", "seeds": [0], "jobs": 1}
    spec["methods"] = {}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))

    def bench():
        return subprocess.Popen(
            [sys.executable, "-m", "distill", "bench", "spec.yaml"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    out = tmp_path / "out/pair"
    proc = bench()
    pid = _wait_for(
        lambda: _lock_pid(out / "scratch/seed0") if (out / "scratch").exists() else None
    )
    os.kill(pid, signal.SIGTERM)  # the worker checkpoints and stops; the bench goes on
    kd = _wait_for(lambda: _lock_pid(out / "kd/seed0") if (out / "kd").exists() else None)
    proc.send_signal(signal.SIGTERM)  # the bench stops kd's worker, then itself
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "scratch/seed0: stopped by SIGTERM" in err
    assert "stopped by SIGTERM while training bench 'sig'" in err
    assert "Traceback" not in err
    with pytest.raises(ProcessLookupError):
        os.kill(kd, 0)  # no orphan
    assert _free(out / "kd/seed0") and _free(out / "scratch/seed0")
    for method in ("scratch", "kd"):
        saved = json.loads((out / method / "seed0/results.json").read_text())
        assert saved["complete"] is False
        assert (out / method / "seed0/checkpoints/last.safetensors").is_file()
    proc = bench()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "started pair/scratch/seed0 (resuming)" in err
    assert "started pair/kd/seed0 (resuming)" in err
    for method in ("scratch", "kd"):
        saved = json.loads((out / method / "seed0/results.json").read_text())
        assert saved["complete"] is True and saved["epochs"] == 400


def test_a_sweep_says_what_each_running_child_is_doing(tmp_path, capsys):
    """Issue 39: a long bench is never silent; after a quiet spell each running run's epoch
    (or its log's last line: a teacher cache being built) is printed."""
    from distill.app.runner import Job, Sweep

    cfg = synthetic_cfg(tmp_path / "r", train={"epochs": 1000})
    job = Job("pair/scratch/seed0", cfg)
    Sweep([job], parallel=1, logs=tmp_path / "logs", name="t", heartbeat_s=1.0).run()
    err = capsys.readouterr().err
    assert "running: pair/scratch/seed0 (epoch " in err and "/1000)" in err
    assert job.result["complete"] and "[1/1] pair/scratch/seed0: test " in err
