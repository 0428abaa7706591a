"""`distill lm-demo`: a small GPT-2 teacher on real English text, then students from scratch
and by forward KL, reverse KL, JSD, skew KL and on-policy KD, compared in one table:
held-out perplexity, token agreement with the teacher, ROUGE-L of greedy continuations
against the teacher's, and wall time. Runs offline on CPU in minutes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from distill.app.build import build
from distill.app.run import run_experiment
from distill.core.config import parse_config
from distill.core.errors import ensure_complete

DATA = {
    "name": "text",
    "options": {"corpus": "python_docs", "tokenizer": "bpe", "vocab_size": 2048, "block_size": 64},
}
TEACHER = {
    "name": "hf_causal_lm",
    "args": {"arch": "gpt2", "n_embd": 128, "n_layer": 4, "n_head": 4},
}
STUDENT = {
    "name": "hf_causal_lm",
    "args": {"arch": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 2},
}
STUDENTS: dict[str, dict[str, Any]] = {
    "forward KL": {"divergence": "forward_kl"},
    "reverse KL": {"divergence": "reverse_kl"},
    "JSD (beta 0.5)": {"divergence": "jsd", "beta": 0.5},
    "skew KL (alpha 0.1)": {"divergence": "skew_kl", "alpha": 0.1},
    "on-policy JSD (lambda 0.5)": {
        "divergence": "jsd",
        "beta": 0.5,
        "on_policy": {"fraction": 0.5, "prompt_tokens": 16},
    },
}


def rouge_l(candidate: list[int], reference: list[int]) -> float:
    """ROUGE-L F1 between two token sequences (longest common subsequence; Lin 2004)."""
    if not candidate or not reference:
        return 0.0
    prev = [0] * (len(reference) + 1)
    for c in candidate:
        row = [0]
        for j, r in enumerate(reference, 1):
            row.append(prev[j - 1] + 1 if c == r else max(prev[j], row[j - 1]))
        prev = row
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(candidate), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


@torch.no_grad()
def generation_overlap(
    student, teacher, test, prompt_tokens: int = 16, new_tokens: int = 32, rows: int = 64
) -> float:
    """Mean ROUGE-L of the student's greedy continuations against the teacher's."""
    from distill.llm.generation import sample_continuations

    prompts = test.ids[:rows, :prompt_tokens]
    s = sample_continuations(student, prompts, new_tokens, greedy=True)[:, prompt_tokens:]
    t = sample_continuations(teacher, prompts, new_tokens, greedy=True)[:, prompt_tokens:]
    return sum(rouge_l(a, b) for a, b in zip(s.tolist(), t.tolist())) / len(prompts)


def _train(cfg: dict) -> tuple[dict, float]:
    start = time.perf_counter()
    result = ensure_complete(run_experiment(parse_config(cfg), overwrite=True), cfg["name"])
    return result, time.perf_counter() - start


def _student_runs(out: Path, train: dict, epochs: int, teacher_spec: dict) -> dict[str, dict]:
    """The student runs' configs: from scratch, then one per divergence in STUDENTS."""
    runs = {
        "scratch": {
            "name": "lm-scratch",
            "run_dir": str(out / "scratch"),
            "scheme": "supervised",
            "data": DATA,
            "student": STUDENT,
            "train": {**train, "epochs": epochs},
        }
    }
    for name, args in STUDENTS.items():
        slug = name.split(" (")[0].replace(" ", "-").lower()
        runs[name] = {
            "name": f"lm-{slug}",
            "run_dir": str(out / slug),
            "data": DATA,
            "scheme": {"name": "lm_kd", "args": args},
            "teacher": teacher_spec,
            "student": STUDENT,
            "train": {**train, "epochs": epochs},
        }
    return runs


def _student_row(name: str, cfg: dict, built: Any) -> dict[str, Any]:
    """Train one student run; its row of test perplexity, agreement and ROUGE-L."""
    from distill.llm.text import lm_metrics

    teacher, test = built.teacher, built.data.test
    result, seconds = _train(cfg)
    trained = {**cfg, "scheme": "supervised", "teacher": None}
    trained["student"] = {**STUDENT, "weights": cfg["run_dir"]}
    student = build(parse_config(trained)).student
    metrics = lm_metrics(student, test, teacher=teacher, vocab=built.data.num_classes)
    return {
        "model": f"student: {name}",
        "params": sum(p.numel() for p in student.parameters()),
        "test_ppl": result["test_ppl"],
        "agreement": metrics["agreement"],
        "rouge_l": generation_overlap(student, teacher, test),
        "seconds": seconds,
    }


def run_lm_demo(
    out: str | Path = "runs/lm-demo",
    epochs: int = 6,
    teacher_epochs: int = 12,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    out = Path(out)
    train = {
        "batch_size": 32,
        "monitor": "nll",
        "seed": seed,
        "progress": progress,
        "optimizer": {"name": "adamw", "lr": 0.002, "weight_decay": 0.01},
        "schedule": {"name": "cosine", "warmup_steps": 50},
    }
    teacher_dir = out / "teacher"
    teacher_res, teacher_s = _train(
        {
            "name": "lm-teacher",
            "run_dir": str(teacher_dir),
            "scheme": "supervised",
            "data": DATA,
            "student": TEACHER,
            "train": {**train, "epochs": teacher_epochs},
        }
    )
    runs = _student_runs(out, train, epochs, {**TEACHER, "weights": str(teacher_dir)})
    built = build(parse_config(runs["forward KL"]))  # the trained teacher and the test split
    rows = [
        {
            "model": "teacher (GPT-2 4x128)",
            "params": sum(p.numel() for p in built.teacher.parameters()),
            "test_ppl": teacher_res["test_ppl"],
            "agreement": 1.0,
            "rouge_l": 1.0,
            "seconds": teacher_s,
        }
    ]
    rows += [_student_row(name, cfg, built) for name, cfg in runs.items()]
    (out / "lm_demo.json").write_text(json.dumps(rows, indent=2))
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    from distill.core.table import format_table

    return format_table(
        ["model", "params", "test ppl", "token agreement", "ROUGE-L vs teacher", "wall s"],
        [
            [
                r["model"],
                f"{r['params']:,}",
                f"{r['test_ppl']:.1f}",
                f"{100 * r['agreement']:.1f}%",
                f"{r['rouge_l']:.3f}",
                f"{r['seconds']:.0f}",
            ]
            for r in rows
        ],
    )
