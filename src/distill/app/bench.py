"""`distill bench SPEC.yaml`: methods x teacher/student pairs x seeds under one recipe.

A spec names a base config (the shared recipe), the methods (example configs or inline
objectives), optional teacher/student pairs and the seeds. Runs go to
`<out>/<pair>/<method>/seed<k>`; a run with a results.json is never redone, so an
interrupted sweep resumes where it stopped. Results are aggregated into a leaderboard
(Markdown, CSV, HTML with a plot): mean +- std, a 95% confidence interval, Welch's t-test
against the scratch student and against plain KD, and a negative-transfer flag.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from pydantic import Field

from distill.app.problems import name_problems
from distill.core.checkpoint import atomic_write_text
from distill.core.config import parse_config, read_yaml
from distill.core.errors import ConfigError
from distill.core.settings import Strict

KD_OBJECTIVE = {
    "task_weight": 0.1,
    "terms": [{"loss": "kd", "weight": 0.9, "args": {"temperature": 4.0}}],
}


class PairSpec(Strict):
    name: str
    teacher: dict[str, Any]  # name, args, optional weights (trained from the recipe if absent)
    student: dict[str, Any]


class BenchSpec(Strict):
    name: str = "bench"
    base: str  # a config file: data, train, and the default teacher/student
    out: str = "runs/bench"
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    jobs: int = Field(1, ge=1)
    overrides: dict[str, Any] = {}  # merged into the base, e.g. {train: {epochs: 20}}
    methods: dict[str, str | dict[str, Any]]  # name -> examples/x.yaml or an inline objective
    pairs: list[PairSpec] = []


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


METHOD_KEYS = ("scheme", "objective", "teachers", "peers", "stages")


def _method(method: str | dict[str, Any], root: Path) -> dict[str, Any]:
    """The parts of a run a method sets: an inline objective, or from a config file its
    scheme, objective, teachers, peers and stages (the rest comes from the bench base)."""
    if isinstance(method, dict):
        return {"scheme": "offline", "objective": method}
    path = (root / method) if not Path(method).is_absolute() else Path(method)
    if not path.is_file():
        raise ConfigError(f"bench method file {str(path)!r} does not exist")
    cfg = read_yaml(path, "bench method file")
    out = {k: cfg[k] for k in METHOD_KEYS if k in cfg}
    if cfg.get("teacher") is not None:
        out["__teacher__"] = True  # e.g. DML with a trainable teacher: the pair's teacher joins
    out.setdefault("scheme", "offline")
    out.setdefault("objective", {})
    return out


def _uses_pair_teacher(scheme: str | dict[str, Any]) -> bool:
    """Offline-style schemes get the pair's teacher; online and self schemes train without it."""
    from distill.schemes import SCHEMES

    name = scheme["name"] if isinstance(scheme, dict) else scheme
    spec = SCHEMES.get(name)
    return spec is None or spec.teacher == "required"


def plan(spec: BenchSpec, root: Path) -> tuple[list[dict], list[tuple[str, str, int, dict]]]:
    """Teacher configs to train, and (pair, method, seed, config) for every run."""
    base = _merge(read_yaml(root / spec.base, "bench base config"), spec.overrides)
    pairs = spec.pairs or [PairSpec(name="pair", teacher=base["teacher"], student=base["student"])]
    out = Path(spec.out)
    teachers, runs = [], []
    methods = {"scratch": {"__scratch__": True}, "kd": KD_OBJECTIVE, **spec.methods}
    for pair in pairs:
        teacher = dict(pair.teacher)
        given = teacher.get("weights")
        if not given or not (Path(given).is_file() or (Path(given) / "checkpoints").is_dir()):
            teacher_dir = out / pair.name / "teacher"
            teachers.append(
                {
                    **base,
                    "name": f"{pair.name}-teacher",
                    "run_dir": str(teacher_dir),
                    "scheme": "supervised",
                    "objective": {},
                    "teacher": None,
                    "student": {k: v for k, v in teacher.items() if k != "weights"},
                    "train": {**base["train"], "seed": 0, "progress": True},
                }
            )
            teacher["weights"] = str(teacher_dir)
        for method, objective in methods.items():
            if isinstance(objective, dict) and objective.get("__scratch__"):
                parts, with_teacher = {"scheme": "supervised", "objective": {}}, None
            else:
                parts = _method(objective, root)
                wants_teacher = bool(parts.pop("__teacher__", False))
                uses_teacher = (
                    wants_teacher or _uses_pair_teacher(parts["scheme"]) or "stages" in parts
                )
                with_teacher = teacher if uses_teacher else None
            for seed in spec.seeds:
                cfg = {
                    **base,
                    "name": f"{pair.name}-{method}-{seed}",
                    "run_dir": str(out / pair.name / method / f"seed{seed}"),
                    **parts,
                    "teacher": with_teacher,
                    "student": pair.student,
                    "train": {**base["train"], "seed": seed, "progress": True},
                }
                problems = name_problems(
                    parse_config(cfg)
                )  # a bad method fails before anything trains
                if problems:
                    raise ConfigError(f"bench method {method!r}: " + "; ".join(problems))
                runs.append((pair.name, method, seed, cfg))
    return teachers, runs


