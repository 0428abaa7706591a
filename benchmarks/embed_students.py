"""The sentence-embedding students next to the MiniLM teacher, measured in one process.

Loads the teacher and the students of examples/embed/*.yaml (run them first), then on the
held-out sentences reports Spearman agreement of pairwise cosines, top-10 retrieval overlap,
parameters and CPU sentences/second, timing the models alternately (median of 5 rounds) so
the ratios are comparable on a noisy machine.

    python benchmarks/embed_students.py [runs/embed/half_depth runs/embed/narrow]
"""

from __future__ import annotations

import statistics
import time

from common import add_threads, apply_threads  # noqa: E402  (benchmarks/common.py)

from distill.app.build import load_data, load_model, weights_path
from distill.core.checkpoint import load_into, load_weights
from distill.core.config import load_config
from distill.llm.embed import encode, retrieval_overlap, similarity_agreement
from distill.models.encoders import minilm_teacher


def main(run_dirs: list[str], threads: int | None = None) -> None:
    apply_threads(threads)
    cfg = load_config(f"{run_dirs[0]}/config.yaml")
    data = load_data(cfg.data)
    test = data.test
    models = {"teacher (MiniLM-L6)": minilm_teacher().eval()}
    for d in run_dirs:
        c = load_config(f"{d}/config.yaml")
        m = load_model(c.student, data, "student")
        load_into(m, load_weights(weights_path(d))[0], d)
        models[f"student {c.name}"] = m.eval()
    t = encode(models["teacher (MiniLM-L6)"], test)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(5):
        for name, m in models.items():
            start = time.perf_counter()
            encode(m, test, batch_size=64)
            times[name].append(time.perf_counter() - start)
    print(f"{len(test)} held-out sentences")
    print(
        f"{'model':34s} {'params':>11s} {'Spearman':>9s} {'top-10':>7s} {'sent/s':>8s} {'speed-up':>8s}"
    )
    base = statistics.median(times["teacher (MiniLM-L6)"])
    for name, m in models.items():
        e = encode(m, test)
        speed = len(test) / statistics.median(times[name])
        params = sum(p.numel() for p in m.parameters())
        print(
            f"{name:34s} {params:11,d} {similarity_agreement(e, t):9.3f} "
            f"{100 * retrieval_overlap(e, t, 10):6.1f}% {speed:8.0f} "
            f"{base / statistics.median(times[name]):7.2f}x"
        )


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("run_dirs", nargs="*", default=["runs/embed/half_depth", "runs/embed/narrow"])
    add_threads(ap)
    args = ap.parse_args()
    main(args.run_dirs, args.threads)
