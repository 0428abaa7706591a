"""What each `distill` subcommand does: one function per command, taking the parsed
arguments and returning the exit code. `distill.app.cli` builds the parser and maps errors
to messages; these import what they need when they run, so `distill --help` stays light."""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
from pathlib import Path

from distill.app.startup import training_command
from distill.core.errors import ConfigError, NonFiniteError


def _resume_command(args: argparse.Namespace, *extra: str) -> str:
    """The exact command that continues this run: its config, its overrides, then `extra`."""
    words = ["distill", "run", args.config, *args.overrides, *extra, "--resume"]
    return shlex.join(words)


@training_command
def cmd_run(args: argparse.Namespace) -> int:
    from distill.app.run import run_experiment
    from distill.core import distributed
    from distill.core.config import load_config

    cfg = load_config(args.config, args.overrides)
    try:
        results = run_experiment(
            cfg,
            resume=args.resume,
            overwrite=args.overwrite,
            allow_changes=args.allow_change,
            test=not getattr(args, "no_test", False),
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


def cmd_validate(args: argparse.Namespace) -> int:
    from distill.app.validate import validate
    from distill.core.config import load_config

    cfg = load_config(args.config, args.overrides)
    problems = validate(cfg)
    if problems:
        print(f"{args.config}: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print(f"{args.config}: OK (names, layers, weights and a dry forward through every term)")
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    import torch

    from distill.core.config import ModelConfig, load_config
    from distill.core.table import format_table
    from distill.data import load_dataset
    from distill.models import build_model
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


def cmd_datasets(args: argparse.Namespace) -> int:
    """The dataset table: each name, what it reads and the options it takes."""
    import inspect

    from distill.core.table import format_table
    from distill.data import DATASETS

    rows = []
    for name, fn in DATASETS.items():
        target = fn.options_of() if hasattr(fn, "options_of") else fn
        params = inspect.signature(target).parameters
        options = ", ".join(p for p in params if params[p].kind is inspect.Parameter.KEYWORD_ONLY)
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        rows.append([name, doc, options or "(see its docs)"])
    print(format_table(["name", "reads", "options"], rows))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from distill.app.artifacts import export_run

    result = export_run(args.run_dir, args.format, args.out, overwrite=args.overwrite)
    print(json.dumps(result, indent=2))
    return 0


def cmd_sample_data(args: argparse.Namespace) -> int:
    from distill.data.samples import write_digits

    out = write_digits(args.out)
    print(
        f"wrote the digits under {out}/: digits_png/ (class folders + list.csv), digits.parquet, "
        f"digits.csv, digits_hf/ (save_to_disk); the configs in examples/data/ read them"
    )
    return 0


def _print_rows(rows: list[dict], as_json: bool, columns: list[str]) -> int:
    """`rows` as JSON, or as a table of `columns` (list values joined by commas)."""
    from distill.core.table import format_table

    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [
        [", ".join(v) if isinstance(v, list) else v for v in (r[c] for c in columns)] for r in rows
    ]
    print(format_table(columns, table))
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from distill.app.methods import list_methods

    return _print_rows(list_methods(), args.json, ["name", "family", "paper"])


def cmd_schemes(args: argparse.Namespace) -> int:
    from distill.schemes import list_schemes

    return _print_rows(list_schemes(), args.json, ["name", "family", "teacher", "paper", "args"])


def cmd_lm_cache(args: argparse.Namespace) -> int:
    from distill.app.build import build
    from distill.core.config import load_config, parse_config
    from distill.core.fingerprints import weights_fingerprint
    from distill.core.progress import WorkProgress
    from distill.llm.cache_build import build_cache, token_data_fingerprint, tokenizer_fingerprint
    from distill.llm.cache_store import shard_ranges

    _shard_args(args, 1 << 62)  # a malformed --shard fails before anything is built
    cfg = load_config(args.config, args.overrides)
    data = cfg.model_dump(mode="json")
    for arg in ("teacher_cache", "teacher_server"):  # the teacher being cached is local
        data["scheme"]["args"].pop(arg, None)
    built = build(parse_config(data))
    if built.teacher is None:
        print("error: the config has no teacher to cache", file=sys.stderr)
        return 2
    train = built.data.train
    shards, only = _shard_args(args, len(train))
    fingerprint = {
        "teacher": weights_fingerprint(built.teacher),
        "tokenizer": tokenizer_fingerprint(built.data.tokenizer),
        "data": token_data_fingerprint(train),
    }
    ranges = shard_ranges(len(train), shards)
    rows = sum(b - a for a, b in (ranges if only is None else [ranges[only]]))
    with WorkProgress(rows, "teacher cache (rows)") as bar:
        cache = build_cache(
            built.teacher, train, Path(args.out), mode=args.mode, k=args.k, batch_size=32,
            temperature=args.temperature, vocab=built.data.num_classes, seed=cfg.train.seed,
            value_bits=args.bits, zstd=args.zstd, shards=shards, only=only,
            fingerprint=fingerprint, on_rows=bar.update,
        )  # fmt: skip
    if cache is None:
        print(f"wrote shard {only} of {shards} in {args.out}; the other shards are still missing")
        return 0
    pairs = cache.bytes_per_token() / cache.k
    print(
        f"wrote {args.out}: {len(cache)} rows in {shards} shard(s), "
        f"{cache.bytes_per_token():.1f} bytes per token, {pairs:.2f} per (id, log-prob) pair "
        f"({args.mode}, k={args.k}, {args.bits}-bit; dense fp16 logits would take "
        f"{2 * cache.vocab} bytes)"
    )
    return 0


def _shard_args(args: argparse.Namespace, rows: int) -> tuple[int, int | None]:
    """(shards, the one shard to build or None) from --shards and --shard i/n."""
    if args.shards is not None and args.shards < 1:
        raise ConfigError(f"--shards must be 1 or more, got {args.shards}")
    if args.shard is None:
        return args.shards or max(1, -(-rows // 8192)), None
    try:
        i, n = (int(x) for x in args.shard.split("/"))
    except ValueError:
        raise ConfigError(f"--shard takes i/n (e.g. 0/4), got {args.shard!r}") from None
    if not 0 <= i < n:
        raise ConfigError(f"--shard {args.shard}: shard i of n counts from 0 to n - 1")
    if args.shards and args.shards != n:
        raise ConfigError(f"--shard {args.shard} and --shards {args.shards} disagree")
    return n, i


def cmd_serve_teacher(args: argparse.Namespace) -> int:
    from distill.llm.serve import run_server

    run_server(
        args.model,
        tokenizer=args.tokenizer,
        host=args.host,
        port=args.port,
        name=args.name,
        max_logprobs=args.max_logprobs,
        api_key_env=args.api_key_env,
    )
    return 0


@training_command
def cmd_lm_demo(args: argparse.Namespace) -> int:
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


def cmd_generate(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from distill.app.blackbox import run_generation

    report = run_generation(args.spec)
    print(json.dumps(asdict(report), indent=2))
    return 0


@training_command
def cmd_reasoning_demo(args: argparse.Namespace) -> int:
    from distill.app.reasoning import format_rows, run_reasoning_demo

    if args.self_improve:
        from distill.app.reasoning import run_self_improvement
        from distill.core.table import format_table

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


def cmd_eval(args: argparse.Namespace) -> int:
    from distill.app.assess import assess, format_assessment

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


def cmd_report(args: argparse.Namespace) -> int:
    from distill.app.report import write_report

    paths = write_report(args.run_dirs, args.out)
    print(f"wrote {paths['markdown']} and {paths['html']}")
    return 0


@training_command
def cmd_compress(args: argparse.Namespace) -> int:
    from distill.compress.pipeline import load_compress_config, markdown, run_compress

    cfg = load_compress_config(args.config, args.overrides)
    result = run_compress(cfg, overwrite=args.overwrite, source=Path(args.config))
    print(markdown(cfg.name, result["rows"]))
    print(f"results.json, report.md and pareto.png are in {result['run_dir']}", file=sys.stderr)
    return 0


@training_command
def cmd_interpret(args: argparse.Namespace) -> int:
    from distill.paradigms.interpret import load_interpret_config, markdown, run_interpret

    cfg = load_interpret_config(args.config, args.overrides)
    result = run_interpret(cfg)
    print(markdown(cfg.name, result["rows"]))
    print(f"results.json, report.md and rules.txt are in {result['run_dir']}", file=sys.stderr)
    return 0


@training_command
def cmd_federated(args: argparse.Namespace) -> int:
    from distill.paradigms.federated import load_federated_config, markdown, run_federated

    cfg = load_federated_config(args.config, args.overrides)
    result = run_federated(cfg, overwrite=args.overwrite, source=Path(args.config))
    print(markdown(cfg.name, result))
    print(f"results.json and report.md are in {result['run_dir']}", file=sys.stderr)
    return 0


@training_command
def cmd_bench(args: argparse.Namespace) -> int:
    from distill.app.bench import NEGATIVE_TRANSFER_RULE, run_bench

    rows = run_bench(args.spec)
    for r in rows:
        flag = "  negative transfer" if r["negative_transfer"] else ""
        print(
            f"{r['pair']:10s} {r['method']:14s} {r['mean']:6.2f} +- {r['std']:.2f}  vs scratch {r['vs_scratch']:+.2f}"
            f" (p={r['p_scratch']:.3f}, Holm {r['p_scratch_holm']:.3f})  vs KD {r['vs_kd']:+.2f}{flag}"
        )
    print(f"({NEGATIVE_TRANSFER_RULE})")
    return 0


@training_command
def cmd_tune(args: argparse.Namespace) -> int:
    from distill.app.tune import load_space, tune
    from distill.core.config import load_config

    cfg = load_config(args.config, args.overrides)
    result = tune(
        cfg, trials=args.trials, out=args.out, space=load_space(args.space), seed=args.seed
    )
    print(json.dumps(result, indent=2))
    return 0


@training_command
def cmd_demo(args: argparse.Namespace) -> int:
    from distill.app.demo import format_demo, run_demo

    result = run_demo(
        dataset=args.dataset,
        out=Path(args.out),
        seed=args.seed,
        epochs=args.epochs,
        progress=True,  # a line per epoch on stderr, with or without a terminal
    )
    print(json.dumps(result, indent=2) if args.json else format_demo(result))
    return 0
