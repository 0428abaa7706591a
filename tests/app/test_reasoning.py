"""The reasoning demo's pieces: rationales, answer parsing, and a tiny end-to-end run."""

from __future__ import annotations

import pytest

from distill.app.reasoning import parse_answer, rationale, solution

pytest.importorskip("transformers")


def test_rationales_follow_the_columns():
    assert rationale(47, 85, 2, "long") == "7+5+0=12,4+8+1=13"
    assert rationale(47, 85, 2, "short") == "21,31"
    assert solution(47, 85, 2, "long") == " L:7+5+0=12,4+8+1=13 A:132"
    assert solution(47, 85, 2, "none") == " A:132"
    assert parse_answer(" L:7+5+0=12,4+8+1=13 A:132") == 132
    assert parse_answer(" L:garbled") is None


def test_tiny_reasoning_demo_runs(tmp_path):
    from distill.app.reasoning import run_reasoning_demo

    rows = run_reasoning_demo(
        tmp_path,
        digits=1,
        n_train=60,
        n_test=20,
        teacher_epochs=1,
        student_epochs=1,
        progress=False,
    )
    names = [r["model"] for r in rows]
    assert any("answer only" in n for n in names) and any("step-by-step" in n for n in names)
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in rows)
    assert (tmp_path / "teacher_outputs.jsonl").is_file()


def test_self_improvement_loop_keeps_only_verified_outputs():
    from distill.app.reasoning import self_improvement_loop

    trained_on = []

    def generate(model, qs):
        return [q.upper() if i % 2 else q for i, q in enumerate(qs)]

    def train(model, pairs):
        trained_on.append(list(pairs))
        return model + 1

    model, history = self_improvement_loop(
        0,
        ["a", "b", "c", "d"],
        generate,
        lambda q, o: float(o == q.upper()),
        train,
        rounds=2,
        seed_pairs=[("s", "S")],
    )
    assert model == 2 and [h["kept"] for h in history] == [2, 2]
    assert trained_on[0] == [("s", "S"), ("b", "B"), ("d", "D")]


def test_tiny_self_improvement_run(tmp_path):
    from distill.app.reasoning import run_self_improvement

    rows = run_self_improvement(tmp_path, digits=1, labelled=20, unlabelled=30, rounds=1, epochs=1)
    assert [r["round"] for r in rows] == [0, 1] and 0 <= rows[1]["kept"] <= 30


def test_a_signal_stops_a_multi_run_command(monkeypatch):
    import distill.app.reasoning as reasoning
    from distill.app.cli import main
    from distill.core.errors import RunStopped, ensure_complete

    assert ensure_complete({"stopped_by": None}, "x") == {"stopped_by": None}
    with pytest.raises(RunStopped, match="SIGTERM"):
        ensure_complete({"stopped_by": "SIGTERM"}, "teacher")

    def stopped(*args, **kwargs):
        raise RunStopped("SIGTERM", "teacher")

    monkeypatch.setattr(reasoning, "run_reasoning_demo", stopped)
    assert main(["reasoning-demo"]) == 128 + 15  # the demo stops, it does not go on
