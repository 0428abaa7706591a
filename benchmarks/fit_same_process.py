"""Whole `fit()` calls of distill against the hand-written loop, in one process, with the
end-of-epoch work switched on and off, to say what each part costs.

`whole_run_overhead.py` compares fresh processes; on a shared machine two processes a few
seconds apart can differ by 25 %. Here every variant and the hand-written loop
(`whole_run_overhead.child_hand`) run one after another in one process, round after round,
the order rotating each round so that no variant always follows the same one. Each distill
variant is a full `Trainer.fit()` of the same 25-epoch MNIST-1D KD job, the run dir,
metrics log and checkpoint files included:

- `default`: validation, the best weights and the resume checkpoint every epoch;
- `no-checkpoint`: validation and the best weights every epoch, the resume checkpoint at the
  end only (`train.checkpoint_every` = the epoch count);
- `no-eval`: neither, but at the end (`train.eval_every` = `checkpoint_every` = epochs).

Reported per variant, medians over the rounds of the paired ratios to the hand-written loop
of the same round: the whole `fit()`, the training epochs alone, and the share of `fit()`
spent outside the training epochs.

    python benchmarks/fit_same_process.py [--rounds 8] [--epochs 25] [--threads N]
        [--variants default,no-checkpoint,no-eval] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from common import add_threads, apply_threads, fresh_dir
from whole_run_overhead import TEACHER, child_hand, trainer_for

VARIANTS = {  # name: (eval_every, checkpoint_every) as a function of the epoch count
    "default": lambda e: (1, 1),
    "no-checkpoint": lambda e: (1, e),
    "no-eval": lambda e: (e, e),
}


def _distill_fit(work: Path, epochs: int, variant: str) -> tuple[float, float]:
    """(whole fit, training epochs) seconds of one distill run of `variant`."""
    trainer = trainer_for(work, epochs, *VARIANTS[variant](epochs))
    spent, train_epoch = [0.0], trainer._train_epoch

    def timed_epoch():
        t0 = time.perf_counter()
        try:
            return train_epoch()
        finally:
            spent[0] += time.perf_counter() - t0

    trainer._train_epoch = timed_epoch
    t0 = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - t0, spent[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", type=Path, default=None)
    add_threads(ap)
    args = ap.parse_args()
    from distill.app.startup import settle_startup

    settle_startup()  # as `distill run` starts; both loops then run on the same settled heap
    threads = apply_threads(args.threads)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    import torch

    from distill.core.checkpoint import save_weights
    from distill.data import load_dataset
    from distill.models import build_model

    root = fresh_dir(args.out, "fit-same-process-")
    data = load_dataset("mnist1d")
    torch.manual_seed(0)
    teacher = build_model(TEACHER["name"], data.input_shape, data.num_classes, TEACHER["args"])
    save_weights(root / "teacher.safetensors", teacher)
    hand_args = argparse.Namespace(epochs=args.epochs, seed=0)
    kinds = [*variants, "hand"]
    rows: list[dict[str, tuple[float, float]]] = []
    for r in range(args.rounds + 1):  # round 0 warms up and is dropped
        row = {}
        for k in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
            work = root / f"{k}-{r}"
            work.mkdir()
            if k == "hand":
                h = child_hand(work, hand_args)
                row[k] = (h["fit"], h["train"])
            else:
                row[k] = _distill_fit(work, args.epochs, k)
        if r:
            rows.append(row)
            print(
                f"round {r}: " + ", ".join(f"{k} {v[0]:.2f} s" for k, v in row.items()),
                file=sys.stderr,
            )

    def med(fn) -> float:
        return round(statistics.median(fn(row) for row in rows), 4)

    report = {
        "benchmark": "fit_same_process",
        "threads": threads,
        "epochs": args.epochs,
        "rounds": args.rounds,
        "hand_end_of_epoch_share": med(lambda row: 1 - row["hand"][1] / row["hand"][0]),
    }
    for v in variants:
        report[v] = {
            "fit_ratio": med(lambda row, v=v: row[v][0] / row["hand"][0]),
            "train_epochs_ratio": med(lambda row, v=v: row[v][1] / row["hand"][1]),
            "end_of_epoch_share": med(lambda row, v=v: 1 - row[v][1] / row[v][0]),
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
