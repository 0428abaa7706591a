"""What every scheme shares: the build context, argument parsing, soft-target losses, heads.

A scheme is built from a `SchemeContext` (the models, objective and data a config names)
and its own typed arguments; it returns named losses from `step()` and never runs a loop.
What the trainer reads of a scheme, required and optional (`on_fit_start`,
`after_optimizer_step`, `wants_clean`, ...), is listed with its defaults in
`distill.schemes.contract`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.core.settings import Strict
from distill.losses.response import soft_target_kd
from distill.models.mode import set_training
from distill.objective import Objective

if TYPE_CHECKING:
    from distill.taps import Tap


class NoArgs(Strict):
    """Arguments of a scheme that takes none: any key is an error."""


@dataclass
class SchemeContext:
    """Everything a config provides to a scheme. Teachers arrive with weights loaded."""

    student: nn.Module
    objective: Objective
    data: Any  # DataSplits
    args: dict[str, Any] = field(default_factory=dict)
    teacher: nn.Module | None = None
    teachers: list[nn.Module] = field(default_factory=list)
    teacher_classes: list[list[int] | None] = field(default_factory=list)
    peers: list[nn.Module] = field(default_factory=list)
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None
    seed: int = 0
    teacher_cache: Any = None  # a distill.loop.cache.TeacherCache when the teacher is cached


def sample_input(ctx: SchemeContext, n: int = 2) -> Tensor:
    """A few training inputs, for sizing modules with a dry forward pass."""
    from distill.data import load_batch

    return load_batch(ctx.data.train, torch.arange(min(n, len(ctx.data.train))))["input"]


def parse_args(model: type[Strict], args: dict[str, Any], scheme: str) -> Any:
    """Typed scheme arguments; unknown or bad ones name the scheme and the valid keys."""
    try:
        return model.model_validate(args)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(
                    f"scheme.args.{where}: scheme {scheme!r} has no argument {where!r}; "
                    f"its arguments are {sorted(model.model_fields)}"
                )
            else:
                problems.append(f"scheme.args.{where}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("\n".join(problems)) from None


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: dropout off, BatchNorm statistics fixed."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def fresh_copy(model: nn.Module, keep: dict[nn.Module, nn.Module] | None = None) -> nn.Module:
    """Same architecture, newly initialised weights (every layer that can reset itself).

    `keep` maps submodules of `model` to what the copy holds in their place: the copy is
    built with them (deepcopy's memo), so no model is changed after it is made.
    """
    memo = {id(old): new for old, new in (keep or {}).items()}
    clone = copy.deepcopy(model, memo)
    for module in clone.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return clone


def as_vector(x: Tensor) -> Tensor:
    """(N, C, *spatial) -> (N, C) by averaging positions; (N, D) unchanged."""
    return x.float().flatten(2).mean(-1) if x.dim() > 2 else x.float().flatten(1)


def soft_kl(student_logits: Tensor, target_probs: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(q || softmax(z_s / T)) for a given target distribution q, mean over rows.

    `q` is treated as a constant. With q = softmax(z_t / T) this is Hinton et al.'s KD loss.
    """
    return soft_target_kd(student_logits, target_probs, temperature=temperature)


def soft_probs(logits: Tensor, temperature: float) -> Tensor:
    return F.softmax(logits.detach().float() / temperature, dim=-1)


def soft_target_ce(logits: Tensor, target_probs: Tensor, rows: Tensor | None = None) -> Tensor:
    """Cross-entropy against a soft target distribution, mean over `rows` (bool) or all rows."""
    per_row = -(target_probs.detach() * F.log_softmax(logits.float(), dim=-1)).sum(-1)
    if rows is None:
        return per_row.mean()
    return (per_row * rows).sum() / rows.sum().clamp_min(1)


def labelled(batch: dict[str, Tensor]) -> Tensor:
    return batch["target"] >= 0


class Head(nn.Module):
    """An auxiliary classifier on a tapped feature: average positions, then linear layers."""

    def __init__(self, in_dim: int, num_classes: int, hidden: int | None = None):
        super().__init__()
        self.bottleneck = (
            nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU()) if hidden else nn.Identity()
        )
        self.fc = nn.Linear(hidden or in_dim, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(logits, bottleneck features)."""
        h = self.bottleneck(as_vector(x))
        return self.fc(h), h


@torch.no_grad()
def dry_shapes(model: nn.Module, layers: Sequence[str], sample: Tensor, label: str) -> dict:
    """Shapes of the tapped tensors (and 'logits') for one small batch, model left as it was."""
    from distill.taps import Tap

    was = model.training
    model.eval()
    try:
        with Tap(model, layers, label) as tap:
            k = tap.run(sample)
    finally:
        model.train(was)
    return {"logits": tuple(k.logits.shape), **{n: tuple(t.shape) for n, t in k.feats.items()}}


def vector_dim(shape: Sequence[int]) -> int:
    return int(shape[1]) if len(shape) > 2 else int(math.prod(shape[1:]))


def student_tap(ctx: SchemeContext, extra: list[str]) -> Tap:
    """A tap on the student at the objective's layers and `extra`."""
    from distill.taps import Tap

    layers = list(dict.fromkeys([*ctx.objective.student_layers(), *extra]))
    return Tap(ctx.student, layers, "student")


class SampleMemory(nn.Module):
    """Each training sample's latest predicted distribution (a buffer: checkpointed, resumable)."""

    def __init__(self, num_samples: int, num_classes: int):
        super().__init__()
        self.register_buffer("probs", torch.zeros(num_samples, num_classes))
        self.register_buffer("seen", torch.zeros(num_samples, dtype=torch.bool))

    @torch.no_grad()
    def write(self, index: Tensor, probs: Tensor) -> None:
        self.probs[index] = probs.detach().float()
        self.seen[index] = True


class SchemeBase:
    """Holds the trained modules, the frozen ones, and the task loss from the objective."""

    Args: type[Strict] = NoArgs
    wants_clean = False

    def __init__(
        self,
        student: nn.Module,
        objective: Objective,
        trained: dict[str, nn.Module] | None = None,
        frozen: Sequence[nn.Module] = (),
    ):
        self.student = student
        self.objective = objective
        self.modules = nn.ModuleDict(
            {"student": student, **(trained or {}), "objective": objective}
        )
        self.frozen = [freeze(m) for m in frozen]

    def task(self, logits: Tensor, batch: dict[str, Tensor], step: int) -> Tensor:
        """The objective's weighted task loss (labelled rows only) for one model's logits."""
        weight = self.objective.task_weight.at(step)
        if weight == 0.0:
            return logits.new_zeros((), dtype=torch.float32)
        return weight * self.objective.task_loss(logits, batch["target"])

    def student_objective(self, knowledge: Any, batch: dict[str, Tensor], step: int):
        """Task loss plus the objective's teacher-free terms (e.g. tf_kd) for the student."""
        return self.objective(knowledge, None, batch, step)

    def eval_model(self) -> nn.Module:
        return self.student

    def to(self, device: torch.device) -> SchemeBase:
        self.modules.to(device)
        for m in self.frozen:
            m.to(device)
        return self

    def train(self, mode: bool = True) -> None:
        set_training(self.modules, mode)
        for m in self.frozen:
            set_training(m, False)


class SelfTeaching(SchemeBase):
    """A scheme whose student teaches itself (self-KD, consistency training): every step is
    one pass of the student through its tapped layers (`self._tap`), its own objective
    (the task loss and the objective's teacher-free terms), plus the scheme's terms.

    A subclass writes `own_terms(k, batch, step) -> {name: (weight, value)}`; each value is
    reported under its name and added to the loss with its weight. No term (an empty dict,
    e.g. a batch without labelled rows) leaves the student's own objective alone.
    """

    _tap: Any
    own_terms: Any  # (k, batch, step) -> {name: (weight, value)}, written by each subclass

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        k = self._tap.run(batch["input"])
        total, out = self.student_objective(k, batch, step)
        for name, (weight, value) in self.own_terms(k, batch, step).items():
            out[name] = value
            total = total + weight * value
        return {"loss": total, **out}
