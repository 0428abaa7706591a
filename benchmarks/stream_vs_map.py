"""Streamed Hugging Face data trains to the accuracy of the same data map-style.

The digits written as Parquet train/test files (`distill sample-data`); an MLP trained by
`hf` with `streaming: false` (shuffled by index each epoch, validation carved from train)
and with `streaming: true` (file order through a 512-row shuffle buffer, the first 144
rows held out for validation), for the same number of optimizer steps, on 3 seeds.

    python benchmarks/stream_vs_map.py [--seeds 0 1 2] [--epochs 20] [--out DIR]

Prints one line per run and, last, one JSON object with the mean and std of each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from distill.app.run import run_experiment
from distill.core.config import parse_config
from distill.data.samples import write_digits


def config(data_dir: Path, run_dir: Path, seed: int, streaming: bool, epochs: int) -> dict:
    files = {
        "train": str(data_dir / "digits_split" / "train.parquet"),
        "test": str(data_dir / "digits_split" / "test.parquet"),
    }
    options = {"path": "parquet", "data_files": files, "label": "digit"}
    train = {
        "epochs": epochs,
        "batch_size": 64,
        "seed": seed,
        "progress": False,
        "optimizer": {"name": "adamw", "lr": 0.003},
    }
    if streaming:
        # 1,437 training rows, 144 held out: 1,293 left, 20 full batches per pass
        options.update(streaming=True, num_classes=10, val_samples=144, shuffle_buffer=512)
        train["max_steps"] = 20 * epochs
    return {
        "name": "stream" if streaming else "map",
        "run_dir": str(run_dir),
        "scheme": "supervised",
        "data": {"name": "hf", "options": options, "val_fraction": 0.1},
        "student": {"name": "mlp", "args": {}},
        "train": train,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", default="bench_data")
    args = parser.parse_args()
    data_dir = write_digits(Path(args.out) / "sample", hf=False)
    acc: dict[str, list[float]] = {"map": [], "stream": []}
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        for seed in args.seeds:
            for streaming in (False, True):
                kind = "stream" if streaming else "map"
                cfg = config(data_dir, Path(tmp) / f"{kind}{seed}", seed, streaming, args.epochs)
                result = run_experiment(parse_config(cfg))
                acc[kind].append(result["test_acc"])
                print(
                    f"seed {seed} {kind}: test acc {result['test_acc']:.4f}, steps {result['steps']}"
                )
    summary = {
        k: {
            "mean": statistics.mean(v),
            "std": statistics.stdev(v) if len(v) > 1 else 0.0,
            "runs": v,
        }
        for k, v in acc.items()
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
