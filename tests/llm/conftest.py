"""The trained GPT-2 teacher the language-model tests share (trained once; read only)."""

from __future__ import annotations

import pytest

from distill.app.run import run_experiment
from distill.core.config import parse_config


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory):
    from test_llm import DATA, GPT2, TRAIN

    run = tmp_path_factory.mktemp("lm") / "teacher"
    cfg = {
        "name": "t",
        "run_dir": str(run),
        "scheme": "supervised",
        "data": DATA,
        "student": GPT2,
        "train": TRAIN,
    }
    result = run_experiment(parse_config(cfg))
    assert result["complete"] and result["test_ppl"] > 1
    return run
