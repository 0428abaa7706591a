"""Terms and the objective: which loss reads which tensors, with what weight.

A `Term` binds one loss function to where it reads (`'logits'` or a layer name on each
side), an optional adapter that maps the student tensor to the teacher's shape, and a
weight that may ramp up. The `Objective` sums the weighted terms and the task loss and
returns every component by name. The layer names the terms read are the taps a run needs.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.core.errors import did_you_mean
from distill.losses.response import PreparedTeacher
from distill.taps import INPUT_GRAD, Knowledge


@dataclass(frozen=True)
class Schedule:
    """A value that moves from `start` to `value` over `steps` optimizer steps, then stays.

    Used for loss weights (a warm-up: `Schedule(0.9, steps=500)` ramps 0 -> 0.9) and for
    loss arguments (an annealed temperature: `Schedule(2.0, steps=5000, start=8.0)`).
    `ramp` is 'linear' or 'cosine' (a half-cosine, smooth at both ends). With `steps=0`
    it is the constant `value`.
    """

    value: float
    steps: int = 0
    ramp: str = "linear"
    start: float = 0.0
    delay: int = 0  # hold `start` for this many steps first (phase a term in later)

    def __post_init__(self) -> None:
        if self.ramp not in ("linear", "cosine"):
            raise ValueError(f"schedule ramp must be 'linear' or 'cosine', got {self.ramp!r}")
        if self.steps < 0 or self.delay < 0:
            raise ValueError(
                f"schedule steps and delay must be >= 0, got {self.steps} and {self.delay}"
            )

    def at(self, step: int) -> float:
        step -= self.delay
        if step < 0:
            return self.start
        if self.steps == 0 or step >= self.steps:
            return self.value
        frac = step / self.steps
        if self.ramp == "cosine":
            frac = 0.5 - 0.5 * math.cos(math.pi * frac)
        return self.start + (self.value - self.start) * frac


def as_schedule(value: float | Schedule) -> Schedule:
    return value if isinstance(value, Schedule) else Schedule(float(value))


class ChannelAdapter(nn.Module):
    """Maps a student tensor (N, Cs, *spatial) to the teacher's (N, Ct, *spatial_t).

    A learned map over channels: linear (= a 1x1 convolution) by default, or a k x k
    convolution for feature maps (`kernel_size=3`), as in FitNets' regressors. When the
    spatial sizes differ, `resize` says how to match them: 'pool' (adaptive average
    pooling) or 'interpolate' (linear/bilinear); it must be chosen explicitly. Its weights
    join the optimizer.
    """

    def __init__(
        self,
        student_shape: Sequence[int],
        teacher_shape: Sequence[int],
        *,
        kernel_size: int = 1,
        resize: str | None = None,
    ):
        super().__init__()
        if len(student_shape) != len(teacher_shape):
            raise ValueError(
                f"adapter cannot map a {len(student_shape)}-d student tensor {tuple(student_shape)} "
                f"to a {len(teacher_shape)}-d teacher tensor {tuple(teacher_shape)}; tap layers "
                f"whose outputs have the same number of dims"
            )
        if resize not in (None, "pool", "interpolate"):
            raise ValueError(f"adapter resize must be 'pool' or 'interpolate', got {resize!r}")
        dims = len(student_shape) - 2
        self.channels_last = kernel_size == 1 or dims == 0
        if self.channels_last:
            self.proj: nn.Module = nn.Linear(student_shape[1], teacher_shape[1])
        else:
            conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
            self.proj = conv(
                student_shape[1], teacher_shape[1], kernel_size, padding=kernel_size // 2
            )
        self.spatial = tuple(teacher_shape[2:])
        self.resize = resize if tuple(student_shape[2:]) != self.spatial else None
        if tuple(student_shape[2:]) != self.spatial and resize is None:
            raise ValueError(
                f"student {tuple(student_shape)} and teacher {tuple(teacher_shape)} differ in spatial "
                f"size; choose how to match them with resize: pool or resize: interpolate"
            )

    def forward(self, x: Tensor) -> Tensor:
        # A Linear needs the channel dim last; a convolution takes (N, C, *spatial) as is.
        y = self.proj(x.movedim(1, -1)).movedim(-1, 1) if self.channels_last else self.proj(x)
        if self.resize == "pool":
            pool = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
            y = pool[len(self.spatial)](y, self.spatial)
        elif self.resize == "interpolate":
            mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(self.spatial)]
            y = F.interpolate(y, size=self.spatial, mode=mode, align_corners=False)
        return y


class TokenAdapter(nn.Module):
    """Maps transformer tokens (N, L, Ds) to the teacher's width (N, L, Dt): a linear map of
    the last dim (the `linear` adapter maps dim 1, the channels of feature maps)."""

    def __init__(
        self,
        student_shape: Sequence[int],
        teacher_shape: Sequence[int],
        *,
        resize: str | None = None,
    ):
        super().__init__()
        if len(student_shape) != 3 or len(teacher_shape) != 3:
            raise ValueError(
                f"the tokens adapter maps (N, L, D) tensors, got student {tuple(student_shape)} "
                f"and teacher {tuple(teacher_shape)}"
            )
        if student_shape[1] != teacher_shape[1]:
            raise ValueError(
                f"student has {student_shape[1]} tokens and teacher {teacher_shape[1]}; the "
                f"tokens adapter needs the same patch grid"
            )
        self.proj = nn.Linear(student_shape[2], teacher_shape[2])

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


def _token_grid(tokens: int, map_shape: Sequence[int]) -> tuple[int, ...]:
    """The spatial grid of `tokens` patch tokens for a feature map of spatial size map_shape."""
    if len(map_shape) == 1:
        return (tokens,)
    if math.prod(map_shape) == tokens:
        return tuple(map_shape)
    side = math.isqrt(tokens)
    if len(map_shape) == 2 and side * side == tokens:
        return (side, side)
    raise ValueError(
        f"cannot tell the patch grid of {tokens} tokens for a {tuple(map_shape)} feature map; "
        "the teacher's tokens must form a square grid or match the map's size"
    )


class FeatureToTokens(nn.Module):
    """Maps a CNN feature map (N, C, *spatial) onto a transformer's patch tokens (N, L, D).

    For a CNN student of a vision-transformer teacher: the map is resized to the teacher's
    patch grid (square, or the map's own size; `resize` pool or interpolate, chosen
    explicitly when the sizes differ), a 1x1 convolution maps C to D channels, and the grid
    is flattened row-major, the order patch embeddings use.
    """

    def __init__(
        self,
        student_shape: Sequence[int],
        teacher_shape: Sequence[int],
        *,
        resize: str | None = None,
    ):
        super().__init__()
        if len(student_shape) not in (3, 4) or len(teacher_shape) != 3:
            raise ValueError(
                f"the feature_to_tokens adapter maps a feature map (N, C, H[, W]) to tokens "
                f"(N, L, D), got student {tuple(student_shape)} and teacher {tuple(teacher_shape)}"
            )
        self.grid = _token_grid(teacher_shape[1], student_shape[2:])
        self.adapter = ChannelAdapter(
            student_shape, (student_shape[0], teacher_shape[2], *self.grid), resize=resize
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.adapter(x).flatten(2).transpose(1, 2)


ADAPTERS: dict[str, Callable[..., nn.Module]] = {
    "linear": ChannelAdapter,
    "conv1x1": ChannelAdapter,
    "conv3x3": functools.partial(ChannelAdapter, kernel_size=3),
    "tokens": TokenAdapter,
    "feature_to_tokens": FeatureToTokens,
}


class Term(nn.Module):
    """One weighted loss between a student tensor and a teacher tensor.

    `loss_args` are the loss's keyword hyperparameters; a `Schedule` value is evaluated at
    the current step (e.g. an annealed temperature). A loss with a `targets` keyword gets
    the batch labels (-1 marks an unlabelled row). `needs_teacher=False` marks losses that
    read only the student (teacher-free KD), which may run without a teacher.

    `prepared` (a `distill.losses.PreparedTeacher`) lets a cached teacher hand this term
    its teacher-side values computed once per sample: when the teacher's knowledge holds
    `prepared_key`, the term reads that instead of the logits. Only for terms that read
    the teacher's logits with the preparation's arguments constant.
    """

    def __init__(
        self,
        name: str,
        loss_fn: Callable[..., Tensor],
        *,
        weight: float | Schedule = 1.0,
        student: str | Sequence[str] = "logits",
        teacher: str | Sequence[str] = "logits",
        adapter: nn.Module | None = None,
        loss_args: dict | None = None,
        needs_teacher: bool = True,
        prepared: PreparedTeacher | None = None,
    ):
        super().__init__()
        self.name = name
        self.loss_fn = loss_fn
        self.weight = as_schedule(weight)
        self.student = student
        self.teacher = teacher
        self.adapter = adapter
        self.loss_args = dict(loss_args or {})
        self.needs_teacher = needs_teacher
        # Batch fields a loss may ask for by keyword: labels, and dataset indices (memory banks).
        try:
            target = loss_fn.forward if isinstance(loss_fn, nn.Module) else loss_fn
            params = inspect.signature(target).parameters
        except (TypeError, ValueError):
            params = {}
        self.batch_fields = {
            kw: key for kw, key in (("targets", "target"), ("index", "index")) if kw in params
        }
        _check_loss_args(name, self.loss_args, params)
        fixed = {}
        if prepared is not None and teacher == "logits" and not self.batch_fields:
            for arg in prepared.args:
                value = self.loss_args.get(arg, params[arg].default if arg in params else None)
                if value is None or value is inspect.Parameter.empty or isinstance(value, Schedule):
                    prepared = None  # a scheduled or unknown argument: prepare per step
                    break
                fixed[arg] = value
        else:
            prepared = None
        self.prepared = prepared
        self._prepared_args = fixed
        self.prepared_key = f"{name}@prepared"

    def prepare_teacher(self) -> Callable[[Tensor], tuple[Tensor, ...]] | None:
        """Maps the teacher's logits to what this term reads of them, or None."""
        if self.prepared is None:
            return None
        return functools.partial(self.prepared.prepare, **self._prepared_args)

    @property
    def wants_targets(self) -> bool:
        return "targets" in self.batch_fields

    def forward(
        self,
        student: Knowledge,
        teacher: Knowledge | None,
        batch: Mapping[str, Tensor] | None = None,
        step: int = 0,
    ) -> Tensor:
        s = student.get(self.student)
        if self.adapter is not None:
            s = self.adapter(s)
        args = {k: v.at(step) if isinstance(v, Schedule) else v for k, v in self.loss_args.items()}
        for keyword, key in self.batch_fields.items():
            if batch is None or key not in batch:
                raise ValueError(
                    f"term {self.name!r} needs the batch's {key!r}, but none was given"
                )
            args[keyword] = batch[key]
        if self.prepared is not None and teacher is not None:
            ready = teacher.feats.get(self.prepared_key)
            if ready is not None:
                return self.prepared.loss(s, ready, **{**self._prepared_args, **args})
        t = teacher.get(self.teacher) if teacher is not None else None
        return self.loss_fn(s, t, **args)


