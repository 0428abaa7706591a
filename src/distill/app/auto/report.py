"""What `distill auto` hands over besides the student: report.md and report.html with the
verdict, the teacher's and candidates' measured costs, the layer pairing, the final
comparison, every trial, the Pareto frontier as plots (accuracy against latency and
against size; teacher, scratch and plain KD marked), and what it would try with more time.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from distill.app.auto.candidates import REPEATS, WARMUP, Profile
from distill.app.auto.finals import Arm, Verdict
from distill.app.auto.study import Trial
from distill.app.report import draw_front
from distill.core.checkpoint import atomic_write_bytes, atomic_write_text


def _pct(values: list[float]) -> str:
    from distill.app.bench import ci95

    if not values:
        return "-"
    mean = 100 * sum(values) / len(values)
    half = ci95(values)
    return f"{mean:.2f}" + (f" ± {100 * half:.2f}" if half == half else "")


def pareto_plots(
    arms: list[Arm], teacher: Profile, trials: list[Trial], candidates: list[Profile]
) -> dict[str, bytes]:
    """Test accuracy against latency and against size: each final configuration its test
    mean, the teacher its test accuracy, the frontier of those a staircase; and, hollow,
    each searched student's best validation accuracy in the search (the size/accuracy
    trade-off the search saw)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"finalist": "tab:blue", "scratch": "tab:gray", "kd": "tab:orange"}
    out = {}
    for key, cost, label in (
        ("pareto_latency", "latency_ms", "latency at batch 1 (ms)"),
        ("pareto_size", "size_bytes", "size on disk (KiB)"),
    ):
        scale = 1 / 1024 if cost == "size_bytes" else 1.0
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        points = []
        for arm in arms:
            if not arm.test:
                continue
            x, y = getattr(arm.student, cost) * scale, 100 * sum(arm.test) / len(arm.test)
            points.append((x, y))
            ax.scatter(x, y, color=colours[arm.role], label=arm.role)
            ax.annotate(arm.method, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for cand in candidates:
            scores = [
                t.val_acc for t in trials if t.student == cand.label and t.val_acc is not None
            ]
            if scores:
                ax.scatter(
                    getattr(cand, cost) * scale,
                    100 * max(scores),
                    facecolors="none",
                    edgecolors="tab:purple",
                    label="search: best val per student",
                )
        if teacher.test_acc is not None:
            x, y = getattr(teacher, cost) * scale, 100 * teacher.test_acc
            points.append((x, y))
            ax.scatter(x, y, marker="*", s=120, color="tab:red", label="teacher")
        draw_front(ax, points)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=7)
        ax.set(xlabel=label, ylabel="test accuracy %", title=f"Accuracy vs {label.split(' (')[0]}")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        out[key] = buf.getvalue()
    return out


def _table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["(none)"]
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return lines


def next_steps(trials: list[Trial], arms: list[Arm], verdict: Verdict, settings: Any) -> list[str]:
    """What more time would buy, read from this search's own trials."""
    tips = []
    done = [t for t in trials if t.state == "COMPLETE" and not t.baseline]
    tried = {t.method for t in trials}
    if len(done) < 10:
        tips.append(f"more search trials: only {len(done)} searched trial(s) ran to the end")
    spread = [a for a in arms if len(a.val) > 1]
    if spread and max(max(a.val) - min(a.val) for a in spread) > 0.02:
        tips.append(
            f"more seeds than {settings.seeds}: runs of one configuration differ by more than 2 "
            "points, which hides small gains"
        )
    if not verdict.distillation_pays:
        tips.append(
            "more unlabelled inputs for the teacher to label (the setting where distillation "
            "pays most), or a stronger teacher"
        )
    if any(t.state == "COMPLETE" and t.epochs >= settings.epochs for t in done):
        tips.append(f"longer training than {settings.epochs} epochs for the finalists")
    untried = [
        m for m in ("kd+fitnet", "kd+rkd", "kd+pkt", "kd+sp", "dkd", "dist") if m not in tried
    ]
    if untried:
        tips.append(f"methods not reached in this search: {', '.join(untried)}")
    if settings.budget.max_latency_ms is not None or settings.budget.max_size_bytes is not None:
        tips.append(
            "compression of the chosen student (pruning with KD fine-tuning, int8): "
            "`distill compress` with the handed-over best.yaml as its base"
        )
    return tips


