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
import signal
import sys

from distill.app import commands
from distill.core.errors import USER_ERRORS, NonFiniteError, RunStopped

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
    p.add_argument(
        "--no-test",
        action="store_true",
        help="leave the test split unread (a search that chooses on validation tests later)",
    )
    p.set_defaults(fn=commands.cmd_run)

    p = sub.add_parser("validate", help="check a config (names, layers, shapes) without training")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=commands.cmd_validate)

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
    p.set_defaults(fn=commands.cmd_layers)


def _add_export_data_lm_commands(sub: argparse._SubParsersAction) -> None:
    """Subcommands export, datasets, sample-data, methods, lm-demo."""
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
    p.set_defaults(fn=commands.cmd_export)

    p = sub.add_parser("datasets", help="list the data.name choices and their options")
    p.set_defaults(fn=commands.cmd_datasets)

    p = sub.add_parser(
        "sample-data", help="write the bundled digits as image folders, CSV, Parquet and HF data"
    )
    p.add_argument("out", nargs="?", default="data", help="folder to write into (default: data)")
    p.set_defaults(fn=commands.cmd_sample_data)

    p = sub.add_parser("methods", help="list the losses and schemes with their papers")
    p.add_argument("--json", action="store_true", help="print a JSON list of {name, family, paper}")
    p.set_defaults(fn=commands.cmd_methods)

    p = sub.add_parser(
        "lm-demo", help="a small GPT-2 teacher, then students by each divergence and on-policy KD"
    )
    p.add_argument("--out", default="runs/lm-demo")
    p.add_argument("--epochs", type=int, default=6, help="epochs per student")
    p.add_argument("--teacher-epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=commands.cmd_lm_demo)


def _add_lm_teacher_commands(sub: argparse._SubParsersAction) -> None:
    """Subcommands lm-cache and serve-teacher: a language-model teacher kept out of the
    student's process."""
    p = sub.add_parser(
        "lm-cache",
        help="store a language-model teacher's top-k or sampled logits on the training data",
    )
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--out", required=True, help="cache folder (built shard by shard, resumable)")
    p.add_argument("--mode", choices=["topk", "sample"], default="topk")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--bits", type=int, choices=[16, 8], default=16, help="log-probability bits")
    p.add_argument("--zstd", type=int, default=0, metavar="LEVEL", help="compress (0: off)")
    p.add_argument(
        "--shards", type=int, help="files the cache is cut into (default: 8192 rows each)"
    )
    p.add_argument("--shard", help="i/n: build only shard i of n (several processes or machines)")
    p.set_defaults(fn=commands.cmd_lm_cache)

    p = sub.add_parser(
        "serve-teacher",
        help="serve a causal-LM teacher with log-probabilities in vLLM's completions API",
    )
    p.add_argument("model", help="a Hugging Face causal-LM folder (save_pretrained)")
    p.add_argument("--tokenizer", help="tokenizer.json or folder (default: the model folder's)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0: any free port (printed)")
    p.add_argument("--name", help="the model's name in the API (default: the folder's name)")
    p.add_argument("--max-logprobs", type=int, default=128)
    p.add_argument("--api-key-env", help="environment variable holding the key clients must send")
    p.set_defaults(fn=commands.cmd_serve_teacher)


def _add_generation_commands(sub: argparse._SubParsersAction) -> None:
    """Subcommands generate, reasoning-demo, schemes."""
    p = sub.add_parser(
        "generate", help="ask a black-box teacher (HTTP or local) for responses -> JSONL"
    )
    p.add_argument("spec", help="YAML: teacher, prompts, out, filter, augment")
    p.set_defaults(fn=commands.cmd_generate)

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
    p.set_defaults(fn=commands.cmd_reasoning_demo)

    p = sub.add_parser("schemes", help="list the training schemes, their papers and arguments")
    p.add_argument(
        "--json", action="store_true", help="print a JSON list of {name, family, paper, ...}"
    )
    p.set_defaults(fn=commands.cmd_schemes)


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
    p.set_defaults(fn=commands.cmd_eval)

    p = sub.add_parser("report", help="Markdown + self-contained HTML report comparing runs")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", default="report", help="output dir (report.md, report.html, PNGs)")
    p.set_defaults(fn=commands.cmd_report)

    p = sub.add_parser(
        "compress",
        help="prune -> distill -> quantize -> export stages from one config, with a table",
    )
    p.add_argument("config", help="a compression config (see configs/compress_mnist1d.yaml)")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides")
    p.add_argument("--overwrite", action="store_true", help="delete the run dir and start again")
    p.set_defaults(fn=commands.cmd_compress)

    p = sub.add_parser(
        "interpret",
        help="decision-tree and sparse-linear students of a trained teacher, with fidelity",
    )
    p.add_argument("config", help="see examples/paradigms/interpret.yaml")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides")
    p.set_defaults(fn=commands.cmd_interpret)


def _add_workflow_commands(sub: argparse._SubParsersAction) -> None:
    """Subcommands federated, auto, bench, tune, demo."""
    p = sub.add_parser(
        "federated",
        help="clients share predictions on a public set; a server model is distilled from them",
    )
    p.add_argument("config", help="see examples/paradigms/federated.yaml")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides")
    p.add_argument("--overwrite", action="store_true", help="delete the run dir and start again")
    p.set_defaults(fn=commands.cmd_federated)

    from distill.app.auto.command import add_parser as add_auto
    from distill.app.startup import training_command

    add_auto(sub, training_command)

    p = sub.add_parser("bench", help="methods x pairs x seeds under one recipe -> leaderboard")
    p.add_argument("spec", help="a bench spec YAML (see benchmarks/mnist1d_methods.yaml)")
    p.set_defaults(fn=commands.cmd_bench)

    p = sub.add_parser(
        "tune", help="Optuna search over temperature, alpha and loss weights (val accuracy)"
    )
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--out", default="runs/tune")
    p.add_argument("--space", help="YAML mapping dotted keys to [low, high] or [low, high, log]")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=commands.cmd_tune)

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
    p.set_defaults(fn=commands.cmd_demo)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill", description="Knowledge distillation for PyTorch."
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_commands(sub)
    _add_export_data_lm_commands(sub)
    _add_lm_teacher_commands(sub)
    _add_generation_commands(sub)
    _add_measure_commands(sub)
    _add_workflow_commands(sub)
    return parser


MAX_ERROR_CHARS = 4000


def clipped(message: str, limit: int = MAX_ERROR_CHARS) -> str:
    """An error message cut to `limit` characters: a message that quotes its input (a
    value, a list of problems) must not flood the terminal when the input is huge."""
    if len(message) <= limit:
        return message
    return f"{message[:limit]} ... ({len(message) - limit:,} more characters not shown)"


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
        print(f"error: {clipped(str(e))}", file=sys.stderr)
        print("(run with --debug for the traceback)", file=sys.stderr)
        return 1 if isinstance(e, NonFiniteError) else 2
    except OSError as e:  # the file system said no: name the path and what it said
        if args.debug:
            raise
        print(f"error: {clipped(os_error_message(e))}", file=sys.stderr)
        print("(run with --debug for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
