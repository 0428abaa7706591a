"""The six paradigms of distill.paradigms on real data, one table each.

    python benchmarks/paradigms.py [--only graph lifelong ensemble federated condense interpret]
                                   [--out runs/paradigms] [--seed 0]
    python benchmarks/paradigms.py --aggregate runs/paradigms runs/paradigms-seed1 ...

Runs the example configs in examples/paradigms (teachers first), reusing finished runs, and
writes `<out>/paradigms.md` and `<out>/paradigms.json`. About 8 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
EX = ROOT / "examples" / "paradigms"


def run(name: str, out: Path, *overrides: str, fresh: bool = False) -> dict:
    """`distill run examples/paradigms/<name>.yaml` with overrides; reuse a finished run."""
    from distill.app.run import run_experiment
    from distill.core.config import load_config

    cfg = load_config(EX / f"{name}.yaml", ["train.progress=false", *overrides])
    done = cfg.resolved_run_dir() / "results.json"
    if done.is_file() and not fresh:
        return json.loads(done.read_text())
    return run_experiment(cfg, overwrite=True)


def latency_us(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Median wall time of one forward pass on a batch shaped like `x` (microseconds)."""
    from distill.profile import latency_ms

    timing = latency_ms(model, tuple(x.shape[1:]), batch_size=len(x), threads=None)
    return 1000 * timing["p50_ms"]


