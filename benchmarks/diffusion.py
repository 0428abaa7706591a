"""Sample quality against sampling steps: a diffusion teacher, its progressively distilled
students (Salimans & Ho 2022) and a data-free student (DKDM-style), side by side.

    python benchmarks/diffusion.py            # trains what is missing, then measures
    python benchmarks/diffusion.py --data points

Trains (or reuses) the runs of examples/diffusion/<data>_{teacher,progressive,dkdm}.yaml,
then measures every model with the same seeded noise: the teacher undistilled at each step
count, each round's student at its own, the data-free student, and real held-out data as
the floor. Digits: Fréchet distance in a digits classifier's feature space (lower is
better; train vs test images give the floor). Points: squared MMD. Writes table.md,
results.json and samples.png to runs/diffusion/<data>/report.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from distill.app.build import load_data, weights_path  # noqa: E402
from distill.app.run import run_experiment  # noqa: E402
from distill.core.checkpoint import atomic_write_bytes, atomic_write_text  # noqa: E402
from distill.core.config import load_config  # noqa: E402
from distill.data import load_batch  # noqa: E402
from distill.diffusion.core import sample  # noqa: E402
from distill.diffusion.metrics import sample_quality  # noqa: E402
from distill.models import build_model  # noqa: E402
from distill.models.weights import restore_weights  # noqa: E402


def _ensure(path: Path) -> Path:
    cfg = load_config(path)
    run_dir = cfg.resolved_run_dir()
    if not (run_dir / "results.json").is_file():
        print(f"training {path.name} -> {run_dir}", file=sys.stderr)
        run_experiment(load_config(path, ["train.progress=false"]), overwrite=run_dir.exists())
    return run_dir


def _model(spec, data, weights: Path):
    model = build_model(spec.name, data.input_shape, data.num_classes, spec.args)
    restore_weights(model, weights, spec.name)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["digits", "points"], default="digits")
    parser.add_argument("--samples", type=int, default=450)
    parser.add_argument("--out", default="runs/diffusion", help="report folder (under the cwd)")
    args = parser.parse_args()
    ex = ROOT / "examples" / "diffusion"
    teacher_dir = _ensure(ex / f"{args.data}_teacher.yaml")
    prog_dir = _ensure(ex / f"{args.data}_progressive.yaml")
    dkdm_dir = _ensure(ex / f"{args.data}_dkdm.yaml")
    t_cfg = load_config(teacher_dir / "config.yaml")
    rescale = t_cfg.scheme.args.get("rescale", True)
    data = load_data(t_cfg.data)
    real = load_batch(data.test, torch.arange(len(data.test)))["input"].float()
    real = real * 2 - 1 if rescale else real
    train = load_batch(data.train, torch.arange(len(data.train)))["input"].float()
    train = train * 2 - 1 if rescale else train
    images = tuple(data.input_shape) == (1, 8, 8)
    n = min(args.samples, len(real))

    def quality(x: torch.Tensor) -> float:
        return next(iter(sample_quality(x[:n], real).values()))

    metric = "FD (digits features)" if images else "MMD^2"
    teacher = _model(t_cfg.student, data, weights_path(str(teacher_dir)))
    rows, grids = [], {}

    def measure(label: str, model, steps: int, kind: str) -> None:
        gen = torch.Generator().manual_seed(2024)
        with torch.no_grad():
            x = sample(model, n, data.input_shape, steps, generator=gen)
        rows.append({"model": label, "kind": kind, "steps": steps, "quality": quality(x)})
        grids[label] = x
        print(f"{label:32s} {steps:4d} steps  {metric} {rows[-1]['quality']:.4f}", file=sys.stderr)

    rows.append(
        {
            "model": "real training data",
            "kind": "floor",
            "steps": 0,
            "quality": quality(train[: len(real)] if images else train),
        }
    )
    p_cfg = load_config(ex / f"{args.data}_progressive.yaml")
    counts = [s.scheme.args["teacher_steps"] for s in p_cfg.stages]
    counts.append(counts[-1] // 2)
    for steps in counts:
        measure(f"teacher, {steps} DDIM steps", teacher, steps, "teacher")
    for i, stage in enumerate(p_cfg.stages):
        stage_dir = prog_dir / "stages" / f"{i:02d}-{stage.name}"
        steps = stage.scheme.args["teacher_steps"] // 2
        model = _model(p_cfg.student, data, weights_path(str(stage_dir)))
        measure(f"distilled round {i + 1}, {steps} steps", model, steps, "progressive")
    d_cfg = load_config(dkdm_dir / "config.yaml")
    student = _model(d_cfg.student, data, weights_path(str(dkdm_dir)))
    for steps in (d_cfg.scheme.args.get("student_steps", 64), 16):
        measure(f"data-free student, {steps} steps", student, steps, "data-free")

    out = Path(args.out) / args.data / "report"
    out.mkdir(parents=True, exist_ok=True)
    table = [f"| model | sampling steps | {metric} |", "| --- | ---: | ---: |"]
    table += [f"| {r['model']} | {r['steps'] or '-'} | {r['quality']:.4f} |" for r in rows]
    atomic_write_text(out / "table.md", "\n".join(table) + "\n")
    atomic_write_text(out / "results.json", json.dumps(rows, indent=2))
    atomic_write_bytes(out / "samples.png", _grid(grids, images, real))
    print("\n".join(table))
    print(f"wrote {out}/table.md, results.json, samples.png", file=sys.stderr)


def _grid(grids: dict[str, torch.Tensor], images: bool, real: torch.Tensor) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = {"real test data": real}
    for key in grids:
        if key.startswith(
            (
                "teacher, 256",
                "teacher, 64",
                "teacher, 4 ",
                "distilled round 6",
                "distilled round 4",
                "data-free student, 64",
            )
        ):
            picks[key] = grids[key]
    fig, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks), 3.5))
    for ax, (label, x) in zip(axes, picks.items()):
        if images:
            tiles = x[:36].clamp(-1, 1).reshape(6, 6, 8, 8).permute(0, 2, 1, 3).reshape(48, 48)
            ax.imshow(tiles.numpy(), cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
            ax.axis("off")
        else:
            ax.scatter(x[:, 0], x[:, 1], s=2)
            ax.set(xlim=(-3, 3), ylim=(-3, 3), xticks=[], yticks=[])
        ax.set_title(label, fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


if __name__ == "__main__":
    main()