def welch_p(a: list[float], b: list[float], alternative: str = "two-sided") -> float:
    """p-value of Welch's t-test (nan when either side has fewer than 2 values);
    `alternative='greater'` asks whether `a`'s mean is above `b`'s."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    from scipy import stats

    if statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0:
        above = statistics.mean(a) > statistics.mean(b)
        if alternative == "greater":
            return 0.0 if above else 1.0
        return 1.0 if statistics.mean(a) == statistics.mean(b) else 0.0
    with warnings.catch_warnings():  # nearly equal values: scipy's precision note, not ours
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False, alternative=alternative).pvalue)


def ci95(values: list[float]) -> float:
    """Half-width of the 95% confidence interval of the mean (Student's t)."""
    if len(values) < 2:
        return float("nan")
    from scipy import stats

    return float(
        stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    )


# One rule for "negative transfer" across distill (bench here, McNemar in `distill eval`):
# below the scratch student with a two-sided p < 0.05 after Holm's correction over the
# methods compared with scratch in the same pair.
NEGATIVE_TRANSFER_RULE = (
    "negative transfer: mean below the scratch student's with Welch's p < 0.05 after Holm's "
    "correction over the methods of the pair"
)


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values (nan stays nan; adjusted values are monotone)."""
    known = sorted((p, k) for k, p in p_values.items() if p == p)
    out = {k: float("nan") for k in p_values}
    running = 0.0
    for i, (p, k) in enumerate(known):
        running = max(running, min(1.0, (len(known) - i) * p))
        out[k] = running
    return out


def aggregate(results: dict[tuple[str, str], list[float]]) -> list[dict[str, Any]]:
    rows = []
    for (pair, method), accs in results.items():
        scratch, kd = results.get((pair, "scratch"), []), results.get((pair, "kd"), [])
        mean = statistics.mean(accs)
        rows.append(
            {
                "pair": pair,
                "method": method,
                "n": len(accs),
                "mean": mean,
                "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "ci95": ci95(accs),
                "vs_scratch": mean - statistics.mean(scratch) if scratch else float("nan"),
                "p_scratch": welch_p(accs, scratch) if method != "scratch" else float("nan"),
                "vs_kd": mean - statistics.mean(kd) if kd else float("nan"),
                "p_kd": welch_p(accs, kd) if method != "kd" else float("nan"),
            }
        )
    for pair in {r["pair"] for r in rows}:
        mine = [r for r in rows if r["pair"] == pair and r["method"] != "scratch"]
        adjusted = holm({r["method"]: r["p_scratch"] for r in mine})
        for r in rows:
            if r["pair"] == pair:
                p = adjusted.get(r["method"], float("nan"))
                r["p_scratch_holm"] = p
                r["negative_transfer"] = bool(r["vs_scratch"] < 0 and p < 0.05)
    return sorted(rows, key=lambda r: (r["pair"], -r["mean"]))


def write_leaderboard(rows: list[dict[str, Any]], out: Path, title: str, wall_s: float) -> None:
    fmt = lambda v: "-" if v != v else f"{v:.3f}"  # noqa: E731  (nan -> '-')
    lines = [
        f"# {title}",
        "",
        f"{len(rows)} entries; wall time {wall_s / 60:.1f} min. Accuracy in %, "
        "CI = 95% confidence interval of the mean; p = Welch's t-test. "
        f"{NEGATIVE_TRANSFER_RULE[0].upper()}{NEGATIVE_TRANSFER_RULE[1:]}.",
        "",
        "| pair | method | n | mean | std | CI95 | vs scratch | p | vs KD | p | negative transfer |",
        "|" + " --- |" * 11,
    ]
    for r in rows:
        lines.append(
            f"| {r['pair']} | {r['method']} | {r['n']} | {r['mean']:.2f} | {r['std']:.2f} | ±{fmt(r['ci95'])} | "
            f"{r['vs_scratch']:+.2f} | {fmt(r['p_scratch'])} | {r['vs_kd']:+.2f} | {fmt(r['p_kd'])} | "
            f"{'yes' if r['negative_transfer'] else ''} |"
        )
    atomic_write_text(out / "leaderboard.md", "\n".join(lines) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "leaderboard.csv", buf.getvalue())
    atomic_write_text(out / "leaderboard.html", _html(rows, title))


def _html(rows: list[dict[str, Any]], title: str) -> str:
    import base64

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1))
    labels = [f"{r['pair']}/{r['method']}" for r in rows]
    ax.barh(
        labels,
        [r["mean"] for r in rows],
        xerr=[0 if r["ci95"] != r["ci95"] else r["ci95"] for r in rows],
        color=["tab:red" if r["negative_transfer"] else "tab:blue" for r in rows],
    )
    ax.invert_yaxis()
    lo = min(r["mean"] for r in rows)
    ax.set(xlim=(max(0, lo - 5), 100), xlabel="test accuracy % (95% CI)", title=title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    head = "".join(f"<th>{k}</th>" for k in rows[0])
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{v:.3f}</td>" if isinstance(v, float) else f"<td>{v}</td>" for v in r.values()
        )
        + "</tr>"
        for r in rows
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head><body><h1>{title}</h1>"
        f"<img class='plot' alt='leaderboard' src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'>"
        f"<table border='1'><tr>{head}</tr>{body}</table></body></html>"
    )


def run_bench(spec_path: str | Path) -> list[dict[str, Any]]:
    """Train every teacher the spec needs, then every (pair, method, seed) run, `jobs` at a
    time in their own processes (`distill.app.runner`); aggregate and write the leaderboard.

    A signal stops the sweep after each running child has checkpointed (RunStopped); a
    rerun continues exactly the unfinished runs. Runs that fail are named with their logs
    and left out of the leaderboard, which is written from the runs that finished."""
    from distill.app.runner import Job, Sweep

    spec_path = Path(spec_path)
    if not spec_path.is_file():
        raise ConfigError(f"bench spec {str(spec_path)!r} does not exist")
    raw = read_yaml(spec_path, "bench spec")
    try:
        spec = BenchSpec.model_validate(raw)
    except Exception as e:  # pydantic's message names the field
        raise ConfigError(f"{spec_path}: {e}") from None
    root = Path.cwd()
    started = time.perf_counter()
    teachers, runs = plan(spec, root)
    out = Path(spec.out)
    logs = out / "logs"
    teacher_jobs = [Job(f"{Path(c['run_dir']).parent.name}/teacher", c) for c in teachers]
    jobs = [Job(f"{pair}/{method}/seed{seed}", cfg) for pair, method, seed, cfg in runs]
    failed = []
    for what, batch in (("teachers", teacher_jobs), ("runs", jobs)):
        if not batch:
            continue
        Sweep(batch, parallel=spec.jobs, logs=logs, name=f"bench {spec.name!r}: {what}").run()
        failed += [j for j in batch if j.result is None]
        if what == "teachers" and failed:
            break  # the students need their teachers
    results: dict[tuple[str, str], list[float]] = {}
    for (pair, method, _, _), job in zip(runs, jobs):
        if job.result is not None and "test_acc" in job.result:
            results.setdefault((pair, method), []).append(100 * job.result["test_acc"])
    if failed:
        names = "; ".join(f"{j.label} ({j.failed}; log {j.log})" for j in failed[:6])
        more = f" and {len(failed) - 6} more" if len(failed) > 6 else ""
        print(
            f"bench {spec.name!r}: {len(failed)} run(s) did not finish: {names}{more}. Fix "
            f"the cause and run the same command again: finished runs are kept",
            file=sys.stderr,
        )
    if not results:
        raise ConfigError(f"bench {spec.name!r}: no run finished, so there is no leaderboard")
    rows = aggregate(results)
    write_leaderboard(rows, out, spec.name, time.perf_counter() - started)
    if failed:
        raise ConfigError(
            f"bench {spec.name!r}: the leaderboard in {out} holds the {len(jobs) - len(failed)} "
            f"finished run(s); {len(failed)} did not finish (named above)"
        )
    return rows
