"""Command line: a thin layer over the Python API.

distill run CONFIG [key=value ...] [--resume] [--overwrite]
distill validate CONFIG [key=value ...]
distill layers MODEL|CONFIG [--role student|teacher] [--dataset NAME] [--args JSON]
distill methods [--json]
distill demo [--dataset mnist1d|digits] [--seeds N] [--json]
"""

from __future__ import annotations

import argparse
import errno
import json
import shlex
import signal
import sys
from pathlib import Path

from distill.errors import USER_ERRORS, ConfigError, NonFiniteError, RunStopped


def _resume_command(args: argparse.Namespace, *extra: str) -> str:
    """The exact command that continues this run: its config, its overrides, then `extra`."""
    words = ["distill", "run", args.config, *args.overrides, *extra, "--resume"]
    return shlex.join(words)


def _cmd_run(args: argparse.Namespace) -> int:
    from distill import distributed
    from distill.config import load_config
    from distill.run import run_experiment

    cfg = load_config(args.config, args.overrides)
    try:
        results = run_experiment(
            cfg, resume=args.resume, overwrite=args.overwrite, allow_changes=args.allow_change
        )
    except NonFiniteError as e:
        raise NonFiniteError(f"{e}\n{_after_divergence(args, cfg)}") from None
    main = distributed.is_main()
    if main:
        print(json.dumps(results, indent=2))
    code = 0
    stopped_by = results.get("stopped_by")
    if stopped_by in ("SIGINT", "SIGTERM"):
        if main:
            print(
                f"stopped by {stopped_by} at step {results['steps']}; the checkpoint is saved "
                f"in {results['run_dir']}. Continue with: {_resume_command(args)}",
                file=sys.stderr,
            )
        code = 128 + signal.Signals[stopped_by].value
    distributed.shutdown(code)  # under torchrun: leave the group and exit; else a no-op
    return code


def _after_divergence(args: argparse.Namespace, cfg) -> str:
    """A command that works after a divergence: resume from the last good checkpoint with a
    tenth of the learning rate (or start again with it when no checkpoint was written)."""
    lower = f"train.optimizer.lr={cfg.train.optimizer.lr / 10:g}"
    others = [o for o in args.overrides if not o.startswith("train.optimizer.lr=")]
    last = cfg.resolved_run_dir() / "checkpoints" / "last.safetensors"
    if last.is_file():
        words = ["distill", "run", args.config, *others, lower, "--resume"]
        words += ["--allow-change", "train.optimizer.lr"]
        return f"To resume from it with a tenth of the learning rate: {shlex.join(words)}"
    words = ["distill", "run", args.config, *others, lower, "--overwrite"]
    return f"To start again with a tenth of the learning rate: {shlex.join(words)}"


