"""When the teacher breaks the budget: does `distill auto` hand over a better student with
its compressed candidates (the teacher pruned to fit, KD recovery) than with the plain
family students alone?

    python benchmarks/auto_compress.py --datasets digits mnist1d --out runs/bench-auto-compress

For each dataset (the teachers and data of `benchmarks/auto.py`), a budget of a quarter of
the teacher's parameters, and the same trial count and epochs, `distill auto` runs twice
side by side: `--compress off` (the family students) and `--compress auto` (those, plus
the teacher pruned to fit). Printed per dataset: the student each hands over, its test
accuracy (mean of 3 seeds, read once at the end), its parameters and its latency measured
again after training, and both wall times.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from auto import _datasets, _settings, prepare  # noqa: E402
from common import fresh_dir  # noqa: E402


def bench(name: str, spec: dict, root: Path, trials: int) -> list[dict]:
    from distill.app.auto import auto

    folder, teacher_dir, _, _, budget = prepare(name, spec, root)
    rows = []
    for compress in ("off", "auto"):
        started = time.perf_counter()
        result = auto(
            _settings(
                spec, teacher_dir, folder / f"compress-{compress}", budget=budget,
                trials=trials, max_candidates=2, compress=compress,
            )
        )  # fmt: skip
        wall = time.perf_counter() - started
        summary = json.loads((folder / f"compress-{compress}" / "auto.json").read_text())
        handed = summary["handed_over"]["from_run"]
        arm = next(a for a in summary["comparison"] if handed in a["run_dirs"])
        shipped = summary["handed_over"]["measured"]
        rows.append(
            {
                "dataset": name,
                "compress": compress,
                "budget_params": budget["max_params"],
                "handed_over": arm["key"],
                "test": 100 * arm["test"]["mean"],
                "test_ci95": 100 * (arm["test"]["ci95"] or 0.0),
                "params": shipped["params"],
                "latency_ms": shipped["latency_ms"],
                "wall_s": wall,
                "verdict": result.verdict,
            }
        )
        print(json.dumps(rows[-1], indent=1), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["digits", "mnist1d"])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-auto-compress"))
    args = ap.parse_args()
    root = fresh_dir(args.out, "compress-")
    specs = _datasets(root)
    rows = [r for name in args.datasets for r in bench(name, specs[name], root, args.trials)]
    (root / "results.json").write_text(json.dumps(rows, indent=2))
    print(f"\n{'dataset':8s} {'compress':8s} {'test %':>13s} {'params':>8s} {'ms':>7s} "
          f"{'wall s':>6s}  handed over")  # fmt: skip
    for r in rows:
        print(
            f"{r['dataset']:8s} {r['compress']:8s} {r['test']:6.2f} ± {r['test_ci95']:4.2f} "
            f"{r['params']:8,} {r['latency_ms']:7.4f} {r['wall_s']:6.0f}  {r['handed_over']}"
        )
    print(f"results: {root / 'results.json'}")


if __name__ == "__main__":
    main()