def graph(out: Path, seed: int) -> tuple[str, dict]:
    from distill.app.build import load_data, load_model, weights_path
    from distill.core.config import load_config
    from distill.models.weights import restore_weights

    d = out / "graph"
    s = f"train.seed={seed}"
    rows = {
        "GNN teacher (SAGE, 128)": run("graph_teacher", out, s, f"run_dir={d}/teacher"),
        "MLP, labels only": run("graph_mlp_scratch", out, s, f"run_dir={d}/mlp_scratch"),
        "MLP, GLNN (KD)": run(
            "graph_glnn",
            out,
            s,
            f"run_dir={d}/glnn_kd",
            "objective.terms.1.weight=0.0",
            f"teacher.weights={d}/teacher",
        ),
        "MLP, GLNN + LSP": run(
            "graph_glnn", out, s, f"run_dir={d}/glnn", f"teacher.weights={d}/teacher"
        ),
        "GNN student (16), KD + LSP + adjacency": run(
            "graph_gnn_student", out, s, f"run_dir={d}/gnn_student", f"teacher.weights={d}/teacher"
        ),
    }
    dirs = ["teacher", "mlp_scratch", "glnn_kd", "glnn", "gnn_student"]
    cfgs = ["graph_teacher", "graph_mlp_scratch", "graph_glnn", "graph_glnn", "graph_gnn_student"]
    lines = [
        "| model | test acc | params | CPU latency, 256 nodes (µs) | reads the graph |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    data = None
    result = {}
    for (label, r), sub, c in zip(rows.items(), dirs, cfgs):
        cfg = load_config(EX / f"{c}.yaml")
        data = data or load_data(cfg.data)
        model = load_model(cfg.student, data, "student")
        restore_weights(model, weights_path(str(d / sub)), "student")
        trees = data.test.inputs[:256]
        is_mlp = cfg.student.name == "node_mlp"
        x = trees[:, 0] if is_mlp else trees  # the MLP gets node features only
        lat = latency_us(model, x)
        n = sum(p.numel() for p in model.parameters())
        lines.append(
            f"| {label} | {100 * r['test_acc']:.1f} | {n:,} | {lat:.0f} | "
            f"{'no' if is_mlp else 'yes (2 hops, 73 rows)'} |"
        )
        result[label] = {"test_acc": r["test_acc"], "params": n, "latency_us": lat}
    return "\n".join(lines), result


def lifelong(out: Path, seed: int) -> tuple[str, dict]:
    d = out / "lifelong"
    s = f"train.seed={seed}"
    variants = {
        "fine-tuning": ["scheme.args.lwf_weight=0"],
        "LwF": [],
        "EWC (lambda 1000)": ["scheme.args.lwf_weight=0", "scheme.args.ewc_weight=1000"],
        "LwF + EWC": ["scheme.args.ewc_weight=1000"],
        "joint training (upper bound)": ["scheme.args.joint=true"],
    }
    lines = [
        "| method | class-IL avg acc | class-IL forgetting | task-IL avg acc | task-IL forgetting |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    result = {}
    for label, extra in variants.items():
        sub = label.split(" (")[0].replace(" + ", "_").replace(" ", "_").lower()
        r = run("lifelong_lwf", out, s, f"run_dir={d}/{sub}", *extra)["lifelong"]
        f_ci = r.get("forgetting_class_il")
        f_ti = r.get("forgetting_task_il")
        lines.append(
            f"| {label} | {100 * r['avg_acc_class_il']:.1f} | "
            f"{'-' if f_ci is None else f'{100 * f_ci:.1f}'} | {100 * r['avg_acc_task_il']:.1f} | "
            f"{'-' if f_ti is None else f'{100 * f_ti:.1f}'} |"
        )
        result[label] = r
    lwf = result["LwF"]["acc_task_il"]
    lines += ["", "LwF, task-IL accuracy on each task (rows: after task t):", ""]
    lines += ["| after | " + " | ".join(f"task {j}" for j in range(len(lwf))) + " |"]
    lines += ["| --- |" + " ---: |" * len(lwf)]
    for t, row in enumerate(lwf):
        cells = [f"{100 * a:.1f}" if j <= t else "·" for j, a in enumerate(row)]
        lines.append(f"| task {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines), result


def ensemble(out: Path, seed: int) -> tuple[str, dict]:
    d = out / "ensemble"
    for m in range(5):
        run("ensemble_member", out, f"train.seed={seed * 10 + m}", f"run_dir={d}/member{m}")
    teachers = [f"teachers.{m}.weights={d}/member{m}" for m in range(5)]
    rows = {}
    for target in ("mean", "dirichlet"):
        for transfer in ("munge", "none"):
            rows[(target, transfer)] = run(
                "ensemble_compression",
                out,
                f"train.seed={seed}",
                *teachers,
                f"scheme.args.target={target}",
                f"scheme.args.transfer={transfer}",
                f"run_dir={d}/student_{target}_{transfer}",
            )
    scratch = run(
        "ensemble_member",
        out,
        f"train.seed={seed}",
        f"run_dir={d}/mlp_scratch",
        "student.name=mlp",
        "student.args={hidden: [64]}",
    )
    r0 = rows[("mean", "munge")]
    lines = [
        "| model | test acc | NLL | ECE | uncertainty rank corr. with ensemble (total / knowledge) |",
        "| --- | ---: | ---: | ---: | --- |",
        f"| ensemble of 5 ConvNets | {100 * r0['ensemble_test_acc']:.1f} | "
        f"{r0['ensemble_test_nll']:.3f} | {r0['ensemble_test_ece']:.3f} | - |",
        f"| one ConvNet (mean of 5) | {100 * r0['member_test_acc_mean']:.1f} | "
        f"{r0['member_test_nll_mean']:.3f} | {r0['member_test_ece_mean']:.3f} | - |",
        f"| MLP, 300 labels only | {100 * scratch['test_acc']:.1f} | {scratch['test_nll']:.3f} | "
        f"- | - |",
    ]
    for (target, transfer), r in rows.items():
        ku = r.get("test_knowledge_uncertainty_rank_corr")
        lines.append(
            f"| MLP student, {target} target, {transfer} transfer | {100 * r['test_acc']:.1f} | "
            f"{r['test_nll']:.3f} | {r['test_ece']:.3f} | "
            f"{r['test_total_uncertainty_rank_corr']:.2f} / {'-' if ku is None else f'{ku:.2f}'} |"
        )
    return "\n".join(lines), {f"{a}_{b}": r for (a, b), r in rows.items()}


def federated(out: Path, seed: int) -> tuple[str, dict]:
    from distill.paradigms.federated import load_federated_config, markdown, run_federated

    cfg = load_federated_config(EX / "federated.yaml", [f"run_dir={out}/federated", f"seed={seed}"])
    done = cfg.resolved_run_dir() / "results.json"
    if done.is_file():
        r = json.loads(done.read_text())
    else:
        r = run_federated(cfg, overwrite=True)
        r.pop("channel")
    text = markdown(cfg.name, r).split("\n", 2)[2]
    return text, r


def condense(out: Path, seed: int) -> tuple[str, dict]:
    d = out / "condense"
    run("digits_teacher", out, f"train.seed={seed}", f"run_dir={out}/digits_teacher")
    teacher = f"teacher.weights={out}/digits_teacher"
    lines = [
        "| samples per class | DM + KD | random real + KD | DM, labels only | random real, labels only |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    result = {}
    for ipc in (1, 5, 10, 20):
        cells = []
        for method, kd in (("dm", True), ("random", True), ("dm", False), ("random", False)):
            extra = [] if kd else ["scheme=supervised", "objective.terms=[]", "teacher=null"]
            r = run(
                "condense_dm",
                out,
                f"train.seed={seed}",
                teacher,
                f"data.condense.method={method}",
                f"data.condense.per_class={ipc}",
                f"data.condense.seed={seed}",
                f"run_dir={d}/{method}-{ipc}-{'kd' if kd else 'ce'}",
                *extra,
            )
            cells.append(f"{100 * r['test_acc']:.1f}")
            result[f"{method}-{ipc}-{'kd' if kd else 'ce'}"] = r["test_acc"]
        lines.append(f"| {ipc} | " + " | ".join(cells) + " |")
    full = run("digits_teacher", out, f"train.seed={seed}", f"run_dir={out}/digits_teacher")
    lines += ["", f"Teacher on all 1,213 training digits: {100 * full['test_acc']:.1f}."]
    return "\n".join(lines), result


def interpret(out: Path, seed: int) -> tuple[str, dict]:
    from distill.paradigms.interpret import load_interpret_config, markdown, run_interpret

    run("digits_teacher", out, f"train.seed={seed}", f"run_dir={out}/digits_teacher")
    cfg = load_interpret_config(
        EX / "interpret.yaml",
        [f"run_dir={out}/interpret", f"teacher.weights={out}/digits_teacher", f"seed={seed}"],
    )
    r = run_interpret(cfg, progress=False)
    return markdown(cfg.name, r["rows"]).split("\n", 2)[2], r


PARADIGMS = {
    "graph": graph,
    "lifelong": lifelong,
    "ensemble": ensemble,
    "federated": federated,
    "condense": condense,
    "interpret": interpret,
}


def headline(results: dict) -> dict[str, float]:
    """The numbers worth comparing across seeds, from one run's paradigms.json."""
    out: dict[str, float] = {}
    for label, r in results.get("graph", {}).items():
        out[f"graph | {label} | test acc"] = r["test_acc"]
    for label, r in results.get("lifelong", {}).items():
        out[f"lifelong | {label} | class-IL avg acc"] = r["avg_acc_class_il"]
        out[f"lifelong | {label} | task-IL avg acc"] = r["avg_acc_task_il"]
    ens = results.get("ensemble", {})
    if ens:
        out["ensemble | ensemble of 5 | test acc"] = ens["mean_munge"]["ensemble_test_acc"]
        out["ensemble | mean member | test acc"] = ens["mean_munge"]["member_test_acc_mean"]
        for key, r in ens.items():
            out[f"ensemble | student {key} | test acc"] = r["test_acc"]
            out[f"ensemble | student {key} | ECE"] = r["test_ece"]
    fed = results.get("federated")
    if fed:
        first, last = fed["history"][0], fed["history"][-1]
        out["federated | clients alone, mean | test acc"] = sum(first["clients_test_acc"]) / len(
            first["clients_test_acc"]
        )
        out["federated | server, last round | test acc"] = last["server_test_acc"]
        out["federated | centralised | test acc"] = fed["centralised_test_acc"]
    for key, acc in results.get("condense", {}).items():
        out[f"condense | {key} | test acc"] = acc
    for row in results.get("interpret", {}).get("rows", []):
        out[f"interpret | {row['model']} | test acc"] = row["test_acc"]
        out[f"interpret | {row['model']} | fidelity"] = row["fidelity"]
    return out


def aggregate(dirs: list[Path]) -> str:
    """Mean and standard deviation over seeds (one out dir per seed) of `headline`."""
    import statistics

    runs = [headline(json.loads((d / "paradigms.json").read_text())) for d in dirs]
    keys = [k for k in runs[0] if all(k in r for r in runs)]
    lines = [
        f"| paradigm | model | metric | mean ± std over {len(runs)} seeds |",
        "| --- | --- | --- | ---: |",
    ]
    for k in keys:
        values = [100 * r[k] for r in runs]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f"| {k} | {statistics.mean(values):.1f} ± {sd:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="*", choices=list(PARADIGMS), default=list(PARADIGMS))
    p.add_argument("--out", default="runs/paradigms")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--aggregate", nargs="+", type=Path, help="out dirs of finished seeds: mean ± std table"
    )
    args = p.parse_args()
    if args.aggregate:
        text = aggregate(args.aggregate)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "paradigms_seeds.md").write_text(text)
        print(text)
        return
    out = Path(args.out)
    sections, results = [], {}
    for name in args.only:
        t = time.perf_counter()
        text, res = PARADIGMS[name](out, args.seed)
        took = time.perf_counter() - t
        print(f"{name}: {took:.0f} s", file=sys.stderr)
        sections.append(f"## {name}\n\n{text}\n")
        results[name] = res
    out.mkdir(parents=True, exist_ok=True)
    (out / "paradigms.md").write_text("\n".join(sections))
    (out / "paradigms.json").write_text(json.dumps(results, indent=2, default=str))
    print("\n".join(sections))


if __name__ == "__main__":
    main()
