"""Data-free distillation on MNIST-1D: what a student learns without seeing any real input.

Trains the MNIST-1D teacher (configs/mnist1d_teacher.yaml; reused when `--teacher` names a
finished run), then the 2.9k-parameter student from it four ways, all with the example
configs in examples/schemes/: KD on the real training data (the reference), DAFL, DFAD
(ZSKT's KL) and DeepInversion, which never read a real training input. Reports each
student's real test accuracy and writes samples.png: real signals next to what each
method synthesised (classes as the teacher labels them).

    python benchmarks/data_free.py [--epochs 40] [--teacher runs/mnist1d-teacher] [--out DIR]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import add_threads, apply_threads, fresh_dir  # noqa: E402  (benchmarks/common.py)

from distill.app.build import build
from distill.app.run import run_experiment
from distill.core.checkpoint import load_checkpoint
from distill.core.config import load_config

ROOT = Path(__file__).parent.parent
METHODS = {
    "kd_real_data": (
        "examples/schemes/dafl.yaml",
        [
            "scheme=offline",
            "objective={task_weight: 0.1, terms: [{loss: kd, weight: 0.9, "
            "args: {temperature: 4.0}}]}",
        ],
    ),
    "dafl": ("examples/schemes/dafl.yaml", []),
    "dfad": ("examples/schemes/dfad.yaml", []),
    "deep_inversion": ("examples/schemes/deep_inversion.yaml", []),
}


def plot_samples(panels: dict[str, tuple[torch.Tensor, torch.Tensor]], path: Path) -> None:
    """One row per method: a few 1-D signals, each titled with the teacher's class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 6
    fig, axes = plt.subplots(len(panels), cols, figsize=(2.2 * cols, 1.6 * len(panels)))
    for r, (name, (x, cls)) in enumerate(panels.items()):
        for c in range(cols):
            ax = axes[r, c]
            ax.plot(x[c].reshape(-1).numpy(), lw=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"class {int(cls[c])}", fontsize=7)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--teacher", type=Path, default=None, help="a finished teacher run dir")
    ap.add_argument("--out", type=Path, default=None)
    add_threads(ap)
    args = ap.parse_args()
    apply_threads(args.threads)
    out = fresh_dir(args.out, "data-free-")
    teacher = args.teacher
    if teacher is None:
        teacher = out / "teacher"
        run_experiment(
            load_config(
                ROOT / "configs/mnist1d_teacher.yaml",
                [f"run_dir={teacher}", "train.progress=false"],
            ),
            overwrite=True,
        )
    results, panels = {}, {}
    for name, (config, extra) in METHODS.items():
        overrides = [
            *extra,
            f"run_dir={out / name}",
            f"teacher.weights={teacher}",
            f"train.epochs={args.epochs}",
            "train.progress=false",
        ]
        cfg = load_config(ROOT / config, overrides)
        start = time.perf_counter()
        summary = run_experiment(cfg, overwrite=True)
        results[name] = {
            "test_acc": summary["test_acc"],
            "teacher_test_acc": summary["teacher_test_acc"],
            "seconds": time.perf_counter() - start,
        }
        print(f"{name}: test acc {summary['test_acc']:.4f}", flush=True)
        built = build(cfg)
        if name == "kd_real_data":
            x = built.data.train.inputs[:6]
        else:  # the generator / bank as training left it
            ckpt = load_checkpoint(out / name / "checkpoints" / "last.safetensors")
            built.scheme.modules.load_state_dict(ckpt["modules"])
            x = built.scheme.samples(6, seed=1)
        with torch.no_grad():
            built.teacher.eval()
            panels["real" if name == "kd_real_data" else name] = (x, built.teacher(x).argmax(-1))
    plot_samples(panels, out / "samples.png")
    result = {
        "benchmark": "data_free",
        "epochs": args.epochs,
        "results": results,
        "samples_plot": str(out / "samples.png"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
