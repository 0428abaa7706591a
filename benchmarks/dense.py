"""Detection and segmentation distillation on the digit-scenes testbed, one table each.

    python benchmarks/dense.py [--only detection segmentation] [--epochs N] [--seed 0]

Trains the teachers, the scratch students and one distilled student per method from
examples/dense (reusing finished runs), then writes runs/dense/dense.md and dense.json:
mAP (0.5:0.95 and 0.5) or mIoU, parameters and CPU latency of a batch of 32 scenes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EX = ROOT / "examples" / "dense"

DETECTION = [
    ("teacher", "det_teacher"),
    ("student, no teacher", "det_scratch"),
    ("response KD (class T=2, GIoU boxes, centerness)", "det_response"),
    ("foreground feature imitation (Wang et al. 2019)", "det_fg_imitation"),
    ("multi-level, learnt level weights + response", "det_adaptive_levels"),
    ("channel-wise (CWD)", "det_cwd"),
    ("masked generative (MGD)", "det_mgd"),
]
SEGMENTATION = [
    ("teacher", "seg_teacher"),
    ("student, no teacher", "seg_scratch"),
    ("pixel-wise KD", "seg_pixel_kd"),
    ("pixel-wise + pair-wise affinity", "seg_pairwise"),
    ("pixel-wise + CIRKD (memory bank)", "seg_cirkd"),
    ("channel-wise (CWD) on logits", "seg_cwd"),
]


def run(name: str, out: Path, seed: int, epochs: int | None) -> dict:
    from distill.app.run import run_experiment
    from distill.core.config import load_config

    overrides = ["train.progress=false", f"train.seed={seed}", f"run_dir={out}/{name}"]
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    cfg = load_config(EX / f"{name}.yaml", overrides)
    if cfg.teacher is not None:
        teacher = "det_teacher" if name.startswith("det") else "seg_teacher"
        cfg = load_config(EX / f"{name}.yaml", [*overrides, f"teacher.weights={out}/{teacher}"])
    done = cfg.resolved_run_dir() / "results.json"
    if done.is_file():
        return json.loads(done.read_text())
    t = time.perf_counter()
    result = run_experiment(cfg, overwrite=True)
    print(f"{name}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return result


def table(
    rows: list[tuple[str, str]], out: Path, seed: int, epochs: int | None, task: str
) -> tuple[str, dict]:
    metric = ("test_map", "test_map50") if task == "detection" else ("test_miou", "test_pixel_acc")
    head = ("mAP 0.5:0.95", "mAP 0.5") if task == "detection" else ("mIoU", "pixel acc")
    lines = [
        f"| model | {head[0]} | {head[1]} | params | weights (KiB) | CPU latency, 32 scenes (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    results = {}
    for label, name in rows:
        r = run(name, out, seed, None if name.endswith("teacher") else epochs)
        results[name] = r
        size = (out / name / "checkpoints" / "best.safetensors").stat().st_size / 1024
        lines.append(
            f"| {label} | {100 * r[metric[0]]:.1f} | {100 * r[metric[1]]:.1f} | "
            f"{int(r['params']):,} | {size:.0f} | {r['latency_ms_b32_cpu']:.1f} |"
        )
    return "\n".join(lines), results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--only",
        nargs="*",
        choices=["detection", "segmentation"],
        default=["detection", "segmentation"],
    )
    p.add_argument("--out", default="runs/dense")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="students' epochs (default: configs')")
    args = p.parse_args()
    out = Path(args.out)
    sections, results = [], {}
    for task in args.only:
        rows = DETECTION if task == "detection" else SEGMENTATION
        text, res = table(rows, out, args.seed, args.epochs, task)
        sections.append(f"## {task}\n\n{text}\n")
        results[task] = res
    out.mkdir(parents=True, exist_ok=True)
    (out / "dense.md").write_text("\n".join(sections))
    (out / "dense.json").write_text(json.dumps(results, indent=2))
    print("\n".join(sections))


if __name__ == "__main__":
    main()
