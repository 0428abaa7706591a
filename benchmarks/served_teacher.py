"""Training throughput with a served teacher against the same teacher held locally.

One `lm_kd` student, one data set, one teacher (a GPT-2 about 10x the student, random
weights: speed does not depend on them), in two set-ups measured side by side in one run:

- local: the teacher in the training process, run densely on every batch;
- served: the teacher behind `distill serve-teacher` (vLLM's completions API with
  `prompt_logprobs`) on 127.0.0.1, asked for the top-k log-probabilities of every batch.

Each round times `--steps` training steps (forward, backward, optimizer) of each set-up
after one warm-up step; the rounds alternate and the medians are compared. On one machine
the server competes with the trainer for the same cores, so this measures the protocol's
overhead (JSON, top-k, HTTP) rather than the gain of putting the teacher on other hardware.

    python benchmarks/served_teacher.py [--repeats 3] [--steps 10] [--k 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TEACHER = {"name": "hf_causal_lm", "args": {"arch": "gpt2", "n_embd": 256, "n_layer": 6,
                                            "n_head": 4}}  # fmt: skip


def start_server(folder: Path, tokenizer: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "distill", "serve-teacher", str(folder), "--tokenizer",
         str(tokenizer), "--port", "0", "--name", "teacher"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    while "serving" not in (line := proc.stdout.readline()):
        if not line:
            raise RuntimeError("the teacher server exited before listening")
    subprocess.Popen(["cat"], stdin=proc.stdout, stdout=subprocess.DEVNULL)  # drain its log
    return proc, line.split(" on ")[1].strip()


def tokens_per_second(built, steps: int) -> float:
    from distill.data import load_batch

    opt = torch.optim.AdamW(built.student.parameters(), lr=1e-3)
    n = len(built.data.train)
    batches = [torch.arange(i * 16, i * 16 + 16) % n for i in range(steps + 1)]
    tokens = 0
    for i, index in enumerate(batches):
        if i == 1:
            start = time.perf_counter()
        batch = load_batch(built.data.train, index)
        out = built.scheme.step(batch, i)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        tokens += int((batch["target"] >= 0).sum()) if i else 0
    return tokens / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--k", type=int, default=20)
    args = ap.parse_args()
    from distill.app.build import build
    from distill.core.checkpoint import save_weights
    from distill.core.config import parse_config
    from distill.llm.demo import DATA, STUDENT
    from distill.models import build_model

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="distill-served-"))
    base = {"name": "b", "data": DATA, "student": STUDENT, "train": {"progress": False}}
    local_cfg = {**base, "run_dir": str(root / "local"), "scheme": "supervised"}
    first = build(parse_config(local_cfg))
    teacher = build_model(TEACHER["name"], (64,), first.data.num_classes, TEACHER["args"])
    save_weights(root / "teacher.safetensors", teacher)
    teacher.save_pretrained(root / "teacher-hf")
    first.data.tokenizer.tok.save(str(root / "tokenizer.json"))
    proc, url = start_server(root / "teacher-hf", root / "tokenizer.json")
    try:
        local = {**local_cfg, "scheme": {"name": "lm_kd", "args": {}},
                 "teacher": {**TEACHER, "weights": str(root / "teacher.safetensors")}}  # fmt: skip
        served = {**local_cfg, "scheme": {"name": "lm_kd", "args": {"teacher_server": {
            "url": url, "top_k": args.k, "rows_per_request": 8, "concurrency": 2}}}}  # fmt: skip
        rates: dict[str, list[float]] = {"local": [], "served": []}
        for _ in range(args.repeats):
            for name, cfg in (("local", local), ("served", served)):
                rates[name].append(tokens_per_second(build(parse_config(cfg)), args.steps))
    finally:
        proc.kill()
    median = {k: statistics.median(v) for k, v in rates.items()}
    n_t = sum(p.numel() for p in teacher.parameters())
    n_s = sum(p.numel() for p in first.student.parameters())
    print(f"teacher {n_t:,} parameters, student {n_s:,}; batches of 16 x 64 tokens, k={args.k}")
    for name, values in rates.items():
        print(f"{name:7s} {median[name]:8.0f} tokens/s (median)  all: "
              f"{', '.join(f'{v:.0f}' for v in values)}")  # fmt: skip
    print(f"served / local: {median['served'] / median['local']:.2f}")
    print(json.dumps({"tokens_per_s": rates, "k": args.k}))


if __name__ == "__main__":
    main()