def _cmd_validate(args: argparse.Namespace) -> int:
    from distill.config import load_config
    from distill.validate import validate

    cfg = load_config(args.config, args.overrides)
    problems = validate(cfg)
    if problems:
        print(f"{args.config}: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print(f"{args.config}: OK (names, layers, weights and a dry forward through every term)")
    return 0


def _cmd_layers(args: argparse.Namespace) -> int:
    import torch

    from distill.config import ModelConfig, load_config
    from distill.data import load_dataset
    from distill.models import build_model
    from distill.table import format_table
    from distill.taps import describe_layers

    if args.model.endswith((".yaml", ".yml")):
        cfg = load_config(args.model)
        spec = getattr(cfg, args.role)
        if spec is None:
            raise ConfigError(f"{args.model} has no {args.role} section; use --role student")
        data = load_dataset(cfg.data.name, **cfg.data.options)
    else:
        try:
            model_args = json.loads(args.args)
        except json.JSONDecodeError as e:
            raise ConfigError(
                f"--args must be a JSON object, e.g. '{{\"channels\": [8, 16]}}': {e}"
            ) from None
        spec = ModelConfig(name=args.model, args=model_args)
        data = load_dataset(args.dataset)
    model = build_model(
        spec.name, data.input_shape, data.num_classes, spec.args
    )  # names need no weights
    rows = describe_layers(model, torch.zeros(1, *data.input_shape))
    print(f"{spec.name} on {data.name} input (1, {', '.join(map(str, data.input_shape))}):")
    print(format_table(["layer", "type", "output shape", "params"], rows))
    return 0


def _cmd_datasets(args: argparse.Namespace) -> int:
    """The dataset table: each name, what it reads and the options it takes."""
    import inspect

    from distill.data import DATASETS
    from distill.table import format_table

    rows = []
    for name, fn in DATASETS.items():
        target = fn.options_of() if hasattr(fn, "options_of") else fn
        params = inspect.signature(target).parameters
        options = ", ".join(p for p in params if params[p].kind is inspect.Parameter.KEYWORD_ONLY)
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        rows.append([name, doc, options or "(see its docs)"])
    print(format_table(["name", "reads", "options"], rows))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from distill.artifacts import export_run

    result = export_run(args.run_dir, args.format, args.out, overwrite=args.overwrite)
    print(json.dumps(result, indent=2))
    return 0


def _cmd_sample_data(args: argparse.Namespace) -> int:
    from distill.data.samples import write_digits

    out = write_digits(args.out)
    print(
        f"wrote the digits under {out}/: digits_png/ (class folders + list.csv), digits.parquet, "
        f"digits.csv, digits_hf/ (save_to_disk); the configs in examples/data/ read them"
    )
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from distill.methods import list_methods
    from distill.table import format_table

    rows = list_methods()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(
            format_table(
                ["name", "family", "paper"], [[r["name"], r["family"], r["paper"]] for r in rows]
            )
        )
    return 0


def _cmd_schemes(args: argparse.Namespace) -> int:
    from distill.schemes import list_schemes
    from distill.table import format_table

    rows = list_schemes()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(
            format_table(
                ["name", "family", "teacher", "paper", "args"],
                [
                    [r["name"], r["family"], r["teacher"], r["paper"], ", ".join(r["args"])]
                    for r in rows
                ],
            )
        )
    return 0


def _cmd_lm_cache(args: argparse.Namespace) -> int:
    from distill.build import build
    from distill.config import load_config, parse_config
    from distill.llm.cache import build_cache

    cfg = load_config(args.config, args.overrides)
    data = cfg.model_dump(mode="json")
    data["scheme"]["args"].pop("teacher_cache", None)  # the cache being built is not read
    built = build(parse_config(data))
    if built.teacher is None:
        print("error: the config has no teacher to cache", file=sys.stderr)
        return 2
    cache = build_cache(
        built.teacher,
        built.data.train,
        args.out,
        mode=args.mode,
        k=args.k,
        temperature=args.temperature,
        vocab=built.data.num_classes,
        seed=cfg.train.seed,
    )
    print(
        f"wrote {args.out}: {len(cache)} rows, {cache.bytes_per_token():.0f} bytes per token "
        f"({args.mode}, k={args.k}; dense fp16 logits would take {2 * cache.vocab} bytes)"
    )
    return 0


def _cmd_lm_demo(args: argparse.Namespace) -> int:
    from distill.llm.demo import format_rows, run_lm_demo

    rows = run_lm_demo(
        args.out,
        epochs=args.epochs,
        teacher_epochs=args.teacher_epochs,
        seed=args.seed,
        progress=not args.json,
    )
    print(json.dumps(rows, indent=2) if args.json else format_rows(rows))
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from distill.blackbox import run_generation

    report = run_generation(args.spec)
    print(json.dumps(asdict(report), indent=2))
    return 0


def _cmd_reasoning_demo(args: argparse.Namespace) -> int:
    from distill.reasoning import format_rows, run_reasoning_demo

    if args.self_improve:
        from distill.reasoning import run_self_improvement
        from distill.table import format_table

        rounds = run_self_improvement(
            f"{args.out}-self-improve",
            digits=args.digits,
            rounds=args.self_improve,
            labelled=args.labelled,
            epochs=args.epochs,
            seed=args.seed,
        )
        print(
            json.dumps(rounds, indent=2)
            if args.json
            else format_table(
                ["round", "verified answers kept", "test answer accuracy"],
                [[r["round"], r["kept"], f"{100 * r['test_acc']:.1f}%"] for r in rounds],
            )
        )
        return 0
    rows = run_reasoning_demo(
        args.out,
        digits=args.digits,
        teacher_epochs=args.teacher_epochs,
        student_epochs=args.epochs,
        seed=args.seed,
        progress=not args.json,
    )
    print(json.dumps(rows, indent=2) if args.json else format_rows(rows))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from distill.assess import assess, format_assessment

    result = assess(
        args.run_dir,
        teacher_dir=args.teacher,
        scratch_dir=args.scratch,
        eps=args.eps,
        alpha=args.alpha,
        margin=args.margin / 100,
    )
    print(json.dumps(result, indent=2) if args.json else format_assessment(result))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from distill.report import write_report

    paths = write_report(args.run_dirs, args.out)
    print(f"wrote {paths['markdown']} and {paths['html']}")
    return 0


def _cmd_compress(args: argparse.Namespace) -> int:
    from distill.compress.pipeline import load_compress_config, markdown, run_compress

    cfg = load_compress_config(args.config, args.overrides)
    result = run_compress(cfg, overwrite=args.overwrite, source=Path(args.config))
    print(markdown(cfg.name, result["rows"]))
    print(f"results.json, report.md and pareto.png are in {result['run_dir']}", file=sys.stderr)
    return 0


def _cmd_interpret(args: argparse.Namespace) -> int:
    from distill.paradigms.interpret import load_interpret_config, markdown, run_interpret

    cfg = load_interpret_config(args.config, args.overrides)
    result = run_interpret(cfg)
    print(markdown(cfg.name, result["rows"]))
    print(f"results.json, report.md and rules.txt are in {result['run_dir']}", file=sys.stderr)
    return 0


def _cmd_federated(args: argparse.Namespace) -> int:
    from distill.paradigms.federated import load_federated_config, markdown, run_federated

    cfg = load_federated_config(args.config, args.overrides)
    result = run_federated(cfg, overwrite=args.overwrite, source=Path(args.config))
    print(markdown(cfg.name, result))
    print(f"results.json and report.md are in {result['run_dir']}", file=sys.stderr)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from distill.bench import run_bench

    rows = run_bench(args.spec)
    for r in rows:
        print(
            f"{r['pair']:10s} {r['method']:14s} {r['mean']:6.2f} +- {r['std']:.2f}  vs scratch {r['vs_scratch']:+.2f}"
            f" (p={r['p_scratch']:.3f})  vs KD {r['vs_kd']:+.2f}"
        )
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from distill.config import load_config
    from distill.tune import load_space, tune

    cfg = load_config(args.config, args.overrides)
    result = tune(
        cfg, trials=args.trials, out=args.out, space=load_space(args.space), seed=args.seed
    )
    print(json.dumps(result, indent=2))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from distill.demo import format_demo, run_demo

    result = run_demo(
        dataset=args.dataset,
        out=Path(args.out),
        seed=args.seed,
        epochs=args.epochs,
        progress=True,  # a line per epoch on stderr, with or without a terminal
    )
    print(json.dumps(result, indent=2) if args.json else format_demo(result))
    return 0


# What to do about the file-system errors a user can meet, by errno
_OS_FIXES = {
    errno.ENOSPC: "free space on that disk, or point run_dir (or $DISTILL_CACHE_DIR) elsewhere",
    errno.EDQUOT: "free space within your quota, or point run_dir elsewhere",
    errno.EROFS: "that file system is read-only; set run_dir=<a writable folder>",
    errno.EACCES: "you may not write there; set run_dir=<a folder you own> or fix its permissions",
    errno.EPERM: "you may not write there; set run_dir=<a folder you own> or fix its permissions",
    errno.ENOTDIR: "a part of that path is a file, not a folder; choose another path",
    errno.EISDIR: "that path is a folder where a file was expected; choose another path",
    errno.ENAMETOOLONG: "choose a shorter path",
}


def os_error_message(e: OSError) -> str:
    """One line: the path, the system's words for the errno, and the fix."""
    path = e.filename if e.filename is not None else "?"
    what = e.strerror or str(e)
    code = errno.errorcode.get(e.errno, str(e.errno)) if e.errno is not None else "?"
    fix = _OS_FIXES.get(e.errno, "check the path and the file system")
    return f"cannot use {str(path)!r}: {what} ({code}); {fix}"


def _add_run_commands(sub: argparse._SubParsersAction) -> None:
    """Subcommands run, validate, layers."""

    p = sub.add_parser("run", help="train per a YAML config")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="dotted key=value, e.g. train.epochs=5")
    p.add_argument(
        "--resume", action="store_true", help="continue from the run dir's last checkpoint"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run in the run dir (removes only the files a run wrote)",
    )
    p.add_argument(
        "--allow-change",
        action="append",
        default=[],
        metavar="KEY",
        help="with --resume: let this setting differ from the saved config (train.optimizer.lr, "
        "train.clip_grad_norm, objective.task_weight, objective.terms.N.weight); repeatable",
    )
    p.set_defaults(fn=_cmd_run)

    p = sub.add_parser("validate", help="check a config (names, layers, shapes) without training")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=_cmd_validate)

    p = sub.add_parser("layers", help="print a model's named layers and output shapes")
    p.add_argument("model", help="a model name (convnet), package.module:attr, or a config .yaml")
    p.add_argument(
        "--role",
        choices=["student", "teacher"],
        default="student",
        help="with a config: which model",
    )
    p.add_argument(
        "--dataset", default="mnist1d", help="input shape and classes come from this dataset"
    )
    p.add_argument(
        "--args", default="{}", help="model arguments as JSON, e.g. '{\"channels\": [8, 16]}'"
    )
    p.set_defaults(fn=_cmd_layers)


