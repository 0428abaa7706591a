"""`distill report`: Markdown and self-contained HTML comparing finished runs.

Training curves, a metrics table, reliability diagrams, accuracy against latency and
against size (with the Pareto front), and per-class accuracy. Plots are PNGs (matplotlib,
Agg backend) saved next to report.md and embedded as data URIs in report.html, so the
HTML file is one self-contained page.
"""

from __future__ import annotations

import base64
import html
import io
import json
import sys
from pathlib import Path
from typing import Any

from distill.core.checkpoint import atomic_write_bytes, atomic_write_text
from distill.core.errors import ConfigError

COLUMNS = [
    ("run", "run"),
    ("top1", "top-1 %"),
    ("nll", "NLL"),
    ("ece", "ECE %"),
    ("agreement", "agreement %"),
    ("params", "params"),
    ("size_kib", "size KiB"),
    ("flops_m", "MFLOPs"),
    ("latency_us", "latency p50 us"),
]


def _load_run(run_dir: Path) -> dict[str, Any]:
    from distill.app.assess import assess
    from distill.app.stages import final_stage_dir

    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a run dir (no config.yaml)")
    curves = []
    metrics = final_stage_dir(run_dir) / "metrics.jsonl"  # a staged run: its last stage
    if metrics.is_file():
        curves = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    evaluation = _current_eval(run_dir)
    if evaluation is None:  # none yet, or it describes weights that have changed since
        evaluation = assess(run_dir)
    return {"name": run_dir.name, "dir": str(run_dir), "curves": curves, "eval": evaluation}


def _current_eval(run_dir: Path) -> dict[str, Any] | None:
    """The run's eval.json when it describes the weights the run holds now, else None."""
    from distill.app.build import weights_path
    from distill.profile import file_sha256

    path, weights = run_dir / "eval.json", weights_path(str(run_dir))
    if not path.is_file() or not weights.is_file():
        return None
    try:
        evaluation = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if evaluation.get("weights_sha256") != file_sha256(weights):
        print(f"{path}: older than the weights it describes; evaluating again", file=sys.stderr)
        return None
    return evaluation


def _row(run: dict[str, Any]) -> dict[str, str]:
    m, c = run["eval"]["metrics"], run["eval"]["cost"]
    return {
        "run": run["name"],
        "top1": f"{100 * m['top1']:.2f}",
        "nll": f"{m['nll']:.4f}",
        "ece": f"{100 * m['ece']:.2f}",
        "agreement": f"{100 * m['agreement']:.2f}" if "agreement" in m else "-",
        "params": f"{c['params']:,}",
        "size_kib": f"{c['size_bytes'] / 1024:.1f}",
        "flops_m": f"{c['flops'] / 1e6:.3f}",
        "latency_us": f"{1000 * c['latency_p50_ms']:.0f}",
    }


def run_labels(run_dirs: list[Path]) -> list[str]:
    """A distinct label per run: the shortest tail of each path that tells the runs apart
    (`kd/seed0` and `scratch/seed0`, never two `seed0`)."""
    parts = [Path(d).resolve().parts for d in run_dirs]
    for k in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-k:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(d) for d in run_dirs]  # the same folder given twice: its path each time


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (lower cost x, higher accuracy y), sorted by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def draw_front(ax: Any, points: list[tuple[float, float]]) -> None:
    """The Pareto front of (cost, accuracy) points on `ax`, as a staircase: between two
    front points only the cheaper one's accuracy is attained, so a straight segment would
    pass over points that nothing reaches."""
    front = pareto_front(points)
    if front:
        ax.plot(
            [points[i][0] for i in front],
            [points[i][1] for i in front],
            "k--",
            lw=1,
            drawstyle="steps-post",
            label="Pareto front",
        )


