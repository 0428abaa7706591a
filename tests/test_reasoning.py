"""The reasoning demo's pieces: rationales, answer parsing, and a tiny end-to-end run."""

from __future__ import annotations

import pytest

from distill.reasoning import parse_answer, rationale, solution

pytest.importorskip("transformers")


def test_rationales_follow_the_columns():
    assert rationale(47, 85, 2, "long") == "7+5+0=12,4+8+1=13"
    assert rationale(47, 85, 2, "short") == "21,31"
    assert solution(47, 85, 2, "long") == " L:7+5+0=12,4+8+1=13 A:132"
    assert solution(47, 85, 2, "none") == " A:132"
    assert parse_answer(" L:7+5+0=12,4+8+1=13 A:132") == 132
    assert parse_answer(" L:garbled") is None


def test_tiny_reasoning_demo_runs(tmp_path):
    from distill.reasoning import run_reasoning_demo

    rows = run_reasoning_demo(tmp_path, digits=1, n_train=60, n_test=20, teacher_epochs=1,
                              student_epochs=1, progress=False)
    names = [r["model"] for r in rows]
    assert any("answer only" in n for n in names) and any("step-by-step" in n for n in names)
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in rows)
    assert (tmp_path / "teacher_outputs.jsonl").is_file()
