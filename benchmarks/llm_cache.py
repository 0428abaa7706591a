"""Storage per token and KL error of the sparse teacher-logit caches against dense logits.

Uses a trained teacher and student from `distill lm-demo` (runs/lm-demo/teacher and
runs/lm-demo/scratch by default) on the held-out split: the exact per-token KL(teacher ||
student) from dense logits next to its top-k (k tokens + tail bucket) and sampled (k draws)
estimates, for several k.

    python benchmarks/llm_cache.py [--teacher runs/lm-demo/teacher] [--student runs/lm-demo/scratch]
"""

from __future__ import annotations

import argparse

import torch

from distill.app.build import load_model
from distill.core.config import parse_config
from distill.data import load_batch
from distill.llm.cache import cache_kl_error
from distill.llm.cache_store import Layout
from distill.llm.demo import DATA, STUDENT, TEACHER


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="runs/lm-demo/teacher")
    ap.add_argument("--student", default="runs/lm-demo/scratch")
    ap.add_argument("--ks", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--seeds", type=int, default=5)
    a = ap.parse_args()
    from distill.app.build import load_data

    cfg = parse_config({"scheme": "supervised", "data": DATA, "student": STUDENT})
    data = load_data(cfg.data)
    teacher = load_model(
        parse_config({"student": {**TEACHER, "weights": a.teacher}}).student, data, "teacher"
    ).eval()
    student = load_model(
        parse_config({"student": {**STUDENT, "weights": a.student}}).student, data, "student"
    ).eval()
    batch = load_batch(data.test, torch.arange(len(data.test)))
    with torch.no_grad():
        t = teacher(input_ids=batch["input"]).logits.reshape(-1, data.num_classes)
        s = student(input_ids=batch["input"]).logits.reshape(-1, data.num_classes)
    vocab = data.num_classes
    print(f"{len(t)} held-out tokens, vocabulary {vocab}; dense fp16 logits: {2 * vocab} B/token")
    print("mode    k    bytes/token  dense KL   cached KL  rel. error")
    for mode in ("topk", "sample"):
        for k in a.ks:
            runs = [
                cache_kl_error(t, s, mode, k, seed=i)
                for i in range(a.seeds if mode == "sample" else 1)
            ]
            cached = sum(r["cached_kl"] for r in runs) / len(runs)
            dense = runs[0]["dense_kl"]
            per_token = Layout(mode, k, vocab, 1).raw_bytes_per_token()  # 16-bit, no zstd
            print(
                f"{mode:6s} {k:4d}  {per_token:10.1f}  {dense:8.4f}  {cached:9.4f}  "
                f"{abs(cached - dense) / dense:9.2%}"
            )


if __name__ == "__main__":
    main()
