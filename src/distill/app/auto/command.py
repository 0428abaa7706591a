"""`distill auto` on the command line: flags, or a YAML file with an `auto:` section, or both
(flags win). Imports nothing heavy until it runs, so `distill --help` stays quick.

    distill auto --teacher runs/teacher --model-config teacher.yaml --data digits \\
        --max-params 20k --max-latency 1ms --min-accuracy 0.97x --time 30m --out runs/auto
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction, startup: Any) -> None:
    p = sub.add_parser(
        "auto",
        help="a teacher, data and a budget in: the best student that fits out, with the proof",
    )
    p.add_argument("config", nargs="?", help="a YAML file with an auto: section (optional)")
    p.add_argument("--teacher", help="the teacher's weights: a .safetensors file or its run dir")
    p.add_argument(
        "--model-config",
        help="the teacher's model: a YAML with name/args, or the config it was trained with",
    )
    p.add_argument(
        "--data",
        help="digits, mnist1d, folder:PATH (class subfolders), table:PATH (CSV/Parquet), "
        "hf:PATH; default: the data of --model-config's run",
    )
    p.add_argument("--max-params", help="e.g. 2M, 500k")
    p.add_argument("--max-size", help="the student's file, e.g. 1.5MB")
    p.add_argument("--max-latency", help="median at batch 1, e.g. 3ms or 300us")
    p.add_argument("--throughput-batch", type=int, help="also measure samples/s at this batch")
    p.add_argument("--min-throughput", type=float, help="samples/s at --throughput-batch")
    p.add_argument("--device", help="where latency is measured (default cpu)")
    p.add_argument("--threads", type=int, help="intra-op threads for latency (default 1)")
    p.add_argument("--min-accuracy", help="0.9 (absolute), 90%% or 0.97x (of the teacher's)")
    p.add_argument("--time", help="wall-clock budget, e.g. 2h, 45m")
    p.add_argument("--trials", type=int, help="search trials (default 20 without --time)")
    p.add_argument("--epochs", type=int, help="per trial and final run (default 30)")
    p.add_argument("--seeds", type=int, help="seeds per configuration in the final comparison")
    p.add_argument(
        "--max-seeds",
        type=int,
        help="seeds of an undecided verdict's second look (default 2x --seeds; = --seeds: none)",
    )
    p.add_argument("--max-candidates", type=int, help="students searched (default 4)")
    p.add_argument("--methods", help="comma-separated: restrict the methods searched")
    p.add_argument("--export", choices=["onnx", "torchscript", "hf"])
    p.add_argument(
        "--compress",
        choices=["auto", "off"],
        help="auto (default): when the teacher breaks the budget, also try it pruned, and "
        "int8 students; off: plain students only",
    )
    p.add_argument("--out", help="output folder (default runs/auto)")
    p.add_argument("--storage", help="an SQLAlchemy URL for the study (default: SQLite in --out)")
    p.add_argument("--join", metavar="URL", help="join the study at URL as one more worker")
    p.set_defaults(fn=startup(cmd_auto))


def data_spec(text: str) -> dict[str, Any]:
    """'digits' -> {name: digits}; 'folder:PATH', 'table:PATH', 'hf:PATH' -> a loader's options."""
    kind, sep, path = text.partition(":")
    if not sep:
        return {"name": text}
    loaders = {
        "folder": ("image_folder", "train"),
        "table": ("table", "train"),
        "csv": ("table", "train"),
        "parquet": ("table", "train"),
        "hf": ("hf", "path"),
    }
    if kind not in loaders:
        from distill.core.errors import ConfigError

        raise ConfigError(
            f"--data {text!r}: unknown kind {kind!r}; write a dataset name (digits), or "
            f"folder:PATH, table:PATH or hf:PATH"
        )
    name, key = loaders[kind]
    return {"name": name, "options": {key: path}}


def _teacher_from(path: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The teacher's model spec (and its training data, if the file is a run config)."""
    from distill.core.config import read_yaml
    from distill.core.errors import ConfigError

    raw = read_yaml(Path(path), "model config")
    if not isinstance(raw, dict):
        raise ConfigError(f"--model-config {path!r}: expected a mapping with name and args")
    if "student" in raw:  # the config the teacher was trained with
        return dict(raw["student"]), raw.get("data")
    if "name" in raw:
        return {k: raw[k] for k in ("name", "args") if k in raw}, None
    raise ConfigError(
        f"--model-config {path!r}: give the teacher's model as name/args, or the config it "
        f"was trained with (its student: section is the teacher)"
    )


def _flags_over(raw: dict[str, Any], args: argparse.Namespace) -> None:
    """The command line's budget and settings flags, over what the file said."""
    budget = dict(raw.get("budget") or {})
    for flag, key in (
        ("max_params", "max_params"),
        ("max_size", "max_size_bytes"),
        ("max_latency", "max_latency_ms"),
        ("throughput_batch", "throughput_batch"),
        ("min_throughput", "min_throughput"),
        ("device", "device"),
        ("threads", "threads"),
        ("min_accuracy", "min_accuracy"),
    ):
        if getattr(args, flag) is not None:
            budget[key] = getattr(args, flag)
    raw["budget"] = budget
    for flag, key in (
        ("time", "time_s"),
        ("trials", "trials"),
        ("epochs", "epochs"),
        ("seeds", "seeds"),
        ("max_seeds", "max_seeds"),
        ("max_candidates", "max_candidates"),
        ("export", "export"),
        ("compress", "compress"),
        ("out", "out"),
        ("storage", "storage"),
    ):
        if getattr(args, flag) is not None:
            raw[key] = getattr(args, flag)


def settings_from(args: argparse.Namespace) -> tuple[Any, bool]:
    from distill.app.auto.settings import AutoSettings
    from distill.core.config import read_yaml, validated
    from distill.core.errors import ConfigError

    raw: dict[str, Any] = {}
    if args.join:  # a worker takes the study's own settings; its flags set only its share
        from distill.app.auto.study import settings_of_study

        raw = settings_of_study(args.join)
    if args.config:
        whole = read_yaml(Path(args.config), "auto config")
        if not isinstance(whole, dict) or not isinstance(whole.get("auto"), dict):
            raise ConfigError(f"{args.config}: expected an auto: section (see docs/auto.md)")
        raw = dict(whole["auto"])
    teacher = dict(raw.get("teacher") or {})
    if args.model_config:
        spec, data = _teacher_from(args.model_config)
        teacher.update(spec)
        if data is not None and "data" not in raw:
            raw["data"] = data
    if args.teacher:
        teacher["weights"] = args.teacher
    if teacher:
        raw["teacher"] = teacher
    if args.data:
        raw["data"] = data_spec(args.data)
    _flags_over(raw, args)
    if args.methods:
        raw["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.join:
        raw["storage"] = args.join
    missing = [k for k in ("teacher", "data") if k not in raw]
    if missing:
        raise ConfigError(
            f"auto: no {' and no '.join(missing)} given; pass --teacher and --model-config "
            f"(the teacher), --data (or a run config as --model-config), or an auto: file"
        )
    return validated(raw, AutoSettings, "auto"), bool(args.join)


def cmd_auto(args: argparse.Namespace) -> int:
    from distill.app.auto import auto

    settings, join = settings_from(args)
    result = auto(settings, join=join)
    if result is not None:
        for line in result.verdict:
            print(line)
        print(f"report: {result.report}")
    return 0