def _add_export_data_lm_commands(sub: argparse._SubParsersAction) -> None:
    """Subcommands export, datasets, sample-data, methods, lm-cache, lm-demo."""
    p = sub.add_parser(
        "export",
        help="a run's best student as a HF or sentence-transformers folder, ONNX, TorchScript",
    )
    p.add_argument("run_dir")
    p.add_argument(
        "--format", choices=["hf", "sentence-transformers", "onnx", "torchscript"], required=True
    )
    p.add_argument("--out", default=None, help="destination folder (default RUN_DIR/export/FORMAT)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export there")
    p.set_defaults(fn=_cmd_export)

    p = sub.add_parser("datasets", help="list the data.name choices and their options")
    p.set_defaults(fn=_cmd_datasets)

    p = sub.add_parser(
        "sample-data", help="write the bundled digits as image folders, CSV, Parquet and HF data"
    )
    p.add_argument("out", nargs="?", default="data", help="folder to write into (default: data)")
    p.set_defaults(fn=_cmd_sample_data)

    p = sub.add_parser("methods", help="list the losses and schemes with their papers")
    p.add_argument("--json", action="store_true", help="print a JSON list of {name, family, paper}")
    p.set_defaults(fn=_cmd_methods)

    p = sub.add_parser(
        "lm-cache",
        help="store a language-model teacher's top-k or sampled logits on the training data",
    )
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--out", required=True, help="cache folder (replaced atomically)")
    p.add_argument("--mode", choices=["topk", "sample"], default="topk")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0)
    p.set_defaults(fn=_cmd_lm_cache)

    p = sub.add_parser(
        "lm-demo", help="a small GPT-2 teacher, then students by each divergence and on-policy KD"
    )
    p.add_argument("--out", default="runs/lm-demo")
    p.add_argument("--epochs", type=int, default=6, help="epochs per student")
    p.add_argument("--teacher-epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_cmd_lm_demo)


def _add_generation_commands(sub: argparse._SubParsersAction) -> None:
    """Subcommands generate, reasoning-demo, schemes."""
    p = sub.add_parser(
        "generate", help="ask a black-box teacher (HTTP or local) for responses -> JSONL"
    )
    p.add_argument("spec", help="YAML: teacher, prompts, out, filter, augment")
    p.set_defaults(fn=_cmd_generate)

    p = sub.add_parser(
        "reasoning-demo",
        help="chain-of-thought distillation on program-checked addition: with/without rationales",
    )
    p.add_argument("--out", default="runs/reasoning-demo")
    p.add_argument("--digits", type=int, default=3)
    p.add_argument("--epochs", type=int, default=12, help="epochs per student")
    p.add_argument("--teacher-epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--self-improve",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="instead: a student from --labelled rationales improves on its verified answers",
    )
    p.add_argument("--labelled", type=int, default=2000, help="with --self-improve")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_cmd_reasoning_demo)

    p = sub.add_parser("schemes", help="list the training schemes, their papers and arguments")
    p.add_argument(
        "--json", action="store_true", help="print a JSON list of {name, family, paper, ...}"
    )
    p.set_defaults(fn=_cmd_schemes)