def _figures(runs: list[dict[str, Any]]) -> dict[str, bytes]:
    """Every figure of the report, as PNG bytes by name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def png(fig) -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
        plt.close(fig)
        return buf.getvalue()

    out = {"curves": png(_curves_figure(plt, runs))}
    out["reliability"] = png(_reliability_figure(plt, runs))
    for key, cost, label in (
        ("pareto_latency", "latency_p50_ms", "latency p50 (ms)"),
        ("pareto_size", "size_bytes", "size on disk (KiB)"),
    ):
        out[key] = png(_pareto_figure(plt, runs, cost, label))
    out["per_class"] = png(_per_class_figure(plt, runs))
    return out


def _curves_figure(plt: Any, runs: list[dict[str, Any]]) -> Any:
    """Training loss and validation accuracy per epoch, one line per run."""
    import matplotlib.ticker

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for run in runs:
        epochs = [r["epoch"] for r in run["curves"]]
        ax1.plot(
            epochs, [r.get("train_loss", float("nan")) for r in run["curves"]], label=run["name"]
        )
        ax2.plot(
            epochs, [100 * r.get("val_acc", float("nan")) for r in run["curves"]], label=run["name"]
        )
    for ax in (ax1, ax2):  # epochs are whole numbers
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax1.set(xlabel="epoch", ylabel="train loss", title="Training loss")
    ax2.set(xlabel="epoch", ylabel="val accuracy %", title="Validation accuracy")
    ax2.legend(fontsize=8)
    return fig


def _reliability_figure(plt: Any, runs: list[dict[str, Any]]) -> Any:
    """A reliability diagram per run (accuracy against confidence, with its ECE)."""
    fig, axes = plt.subplots(
        1,
        len(runs),
        figsize=(max(3.4 * len(runs), 6), 3.4),
        squeeze=False,
        sharey=True,
        layout="constrained",  # titles and labels never run into the panel beside them
    )
    for i, (ax, run) in enumerate(zip(axes[0], runs)):
        rel = run["eval"]["metrics"]["reliability"]
        bins = len(rel["count"])
        centers = [(b + 0.5) / bins for b in range(bins)]
        acc = [a if c else 0.0 for a, c in zip(rel["accuracy"], rel["count"])]
        ax.bar(centers, acc, width=1 / bins, edgecolor="black", alpha=0.7)
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="confidence",
            ylabel="accuracy" if i == 0 else None,
            title=f"{run['name']}\nECE {100 * run['eval']['metrics']['ece']:.2f}%",
        )
    return fig


def _pareto_figure(plt: Any, runs: list[dict[str, Any]], cost: str, label: str) -> Any:
    """Test accuracy against one cost, each run a point, the Pareto front dashed."""
    scale = 1 / 1024 if cost == "size_bytes" else 1.0
    points = [
        (run["eval"]["cost"][cost] * scale, 100 * run["eval"]["metrics"]["top1"]) for run in runs
    ]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for (x, y), run in zip(points, runs):
        ax.scatter(x, y)
        ax.annotate(run["name"], (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    draw_front(ax, points)
    ax.set(xlabel=label, ylabel="test top-1 %", title=f"Accuracy vs {label.split(' (')[0]}")
    ax.legend(fontsize=8)
    return fig


def _per_class_figure(plt: Any, runs: list[dict[str, Any]]) -> Any:
    """Grouped bars: one group per class, centred on its tick, the legend above the axes."""
    classes = len(runs[0]["eval"]["metrics"]["per_class"])
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * classes), 3.8), layout="constrained")
    width = 0.8 / len(runs)
    for k, run in enumerate(runs):
        per_class = run["eval"]["metrics"]["per_class"]
        offset = (k - (len(runs) - 1) / 2) * width  # the group is centred on class c
        ax.bar(
            [c + offset for c in range(len(per_class))],
            [100 * v for v in per_class],
            width,
            label=run["name"],
        )
    ax.set_xticks(range(classes), [str(c) for c in range(classes)])
    ax.set(xlim=(-0.6, classes - 0.4), ylim=(0, 105), xlabel="class", ylabel="accuracy %")
    ax.set_title("Per-class test accuracy", pad=28)
    ax.legend(fontsize=8, ncol=min(len(runs), 4), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    return fig


TITLES = {
    "curves": "Training curves",
    "reliability": "Reliability diagrams",
    "pareto_latency": "Accuracy vs latency",
    "pareto_size": "Accuracy vs size",
    "per_class": "Per-class accuracy",
}


def _markdown(runs: list[dict[str, Any]], rows: list[dict[str, str]]) -> str:
    lines = [
        "# distill report",
        "",
        "| " + " | ".join(t for _, t in COLUMNS) + " |",
        "|" + " --- |" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(r[k] for k, _ in COLUMNS) + " |" for r in rows]
    for key, title in TITLES.items():
        lines += ["", f"## {title}", "", f"![{title}]({key}.png)"]
    negative = [
        (run["name"], run["eval"]["negative_transfer"])
        for run in runs
        if run["eval"].get("negative_transfer")
    ]
    if negative:
        lines += ["", "## Negative transfer (classes worse than the scratch student)", ""]
        lines += [
            f"- {name}: "
            + ", ".join(f"class {w['class']} {100 * w['change']:+.1f} pts" for w in worse)
            for name, worse in negative
        ]
    return "\n".join(lines) + "\n"


def _html(rows: list[dict[str, str]], figures: dict[str, bytes]) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(r[k])}</td>" for k, _ in COLUMNS) + "</tr>"
        for r in rows
    )

    def section(key: str) -> str:
        data = base64.b64encode(figures[key]).decode()
        return (
            f'<section><h2>{html.escape(TITLES[key])}</h2><img class="plot" '
            f'alt="{html.escape(TITLES[key])}" src="data:image/png;base64,{data}"></section>'
        )

    side_by_side = [k for k in ("pareto_latency", "pareto_size") if k in figures]
    plots = "".join(section(k) for k in figures if k not in side_by_side and k != "per_class")
    plots += '<div class="pair">' + "".join(section(k) for k in side_by_side) + "</div>"
    plots += section("per_class") if "per_class" in figures else ""
    # A small self-check the browser test reads: how many plots decoded and are on screen.
    script = (
        "<script>window.addEventListener('load',()=>{const imgs=[...document.querySelectorAll('img.plot')];"
        "document.body.dataset.plotsVisible=imgs.filter(i=>i.naturalWidth>0&&i.getBoundingClientRect().width>0).length;"
        "document.body.dataset.tables=document.querySelectorAll('table tr').length;"
        "const wide=imgs.filter(i=>!i.closest('.pair')).map(i=>i.getBoundingClientRect().width);"
        "document.body.dataset.plotWidthPct=Math.round(100*Math.min(...wide)/window.innerWidth);"
        "});</script>"
    )
    style = (  # plots span the page (two side by side for the Pareto pair)
        "body{font-family:sans-serif;margin:2em auto;padding:0 2em;max-width:1400px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}img.plot{width:100%;height:auto}"
        ".pair{display:grid;grid-template-columns:1fr 1fr;gap:2em}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>distill report</title><style>{style}</style>"
        f"</head><body><h1>distill report</h1><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        f"{plots}{script}</body></html>"
    )


def write_report(run_dirs: list[str | Path], out: str | Path) -> dict[str, Path]:
    """Write report.md (+ PNGs) and a self-contained report.html into `out`."""
    if not run_dirs:
        raise ConfigError("give at least one run dir to report on")
    runs = [_load_run(Path(d)) for d in run_dirs]
    for run, label in zip(runs, run_labels([Path(d) for d in run_dirs])):
        run["name"] = label
    rows = [_row(r) for r in runs]
    figures = _figures(runs)
    out = Path(out)
    for key, data in figures.items():
        atomic_write_bytes(out / f"{key}.png", data)
    atomic_write_text(out / "report.md", _markdown(runs, rows))
    atomic_write_text(out / "report.html", _html(rows, figures))
    return {"markdown": out / "report.md", "html": out / "report.html"}