def _rows(proposed, chosen, arms, verdict, trials) -> tuple[list, list, list]:
    """The report's three tables: candidates, the final comparison, every trial."""
    picked = {p.label for p in chosen}
    cand_rows = [
        {
            **p.row(),
            "searched": "yes" if p.label in picked else "",
            "compression": _route(p),
            "over budget": "; ".join(p.over),
        }
        for p in sorted(proposed, key=lambda p: -p.params)
    ]
    final_rows = [
        {
            "configuration": a.key,
            "params": f"{a.student.params:,}",
            "val % (95% CI)": _pct(a.val),
            "test % (95% CI)": _pct(a.test),
            "handed over": "**yes**" if a is verdict.chosen else "",
        }
        for a in arms
    ]
    trial_rows = [
        {
            "trial": t.number,
            "student": t.student,
            "method": t.method + (" (baseline)" if t.baseline else ""),
            "state": t.state.lower(),
            "val %": f"{100 * t.val_acc:.2f}" if t.val_acc is not None else "-",
            "epochs": t.epochs,
            "s": f"{t.seconds:.0f}",
            "settings": ", ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items()
            ),
        }
        for t in trials
    ]
    return cand_rows, final_rows, trial_rows


def write_report(
    out: Path,
    *,
    settings: Any,
    teacher: Profile,
    proposed: list[Profile],
    chosen: list[Profile],
    pairing: Any,
    trials: list[Trial],
    arms: list[Arm],
    verdict: Verdict,
    teacher_passes: dict[str, int],
    handed: dict[str, Any],
    preprocessing: list[str] = (),
) -> dict[str, Path]:
    cand_rows, final_rows, trial_rows = _rows(proposed, chosen, arms, verdict, trials)
    lines = [
        "# distill auto",
        "",
        "## Verdict",
        "",
        *[f"- {line}" for line in verdict.text],
        f"- handed over: `{handed['weights']}` and `{handed['config']}` "
        "(`distill run` reproduces it)"
        + (f"; export: `{handed['export']}`" if handed.get("export") else ""),
        "",
        *([f"Preprocessing chosen: {'; '.join(preprocessing)}.", ""] if preprocessing else []),
        "## Teacher",
        "",
        _teacher_line(teacher, settings.budget),
        "",
        "## Candidates (measured before training)",
        "",
        *_table(cand_rows),
        "",
        "Layer pairing for feature methods: "
        + (pairing.why if pairing is not None else "none found (response methods only)"),
        "",
        "## Final comparison",
        "",
        f"{settings.seeds} seeds each, {settings.epochs} epochs; chosen on validation, tested once "
        "at the end.",
        "",
        *_table(final_rows),
        "",
        "![accuracy vs latency](pareto_latency.png) ![accuracy vs size](pareto_size.png)",
        "",
        "## Trials",
        "",
        *_table(trial_rows),
        "",
        f"Teacher forward passes (samples through the teacher): {teacher_passes['cached']:,} with "
        f"the shared cache; {teacher_passes['live']:,} if every trial had run its teacher live.",
        "",
        "## With more time",
        "",
        *[f"- {tip}" for tip in next_steps(trials, arms, verdict, settings)],
        "",
    ]
    return _write(out, "\n".join(lines), pareto_plots(arms, teacher, trials, chosen))


def _write(out: Path, text: str, figures: dict[str, bytes]) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    for key, data in figures.items():
        atomic_write_bytes(out / f"{key}.png", data)
    atomic_write_text(out / "report.md", text)
    atomic_write_text(out / "report.html", _html(text, figures))
    return {"markdown": out / "report.md", "html": out / "report.html"}


def _teacher_line(teacher: Profile, b: Any) -> str:
    how = f"median of {REPEATS} batch-1 calls after {WARMUP} warm-up calls on {b.device}, "
    return (
        f"validation accuracy {100 * (teacher.val_acc or 0):.2f}%, test "
        f"{100 * (teacher.test_acc or 0):.2f}% (read at the end), {teacher.params:,} parameters, "
        f"{teacher.size_bytes / 1024:.1f} KiB, {teacher.latency_ms:.4f} ms ({how}"
        f"{b.threads} thread(s))"
    )


def _route(p: Profile) -> str:
    if p.route is None:
        return ""
    if p.route["kind"] == "prune":
        return f"{100 * p.route['amount']:.0f}% of the teacher's channels pruned, KD recovery"
    return f"int8 QAT from the {p.route['source']}; {p.route['measured']}"


def _html(markdown: str, figures: dict[str, bytes]) -> str:
    """The Markdown as a self-contained page (tables as tables, plots embedded)."""
    body, table = [], []

    def flush() -> None:
        if table:
            head, *rest = table
            cells = lambda r, tag: "".join(f"<{tag}>{html.escape(c.strip())}</{tag}>" for c in r)  # noqa: E731
            body.append(
                "<table border='1'><tr>" + cells(head, "th") + "</tr>"
                + "".join("<tr>" + cells(r, "td") + "</tr>" for r in rest)
                + "</table>"
            )  # fmt: skip
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            if not set(line) <= set("| -"):
                table.append(line.strip("|").split("|"))
            continue
        flush()
        if line.startswith("!["):
            for key, data in figures.items():
                body.append(
                    f"<img alt='{key}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>"
                )
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    flush()
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>distill auto</title></head>"
        f"<body>{''.join(body)}</body></html>"
    )
