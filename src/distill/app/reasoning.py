"""Distilling reasoning, checked by a program: multi-digit addition with rationales.

A character-level GPT teacher is trained here on problems written with a rationale in two
styles — long (every column: digits, carry in, sum, carry out) and short (only each column's
digit of the result and its carry) — then answers fresh training questions in either style.
Students learn from the teacher's outputs (black-box KD through generated data):

- answer only: question -> the teacher's answer;
- long / short / mixed rationales: question -> the teacher's rationale and answer (mixed:
  half long, half short: the "mix distillation" the surveys suggest for small students);
- step-by-step (Hsieh et al. 2023): two tasks on the same student, "answer" and "explain",
  each marked by its prefix; at test time the student answers directly.

Every answer is verified by the program that made the problem, so accuracy needs no labels
beyond arithmetic. `distill reasoning-demo` prints the table.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import torch

from distill.core.errors import ensure_complete
from distill.data.core import DataSplits
from distill.llm.generation import sample_continuations
from distill.llm.text import ByteTokenizer, TokenDataset


def problems(n: int, digits: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    hi = 10**digits - 1
    return [(rng.randint(0, hi), rng.randint(0, hi)) for _ in range(n)]


def question(a: int, b: int, digits: int, task: str = "") -> str:
    return f"{task}Q:{a:0{digits}d}+{b:0{digits}d}"


def rationale(a: int, b: int, digits: int, style: str) -> str:
    """Column by column from the right. long: 'a+b+c=s,' per column; short: 'd' + carry."""
    steps, carry = [], 0
    for i in range(digits):
        x, y = (a // 10**i) % 10, (b // 10**i) % 10
        s = x + y + carry
        steps.append(f"{x}+{y}+{carry}={s}" if style == "long" else f"{s % 10}{s // 10}")
        carry = s // 10
    return ",".join(steps)


def marker(style: str) -> str:
    return {"long": " L:", "short": " S:", "none": " A:"}[style]


def solution(a: int, b: int, digits: int, style: str) -> str:
    """What follows the question: the rationale in `style` (if any), then the answer."""
    body = "" if style == "none" else rationale(a, b, digits, style) + " A:"
    return f"{marker(style)}{body}{a + b}"


def parse_answer(text: str) -> int | None:
    tail = text.split("A:")[-1].strip()
    digits = "".join(ch for ch in tail[:8] if ch.isdigit())
    return int(digits) if digits else None


def rows_to_dataset(pairs: list[tuple[str, str]], length: int) -> TokenDataset:
    """Questions masked, completions (plus end-of-text) learned; padded to `length`."""
    from distill.llm.text import prompt_dataset

    return prompt_dataset(pairs, ByteTokenizer(), length)


def _splits(train: TokenDataset, val: TokenDataset, length: int) -> DataSplits:
    tok = ByteTokenizer()
    return DataSplits("arithmetic", train, val, val, (length,), tok.vocab_size, tokenizer=tok)


@torch.no_grad()
def answer_questions(
    model, questions: list[str], style: str, new_tokens: int, batch: int = 256
) -> list[str]:
    """Greedy completions after `question + marker(style)` (all questions share a length)."""
    tok = ByteTokenizer()
    out = []
    for i in range(0, len(questions), batch):
        prompts = torch.tensor(
            [[tok.bos_id, *tok.encode(q + marker(style))] for q in questions[i : i + batch]]
        )
        ids = sample_continuations(model, prompts, new_tokens, greedy=True)[:, prompts.shape[1] :]
        texts = []
        for row in ids.tolist():
            if tok.eos_id in row:
                row = row[: row.index(tok.eos_id)]
            texts.append(marker(style) + tok.decode(row))
        out += texts
    return out


def accuracy(model, tests: list[tuple[int, int]], digits: int, style: str, task: str = "") -> float:
    qs = [question(a, b, digits, task) for a, b in tests]
    new = {"none": digits + 3, "short": 3 * digits + digits + 6, "long": 9 * digits + digits + 6}[
        style
    ]
    answers = answer_questions(model, qs, style, new)
    return sum(parse_answer(t) == a + b for t, (a, b) in zip(answers, tests)) / len(tests)


def _train(
    name: str, out: Path, data: DataSplits, model_args: dict, epochs: int, seed: int, progress: bool
) -> tuple[Any, float]:
    from distill.core.settings import TrainSettings
    from distill.loop.rng import seed_everything
    from distill.loop.trainer import Trainer
    from distill.models import build_model
    from distill.schemes import Supervised

    seed_everything(seed)
    model = build_model("hf_causal_lm", data.input_shape, data.num_classes, model_args)
    settings = TrainSettings.model_validate(
        {
            "epochs": epochs,
            "batch_size": 64,
            "monitor": "nll",
            "seed": seed,
            "progress": progress,
            "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 0.01},
            "schedule": {"name": "cosine", "warmup_steps": 50},
        }
    )
    start = time.perf_counter()
    summary = Trainer(Supervised(model), data.train, data.val, settings, run_dir=out / name).fit()
    ensure_complete(summary, name)
    from distill.app.build import weights_path
    from distill.core.checkpoint import load_into, load_weights

    load_into(model, load_weights(weights_path(str(out / name)))[0], name)
    return model.eval(), time.perf_counter() - start


TEACHER_ARGS = {"arch": "gpt2", "n_embd": 128, "n_layer": 4, "n_head": 4}
STUDENT_ARGS = {"arch": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 2}


def _variants(qs: list[str], long_out: list[str], short_out: list[str]) -> dict[str, tuple]:
    """The students' training sets from the teacher's answers: name -> (pairs, the trace
    style the student is asked for, the task prefix)."""

    def answer_of(text: str) -> str:
        return f" A:{parse_answer(text)}"

    mixed = [(q, lo if i % 2 else sh) for i, (q, lo, sh) in enumerate(zip(qs, long_out, short_out))]
    return {
        "answer only": ([(q, answer_of(lo)) for q, lo in zip(qs, long_out)], "none", ""),
        "long rationales": (list(zip(qs, long_out)), "long", ""),
        "short rationales": (list(zip(qs, short_out)), "short", ""),
        "mixed long + short": (mixed, "short", ""),
        "step-by-step (answer + explain tasks)": (
            [("[ans]" + q, answer_of(lo)) for q, lo in zip(qs, long_out)]
            + [("[exp]" + q, lo) for q, lo in zip(qs, long_out)],
            "none",
            "[ans]",
        ),
    }


def _student_rows(name, variant, test, digits, length, out, epochs, seed, progress) -> list:
    """Train one student on its variant; a row per trace style it is asked for."""
    train_pairs, style, task = variant
    val_pairs = [
        (question(a, b, digits, task), solution(a, b, digits, style)) for a, b in test[:100]
    ]
    d = _splits(rows_to_dataset(train_pairs, length), rows_to_dataset(val_pairs, length), length)
    slug = name.split(" (")[0].replace(" ", "-").replace("+", "").replace("--", "-")
    model, secs = _train(slug, out, d, STUDENT_ARGS, epochs, seed, progress)
    styles = ["long", "short"] if name.startswith("mixed") else [style]
    rows = []
    for st in styles:  # a mixed student is asked for either trace
        label = f"student: {name}" + (f", asked {st}" if len(styles) > 1 else "")
        acc = accuracy(model, test, digits, st, task)
        rows.append({"model": label, "params": _params(model), "test_acc": acc, "seconds": secs})
    return rows


def run_reasoning_demo(
    out: str | Path = "runs/reasoning-demo",
    digits: int = 3,
    n_train: int = 6000,
    n_test: int = 500,
    teacher_epochs: int = 12,
    student_epochs: int = 12,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    length = 12 * digits + 24
    teacher_probs = problems(n_train, digits, seed)
    test = problems(n_test, digits, seed + 1)
    student_qs = problems(n_train, digits, seed + 2)  # the questions the teacher answers
    pairs = [
        (question(a, b, digits), solution(a, b, digits, s))
        for (a, b) in teacher_probs
        for s in ("long", "short")
    ]
    val = [(question(a, b, digits), solution(a, b, digits, "long")) for a, b in test[:100]]
    data = _splits(rows_to_dataset(pairs, length), rows_to_dataset(val, length), length)
    teacher, teacher_s = _train("teacher", out, data, TEACHER_ARGS, teacher_epochs, seed, progress)
    qs = [question(a, b, digits) for a, b in student_qs]
    new_long, new_short = 9 * digits + digits + 6, 3 * digits + digits + 6
    long_out = answer_questions(teacher, qs, "long", new_long)
    short_out = answer_questions(teacher, qs, "short", new_short)
    generated = [
        {"question": q, "long": lo, "short": sh} for q, lo, sh in zip(qs, long_out, short_out)
    ]
    (out / "teacher_outputs.jsonl").write_text("\n".join(json.dumps(g) for g in generated) + "\n")
    teacher_correct = sum(parse_answer(lo) == a + b for lo, (a, b) in zip(long_out, student_qs))
    rows = [
        {
            "model": f"teacher ({style} rationale)",
            "params": _params(teacher),
            "test_acc": accuracy(teacher, test, digits, style),
            "seconds": teacher_s if style == "long" else 0.0,
        }
        for style in ("long", "short")
    ]
    for name, variant in _variants(qs, long_out, short_out).items():
        rows += _student_rows(
            name, variant, test, digits, length, out, student_epochs, seed, progress
        )
    rows.append(
        {
            "model": "teacher answers used for training (correct)",
            "params": None,
            "test_acc": teacher_correct / len(student_qs),
            "seconds": 0.0,
        }
    )
    (out / "reasoning_demo.json").write_text(json.dumps(rows, indent=2))
    return rows


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def format_rows(rows: list[dict[str, Any]]) -> str:
    from distill.core.table import format_table

    return format_table(
        ["model", "params", "test answer accuracy", "train s"],
        [
            [
                r["model"],
                f"{r['params']:,}" if r["params"] else "-",
                f"{100 * r['test_acc']:.1f}%",
                f"{r['seconds']:.0f}",
            ]
            for r in rows
        ],
    )


# ----------------------------------------------------------------------------- self-improvement
def self_improvement_loop(
    model,
    questions: list[str],
    generate,
    score,
    train,
    rounds: int,
    threshold: float = 1.0,
    seed_pairs: list[tuple[str, str]] = (),
):
    """Generate -> keep what `score(question, output) >= threshold` -> fine-tune, `rounds`
    times (STaR / rejection-sampling fine-tuning, Zelikman et al. 2022). `generate(model,
    questions) -> outputs`, `train(model, pairs) -> model`; `seed_pairs` are always kept.
    Returns the model and, per round, how many outputs were kept."""
    history = []
    for r in range(rounds):
        outputs = generate(model, questions)
        kept = [(q, o) for q, o in zip(questions, outputs) if score(q, o) >= threshold]
        history.append({"round": r + 1, "kept": len(kept), "of": len(questions)})
        model = train(model, [*seed_pairs, *kept])
    return model, history


def run_self_improvement(
    out: str | Path = "runs/self-improve",
    digits: int = 3,
    labelled: int = 2000,
    unlabelled: int = 3000,
    rounds: int = 3,
    epochs: int = 8,
    seed: int = 0,
    progress: bool = False,
):
    """A student starts from few labelled rationales; each round it answers unlabelled
    questions, the program keeps the verified ones, and it is fine-tuned on them."""
    out = Path(out)
    length = 12 * digits + 24
    seed_probs = problems(labelled, digits, seed + 10)
    pool = problems(unlabelled, digits, seed + 11)
    test = problems(500, digits, seed + 1)
    seed_pairs = [(question(a, b, digits), solution(a, b, digits, "long")) for a, b in seed_probs]
    answers = {question(a, b, digits): a + b for a, b in pool}
    val = [(question(a, b, digits), solution(a, b, digits, "long")) for a, b in test[:100]]
    val_set = rows_to_dataset(val, length)
    counter = {"round": 0}

    def train(_model, pairs):
        counter["round"] += 1
        data = _splits(rows_to_dataset(pairs, length), val_set, length)
        model, _ = _train(
            f"round{counter['round']}", out, data, STUDENT_ARGS, epochs, seed, progress
        )
        return model

    def generate(model, qs):
        return answer_questions(model, qs, "long", 9 * digits + digits + 6)

    def score(q, o):
        return float(parse_answer(o) == answers[q])

    model = train(None, seed_pairs)
    rows = [{"round": 0, "kept": 0, "test_acc": accuracy(model, test, digits, "long")}]
    for r in range(rounds):
        model, hist = self_improvement_loop(
            model, list(answers), generate, score, train, 1, seed_pairs=seed_pairs
        )
        rows.append(
            {
                "round": r + 1,
                "kept": hist[0]["kept"],
                "test_acc": accuracy(model, test, digits, "long"),
            }
        )
    return rows
