"""Objective terms from a config: each loss resolved and its arguments checked, adapters
and parametric losses sized from a dry forward of both models, the class counts checked,
and each term tried once on the dry batch (so a bad term fails before training)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from distill.core.config import ExperimentConfig, TermConfig
from distill.core.errors import ConfigError
from distill.core.registry import lookup
from distill.data import (
    DataSplits,
)
from distill.losses import LOSSES
from distill.objective import ADAPTERS, Schedule, Term, reads_input_grad
from distill.taps import INPUT_GRAD, Knowledge, Tap, with_input_grad


def resolve_loss(name: str) -> Callable[..., Tensor]:
    """A loss function, or a loss module class (built from the two tensor shapes)."""
    if ":" in name:
        return lookup("loss", name, {})
    table = {k: v.fn for k, v in LOSSES.items()}
    return lookup("loss", name, table, "list them with: distill methods")


def is_module_loss(fn: object) -> bool:
    return isinstance(fn, type) and issubclass(fn, nn.Module)


# Builders that load trained weights themselves (a teacher needs no weights: file then)
@torch.no_grad()
def dry_knowledge(
    model: nn.Module, layers: list[str], batch: dict[str, Tensor], role: str
) -> Knowledge:
    was_training = model.training
    model.eval()
    with Tap(model, layers, role) as tap:
        try:
            knowledge = tap.run(batch["input"])
        except (RuntimeError, ValueError, TypeError) as e:
            raise ConfigError(
                f"the {role} failed on a batch of shape {tuple(batch['input'].shape)}: "
                f"{str(e).splitlines()[0]}. Check its args against the data (inputs "
                f"{tuple(batch['input'].shape[1:])} per sample); `distill layers` shows what it expects"
            ) from None
        finally:
            model.train(was_training)
    return knowledge


def config_reads_input_grad(cfg: ExperimentConfig) -> bool:
    return reads_input_grad(w for t in cfg.objective.terms for w in (t.student, t.teacher))


def add_input_grads(
    student: nn.Module,
    teacher: nn.Module,
    student_layers: list[str],
    teacher_layers: list[str],
    batch: dict[str, Tensor],
    student_k: Knowledge,
    teacher_k: Knowledge,
) -> None:
    """Give the dry knowledge an input gradient too, so terms reading it can be checked."""
    with (
        Tap(teacher, teacher_layers, "teacher") as t_tap,
        Tap(student, student_layers, "student") as s_tap,
    ):
        with torch.no_grad():
            labels = torch.where(
                batch["target"] >= 0, batch["target"], teacher(batch["input"]).argmax(-1)
            )
        teacher_k.feats[INPUT_GRAD] = with_input_grad(
            t_tap, batch["input"], labels, create_graph=False
        ).feats[INPUT_GRAD]
        student_k.feats[INPUT_GRAD] = with_input_grad(
            s_tap, batch["input"], labels, create_graph=False
        ).feats[INPUT_GRAD]


def check_classes(
    data: DataSplits,
    student_k: Knowledge,
    teacher_k: Knowledge | None,
    padded: bool = False,
    teacher_logits_read: bool = True,
) -> None:
    """Student, teacher and data must agree on the number of classes (the last logit dim).
    `padded` (language models) allows more logits than tokens: padding rows are cut off.
    A teacher whose logits no term reads (cross-task: it teaches through its features) may
    predict another label space."""
    n_student = student_k.logits.shape[-1]
    if padded and n_student >= data.num_classes:
        return
    if n_student != data.num_classes:
        raise ConfigError(
            f"the student predicts {n_student} classes but the data has {data.num_classes}; "
            f"build it with num_classes={data.num_classes}"
        )
    if teacher_k is not None and teacher_k.logits.shape[-1] != n_student and teacher_logits_read:
        raise ConfigError(
            f"the teacher predicts {teacher_k.logits.shape[-1]} classes and the student {n_student}; "
            f"response losses compare them class by class, so both need the data's "
            f"{data.num_classes} classes. A teacher trained on another label space (cross-task) "
            f"can teach through its features: give every term a teacher layer and an adapter"
        )


def _check_loss_args(fn: Callable, term: TermConfig, where: str) -> None:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    valid = [
        n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n not in ("targets", "index")
    ]
    for arg in term.args:
        if arg not in valid:
            raise ConfigError(
                f"{where}.args: loss {term.loss!r} has no argument {arg!r}; its arguments are {valid}"
            )


def build_terms(
    cfg: ExperimentConfig,
    student_k: Knowledge,
    teacher_k: Knowledge | None,
    batch: dict[str, Tensor],
    num_samples: int | None,
) -> list[Term]:
    """Terms with adapters sized from the tensors of a dry forward pass.

    Each term is tried on the dry tensors; every failing term is reported in one error.
    """
    terms, problems = [], []
    for i, tc in enumerate(cfg.objective.terms):
        try:
            terms.append(
                _build_term(f"objective.terms.{i}", tc, student_k, teacher_k, batch, num_samples)
            )
        except ConfigError as e:
            problems.append(str(e))
    if problems:
        raise ConfigError("\n".join(problems))
    return terms


def loss_args(where: str, args: dict[str, Any]) -> dict[str, Any]:
    """Config loss args; a mapping with a 'schedule' key becomes a `Schedule`:

    temperature: {schedule: cosine, start: 8.0, end: 2.0, steps: 5000}
    """
    out = {}
    for key, value in args.items():
        if isinstance(value, dict) and "schedule" in value:
            extra = set(value) - {"schedule", "start", "end", "steps"}
            if extra or "end" not in value or "steps" not in value:
                raise ConfigError(
                    f"{where}.args.{key}: a scheduled value needs schedule (linear|cosine), start, "
                    f"end and steps, got {sorted(value)}"
                )
            try:
                value = Schedule(
                    float(value["end"]),
                    int(value["steps"]),
                    value["schedule"],
                    float(value.get("start", 0.0)),
                )
            except ValueError as e:
                raise ConfigError(f"{where}.args.{key}: {e}") from None
        out[key] = value
    return out


def needs_teacher(loss: str) -> bool:
    return LOSSES[loss].needs_teacher if loss in LOSSES else True


@torch.no_grad()
def _adapted(adapter: nn.Module | None, x: Tensor) -> Tensor:
    return adapter(x) if adapter is not None else x


def _shapes(x: Tensor | tuple[Tensor, ...]) -> tuple:
    """A tensor's shape, or a tuple of shapes for a term that reads a list of layers."""
    return tuple(x.shape) if isinstance(x, Tensor) else tuple(tuple(t.shape) for t in x)