def _add_measure_commands(sub: argparse._SubParsersAction) -> None:
    """Subcommands eval, report, compress, interpret."""
    p = sub.add_parser(
        "eval", help="metrics, robustness and cost of a finished run (writes eval.json)"
    )
    p.add_argument("run_dir")
    p.add_argument("--teacher", help="teacher run dir (default: the run's own teacher, if any)")
    p.add_argument(
        "--scratch", help="a scratch student's run dir: per-class comparison, negative transfer"
    )
    p.add_argument(
        "--eps", type=float, nargs="+", default=[0.01, 0.03, 0.1], help="FGSM/PGD budgets"
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=0.05,
        help="negative transfer: flag a class when an exact McNemar test against the scratch "
        "student gives p below this, after Holm's correction over classes (default 0.05)",
    )
    p.add_argument(
        "--margin",
        type=float,
        default=0.0,
        help="negative transfer: and only when the class lost more than this many accuracy "
        "points (default 0)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_cmd_eval)

    p = sub.add_parser("report", help="Markdown + self-contained HTML report comparing runs")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", default="report", help="output dir (report.md, report.html, PNGs)")
    p.set_defaults(fn=_cmd_report)

    p = sub.add_parser(
        "compress",
        help="prune -> distill -> quantize -> export stages from one config, with a table",
    )
    p.add_argument("config", help="a compression config (see configs/compress_mnist1d.yaml)")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides")
    p.add_argument("--overwrite", action="store_true", help="delete the run dir and start again")
    p.set_defaults(fn=_cmd_compress)

    p = sub.add_parser(
        "interpret",
        help="decision-tree and sparse-linear students of a trained teacher, with fidelity",
    )
    p.add_argument("config", help="see examples/paradigms/interpret.yaml")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides")
    p.set_defaults(fn=_cmd_interpret)


def _add_workflow_commands(sub: argparse._SubParsersAction) -> None:
    """Subcommands federated, bench, tune, demo."""
    p = sub.add_parser(
        "federated",
        help="clients share predictions on a public set; a server model is distilled from them",
    )
    p.add_argument("config", help="see examples/paradigms/federated.yaml")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides")
    p.add_argument("--overwrite", action="store_true", help="delete the run dir and start again")
    p.set_defaults(fn=_cmd_federated)

    p = sub.add_parser("bench", help="methods x pairs x seeds under one recipe -> leaderboard")
    p.add_argument("spec", help="a bench spec YAML (see benchmarks/mnist1d_methods.yaml)")
    p.set_defaults(fn=_cmd_bench)

    p = sub.add_parser(
        "tune", help="Optuna search over temperature, alpha and loss weights (val accuracy)"
    )
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--out", default="runs/tune")
    p.add_argument("--space", help="YAML mapping dotted keys to [low, high] or [low, high, log]")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_cmd_tune)

    p = sub.add_parser(
        "demo", help="teacher, scratch student and distilled student, compared in one table"
    )
    p.add_argument("--dataset", default="mnist1d", choices=["mnist1d", "digits"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--epochs", type=int, default=None, help="override the recipe's epochs (quick tries)"
    )
    p.add_argument("--out", default="runs/demo", help="parent dir of the three run dirs")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.set_defaults(fn=_cmd_demo)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill", description="Knowledge distillation for PyTorch."
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_commands(sub)
    _add_export_data_lm_commands(sub)
    _add_generation_commands(sub)
    _add_measure_commands(sub)
    _add_workflow_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done; 1 validate found problems or training diverged; 2 bad input;
    128+N stopped by signal N (the checkpoint is saved)."""
    parser = make_parser()
    # Overrides may come after flags (run CONFIG --resume a.b=1): argparse leaves those over.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if getattr(args, "overrides", None) is None or any(
            x.startswith("-") or "=" not in x for x in extra
        ):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return args.fn(args)
    except RunStopped as e:
        print(f"{e}", file=sys.stderr)
        return 128 + signal.Signals[e.signal_name].value
    except USER_ERRORS as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        print("(run with --debug for the traceback)", file=sys.stderr)
        return 1 if isinstance(e, NonFiniteError) else 2
    except OSError as e:  # the file system said no: name the path and what it said
        if args.debug:
            raise
        print(f"error: {os_error_message(e)}", file=sys.stderr)
        print("(run with --debug for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
