"""Scratch vs distilled student over several seeds, with the demo's exact recipe.

    python benchmarks/demo_seeds.py --dataset mnist1d --seeds 0 1 2

Each seed trains its own teacher, scratch student and KD student (all three share the
seed), so the spread includes teacher variation. Prints mean +- sample std per model and
the per-seed KD gain, and writes the raw rows to runs/demo-seeds/results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from distill.app.demo import run_demo
from distill.core.checkpoint import atomic_write_text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="mnist1d")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/demo-seeds")
    args = parser.parse_args()
    per_seed = []
    for seed in args.seeds:
        result = run_demo(args.dataset, Path(args.out) / f"seed{seed}", seed=seed)
        accs = {r["model"]: r["test_acc"] for r in result["rows"]}
        agree = {r["model"]: r["agreement"] for r in result["rows"]}
        per_seed.append({"seed": seed, "acc": accs, "agreement": agree})
        print(
            f"seed {seed}: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in accs.items()), flush=True
        )
    print(f"\n{args.dataset}, {len(args.seeds)} seeds (mean +- std of test accuracy):")
    for model in per_seed[0]["acc"]:
        values = [100 * s["acc"][model] for s in per_seed]
        agree = [100 * s["agreement"][model] for s in per_seed]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        print(
            f"  {model:16s} {statistics.mean(values):5.1f} +- {std:.1f}   agreement {statistics.mean(agree):5.1f}%"
        )
    gains = [100 * (s["acc"]["student-kd"] - s["acc"]["student-scratch"]) for s in per_seed]
    gain_std = statistics.stdev(gains) if len(gains) > 1 else 0.0
    print(
        f"  KD gain per seed: {', '.join(f'{g:+.1f}' for g in gains)} points "
        f"(mean {statistics.mean(gains):+.1f} +- {gain_std:.1f})"
    )
    atomic_write_text(Path(args.out) / "results.json", json.dumps(per_seed, indent=2))


if __name__ == "__main__":
    main()