def _shape(x: Tensor | tuple[Tensor, ...]) -> str:
    return (
        str(tuple(x.shape)) if isinstance(x, Tensor) else ", ".join(str(tuple(t.shape)) for t in x)
    )


def _term_adapter(where: str, tc: TermConfig, s_tensor: Any, t_tensor: Any) -> Any:
    """The trained map from the student's tensor to the teacher's shape, when asked for."""
    if tc.adapter is not None and not isinstance(s_tensor, Tensor):
        raise ConfigError(
            f"{where}.adapter: an adapter maps one tensor; this term reads a list of layers"
        )
    if tc.adapter is None or t_tensor is None:
        return None
    # with a list on the teacher side (a feature and the teacher's own tensors, e.g.
    # [bn, bn.weight, bn.bias]) the adapter maps the student to the first of them
    target = t_tensor if isinstance(t_tensor, Tensor) else t_tensor[0]
    try:
        return ADAPTERS[tc.adapter](tuple(s_tensor.shape), tuple(target.shape), resize=tc.resize)
    except ValueError as e:
        raise ConfigError(f"{where}.adapter: {e}") from None


def _module_loss(
    where: str,
    tc: TermConfig,
    cls: Any,
    args: dict[str, Any],
    adapter: Any,
    s_tensor: Any,
    t_tensor: Any,
    num_samples: int | None,
) -> Any:
    """A loss with parameters (projection heads, memory banks), built from the shapes."""
    if t_tensor is None:
        raise ConfigError(
            f"{where}: loss {tc.loss!r} is built from teacher shapes and needs a teacher"
        )
    if "num_samples" in inspect.signature(cls).parameters:  # memory banks: a row per sample
        if num_samples is None:
            raise ConfigError(
                f"{where}: loss {tc.loss!r} keeps a memory bank with a row per training "
                f"sample, and streamed data has no sample count or stable sample ids; load "
                f"the data map-style (streaming: false)"
            )
        args.setdefault("num_samples", num_samples)
    try:
        return cls(_shapes(_adapted(adapter, s_tensor)), _shapes(t_tensor), **args)
    except ValueError as e:
        raise ConfigError(f"{where} ({tc.loss}): {e}") from None


def _build_term(
    where: str,
    tc: TermConfig,
    student_k: Knowledge,
    teacher_k: Knowledge | None,
    batch: dict[str, Tensor],
    num_samples: int | None,
) -> Term:
    fn = resolve_loss(tc.loss)
    _check_loss_args(fn, tc, where)
    s_tensor = student_k.get(tc.student)
    t_tensor = teacher_k.get(tc.teacher) if teacher_k is not None else None
    adapter = _term_adapter(where, tc, s_tensor, t_tensor)
    args = loss_args(where, tc.args)
    if is_module_loss(fn):  # a loss with parameters, sized from the dry-forward shapes
        fn, args = _module_loss(where, tc, fn, args, adapter, s_tensor, t_tensor, num_samples), {}
    term = Term(
        tc.name or tc.loss,
        fn,
        weight=Schedule(tc.weight, tc.warmup_steps, tc.ramp, delay=tc.start_step),
        student=tc.student,
        teacher=tc.teacher,
        adapter=adapter,
        loss_args=args,
        needs_teacher=needs_teacher(tc.loss),
        prepared=LOSSES[tc.loss].prepared if tc.loss in LOSSES else None,
    )
    if teacher_k is not None or not term.needs_teacher:
        try:
            term.eval()  # a dry call must not update memory banks or queues
            with torch.no_grad():
                term(student_k, teacher_k, batch, 0)
            term.train()
        except (ValueError, RuntimeError, TypeError) as e:
            shapes = f"student {tc.student!r} {_shape(s_tensor)}"
            if t_tensor is not None:
                shapes += f" vs teacher {tc.teacher!r} {_shape(t_tensor)}"
            raise ConfigError(f"{where} ({tc.loss}: {shapes}): {e}") from None
    return term
