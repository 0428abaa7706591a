"""The options of `DistillationTrainer`, checked before the `Trainer` is built: its loss and
generation options (distill's defaults, or a TRL config's meaning), which teacher it reads
(a model, a server or a cache), and the student wrapped with its PEFT adapter."""

from __future__ import annotations

from typing import Any

from torch import nn


def trainer_options(given: dict[str, Any], args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The loss and generation options (`distill.llm.trl_compat.resolve_options`), with
    `model` and `teacher_model` loaded when given as folder paths (`kwargs` updated)."""
    from distill.llm.trl_compat import OPTIONS, load_if_path, resolve_options

    trainer_args = kwargs.get("args", args[1] if len(args) > 1 else None)
    out = resolve_options({k: given[k] for k in OPTIONS}, trainer_args)
    if not 0.0 <= out["lmbda"] <= 1.0:
        raise ValueError(f"lmbda is a probability (0..1), got {out['lmbda']}")
    if out["max_new_tokens"] < 1 or out["generation_temperature"] < 0:
        raise ValueError("max_new_tokens must be >= 1 and generation_temperature >= 0")
    out["teacher_model"] = load_if_path(given["teacher_model"], "teacher_model")
    if "model" in kwargs:
        kwargs["model"] = load_if_path(kwargs["model"], "model")
    elif args:
        args = (load_if_path(args[0], "model"), *args[1:])
    out["args"] = args
    return out


def with_peft(args: tuple, kwargs: dict[str, Any], peft_config: Any) -> tuple:
    """The student (in `kwargs` or first in `args`) wrapped with its PEFT adapter."""
    if "model" in kwargs:
        kwargs["model"] = with_adapter(kwargs["model"], peft_config)
        return args
    if args:
        return (with_adapter(args[0], peft_config), *args[1:])
    raise ValueError("peft_config needs the student: pass model=...")


def check_teacher(
    sources: tuple,
    divergence: str,
    temperature: float,
    lmbda: float,
    seq_kd: bool,
    routes: tuple = (None,) * 5,
) -> None:
    """The teacher is one of a model, a server and a cache (a model may come with a cache,
    to build it), or several (`routes`: teachers, weights, route column, and the options
    they cannot take); the sparse ones give the forward KL at T = 1 on the data's own text."""
    model, server, cache = sources
    if routes[0] is not None:
        _check_routes(sources, routes, divergence, temperature, lmbda, seq_kd)
        return
    if (model is None and server is None and cache is None) or (server is not None) + (
        cache is not None
    ) + (model is not None and cache is None) != 1:
        raise ValueError(
            "give the teacher as teacher_model (a model), teacher_server (a served one) or "
            "teacher_cache (its outputs on disk; with teacher_model, built first): one of them"
        )
    sparse = "a served teacher" if server is not None else "a teacher cache" if cache else None
    if sparse and (divergence != "forward_kl" or temperature != 1.0):
        raise ValueError(
            f"{sparse} gives top-k log-probabilities at temperature 1: its KD is the forward "
            f"KL over those k tokens and the tail; set divergence='forward_kl', temperature=1.0"
        )
    if server is not None and seq_kd:
        raise ValueError(
            "seq_kd has the teacher write the completions; a served teacher here only scores "
            "text: write them first (distill generate) and train on them"
        )
    if cache is not None and (lmbda or seq_kd):
        raise ValueError(
            "a teacher cache holds the teacher's outputs on the training rows as they are; "
            "on-policy (lmbda) and seq_kd need a teacher that reads new text"
        )


def _check_routes(
    sources: tuple, routes: tuple, divergence: str, temperature: float, lmbda: float, seq_kd: bool
) -> None:
    teachers, weights, column, chunk, cross = routes
    if any(x is not None for x in sources):
        raise ValueError("teachers= names every teacher: leave out teacher_model/server/cache")
    if (weights is None) == (column is None):
        raise ValueError(
            "teachers=: give teacher_weights (a fixed mixture) or route_column (each row's "
            "teacher), one of the two"
        )
    if lmbda or seq_kd or chunk or cross:
        raise ValueError(
            "teachers= trains on the data's own tokens with token-level KD; it cannot be "
            "combined with lmbda, seq_kd, chunk_size or cross_tokenizer"
        )
    if any(isinstance(t, dict) for t in teachers.values()) and (
        divergence != "forward_kl" or temperature != 1.0
    ):
        raise ValueError(
            "a served or cached teacher gives top-k log-probabilities at temperature 1: set "
            "divergence='forward_kl', temperature=1.0"
        )


def with_adapter(model: nn.Module, peft_config: Any) -> nn.Module:
    """`model` wrapped by `peft.get_peft_model`; a target the model lacks is named with the
    model's own module names."""
    try:
        from peft import get_peft_model
    except ImportError:
        raise ImportError("peft_config needs the peft package: pip install peft") from None
    try:
        return get_peft_model(model, peft_config)
    except ValueError as e:
        kinds = sorted({name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name})
        raise ValueError(
            f"peft_config: {str(e).splitlines()[0]}; this model's module names end in {kinds[:20]}"
        ) from None