def _check_loss_args(name: str, loss_args: Mapping[str, object], params: Mapping) -> None:
    """Every loss argument must be one of the loss's keywords (checked when the term is
    made, not at the first step), with a "did you mean" for a misspelt one."""
    if not params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    valid = [
        n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n not in ("targets", "index")
    ]
    for arg in loss_args:
        if arg not in valid:
            raise ValueError(
                f"term {name!r}: its loss has no argument {arg!r}{did_you_mean(arg, valid)}; "
                f"its arguments are {valid}"
            )


def tapped_layers(wheres: Iterable[str | Sequence[str]]) -> list[str]:
    """The layer names to tap for terms reading `wheres` ('logits', a name or a list of names)."""
    names = []
    for where in wheres:
        names += [where] if isinstance(where, str) else list(where)
    return list(dict.fromkeys(n for n in names if n not in ("logits", INPUT_GRAD)))


def reads_input_grad(wheres: Iterable[str | Sequence[str]]) -> bool:
    """True when any of `wheres` ('logits', a name or a list of names) is the input gradient."""
    return INPUT_GRAD in [n for w in wheres for n in ([w] if isinstance(w, str) else w)]


class Objective(nn.Module):
    """task_weight * task loss + sum of weighted terms; returns (total, components).

    Components hold each unweighted loss by name ('task', then each term's name), so
    logs show what each term contributes independently of its weight.
    """

    def __init__(
        self,
        terms: Sequence[Term] = (),
        *,
        task_weight: float | Schedule = 1.0,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        names = [t.name for t in terms]
        if len(set(names)) != len(names) or "task" in names:
            raise ValueError(f"term names must be unique and not 'task', got {names}")
        self.terms = nn.ModuleList(terms)
        self.task_weight = as_schedule(task_weight)
        self.label_smoothing = label_smoothing
        # True when every training target is a label (no -1 rows): the task loss may then
        # take the plain mean. `distill.app.build` sets it after checking the data.
        self.all_labelled = False

    def student_layers(self) -> list[str]:
        return tapped_layers(t.student for t in self.terms)

    def teacher_layers(self) -> list[str]:
        return tapped_layers(t.teacher for t in self.terms)

    def prepared_teacher(self) -> dict[str, Callable[[Tensor], tuple[Tensor, ...]]]:
        """{knowledge key: map from teacher logits} for terms a cached teacher can prepare."""
        out = {}
        for term in self.terms:
            fn = term.prepare_teacher()
            if fn is not None:
                out[term.prepared_key] = fn
        return out

    def reads_input_grad(self) -> bool:
        """True when a term reads the input gradient (the scheme must compute it)."""
        return reads_input_grad(w for t in self.terms for w in (t.student, t.teacher))

    def task_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Cross-entropy averaged over labelled rows; target -1 marks an unlabelled row.

        A batch with no labelled rows gives 0 (not NaN), so unlabelled transfer data can
        be mixed into any batch.
        """
        targets = targets.reshape(-1)
        if self.all_labelled:  # known at build time: the plain mean, one kernel
            return F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]),
                targets,
                label_smoothing=self.label_smoothing,
            )
        labelled = (targets >= 0).sum()
        summed = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            targets,
            ignore_index=-1,
            reduction="sum",
            label_smoothing=self.label_smoothing,
        )
        return summed / labelled.clamp_min(1)

    def forward(
        self,
        student: Knowledge,
        teacher: Knowledge | None,
        batch: Mapping[str, Tensor] | None,
        step: int,
        *,
        include_task: bool = True,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """`batch` holds 'target' (labels, -1 = unlabelled) and optionally 'index'.

        `include_task=False` leaves the task loss out, for schemes that replace it.
        """
        components: dict[str, Tensor] = {}
        parts: list[Tensor] = []
        task_w = self.task_weight.at(step)
        targets = batch.get("target") if batch is not None else None
        if targets is not None and task_w != 0.0 and include_task:
            components["task"] = self.task_loss(student.logits, targets)
            parts.append(components["task"] if task_w == 1.0 else task_w * components["task"])
        for term in self.terms:
            if teacher is None and term.needs_teacher:
                raise ValueError(f"term {term.name!r} needs a teacher, but none was given")
            value = components[term.name] = term(student, teacher, batch, step)
            weight = term.weight.at(step)
            parts.append(value if weight == 1.0 else weight * value)
        total = student.logits.new_zeros((), dtype=torch.float32) if not parts else parts[0]
        for part in parts[1:]:
            total = total + part
        return total.float(), components
