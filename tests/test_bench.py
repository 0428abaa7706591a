"""distill bench: statistics, planning, resume, leaderboard."""

import math

import pytest
import yaml
from helpers import synthetic_cfg

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
    assert by["x"]["negative_transfer"] and by["x"]["vs_kd"] == pytest.approx(-6.0)
    assert [r["method"] for r in rows] == ["kd", "scratch", "x"]  # best first


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
        "jobs": 1,
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
