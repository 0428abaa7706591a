"""Consistency self-distillation: the student is taught by an average of its own weights
(mean teacher), by its predictions averaged over epochs (temporal ensembling), or by its
prediction on the clean view of each sample (clean to augmented).

Auxiliary modules (EMA copies, memories) live beside the student in the scheme and are
never part of the exported model.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.core.settings import Strict
from distill.objective import Schedule
from distill.schemes.base import (
    SampleMemory,
    SchemeContext,
    SelfTeaching,
    freeze,
    parse_args,
    soft_kl,
    soft_probs,
    student_tap,
)


class MeanTeacherArgs(Strict):
    decay: float = Field(0.999, gt=0, lt=1)
    consistency: Literal["mse", "kl"] = "mse"
    weight: float = Field(1.0, ge=0)
    rampup_steps: int = Field(0, ge=0)
    temperature: float = Field(1.0, gt=0)  # kl only
    evaluate: Literal["ema", "student"] = "ema"  # which model is evaluated and exported


class MeanTeacher(SelfTeaching):
    """EMA / mean teacher (Tarvainen & Valpola 2017): a weight average of the student teaches it.

    After each optimizer step theta' <- d theta' + (1 - d) theta with d = min(decay,
    (1 + s) / (10 + s)) (fast early averaging); buffers such as BatchNorm statistics are
    copied. The student matches the EMA model's prediction on a differently augmented view
    (the clean view when no augmentation is configured): MSE between probabilities, or KL.
    """

    Args = MeanTeacherArgs
    wants_clean = True

    def __init__(self, ctx: SchemeContext):
        a = self.args = parse_args(MeanTeacherArgs, ctx.args, "mean_teacher")
        self.ema = freeze(copy.deepcopy(ctx.student))
        self.augment, self.seed = ctx.augment, ctx.seed
        self.weight = Schedule(a.weight, a.rampup_steps, "cosine")
        super().__init__(ctx.student, ctx.objective, {"ema": self.ema})
        self._tap = student_tap(ctx, [])

    def teacher_view(self, batch: dict[str, Tensor], step: int) -> Tensor:
        clean = batch.get("clean", batch["input"])
        if self.augment is None:
            return clean
        gen = torch.Generator().manual_seed(self.seed * 7_919 + step)  # resume-exact noise
        return self.augment(clean.cpu(), gen).to(clean.device)

    def own_terms(self, k: Any, batch: dict[str, Tensor], step: int) -> dict[str, tuple]:
        a = self.args
        with torch.no_grad():
            teacher = self.ema(self.teacher_view(batch, step))
        if a.consistency == "mse":
            diff = F.softmax(k.logits.float(), -1) - F.softmax(teacher.float(), -1)
            consistency = diff.pow(2).sum(-1).mean()
        else:
            consistency = soft_kl(k.logits, soft_probs(teacher, a.temperature), a.temperature)
        return {"consistency": (self.weight.at(step), consistency)}

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        d = min(self.args.decay, (1 + step) / (10 + step))
        for e, s in zip(self.ema.parameters(), self.student.parameters()):
            e.mul_(d).add_(s.detach(), alpha=1 - d)
        for e, s in zip(self.ema.buffers(), self.student.buffers()):
            e.copy_(s)

    def eval_model(self) -> nn.Module:
        return self.ema if self.args.evaluate == "ema" else self.student

    def train(self, mode: bool = True) -> None:
        super().train(mode)
        self.ema.eval()


# --------------------------------------------------------------------------- temporal ensembling
class TemporalEnsemblingArgs(Strict):
    momentum: float = Field(0.6, ge=0, lt=1)  # alpha of the per-sample prediction average
    weight: float = Field(1.0, ge=0)
    rampup_steps: int = Field(0, ge=0)


class TemporalEnsembling(SelfTeaching):
    """Temporal ensembling (Laine & Aila 2017): each sample's target is the running average
    of the model's own past predictions for it, Z <- a Z + (1 - a) p, read with the bias
    correction Z / (1 - a^n) after n visits. loss = task + w(t) * ||p - target||^2 (squared
    difference of probability vectors), on samples seen before; unlabelled samples count.
    """

    Args = TemporalEnsemblingArgs

    def __init__(self, ctx: SchemeContext):
        a = self.args = parse_args(TemporalEnsemblingArgs, ctx.args, "temporal_ensembling")
        self.memory = SampleMemory(len(ctx.data.train), ctx.data.num_classes)
        self.memory.register_buffer("visits", torch.zeros(len(ctx.data.train)))
        self.weight = Schedule(a.weight, a.rampup_steps, "cosine")
        super().__init__(ctx.student, ctx.objective, {"memory": self.memory})
        self._tap = student_tap(ctx, [])

    def targets(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """(bias-corrected ensemble predictions, rows that have one)."""
        visits = self.memory.visits[index]
        correction = 1 - self.args.momentum ** visits.clamp_min(1)
        return self.memory.probs[index] / correction.unsqueeze(1), visits > 0

    def own_terms(self, k: Any, batch: dict[str, Tensor], step: int) -> dict[str, tuple]:
        index = batch["index"]
        target, seen = self.targets(index)
        p = F.softmax(k.logits.float(), -1)
        no_row = p.new_zeros(())  # no sample seen before: nothing to match yet
        temporal = (p[seen] - target[seen]).pow(2).sum(-1).mean() if seen.any() else no_row
        with torch.no_grad():
            m = self.args.momentum
            self.memory.probs[index] = m * self.memory.probs[index] + (1 - m) * p.detach()
            self.memory.visits[index] += 1
        return {"temporal": (self.weight.at(step), temporal)}


# --------------------------------------------------------------------------- consistency
class ConsistencyArgs(Strict):
    temperature: float = Field(2.0, gt=0)
    weight: float = Field(1.0, ge=0)


class CleanToAugmented(SelfTeaching):
    """Clean-to-augmented self-distillation: the model's prediction on the clean input
    (detached) teaches its prediction on the augmented input, T^2 KL(p_clean^T || p_aug^T),
    in the spirit of consistency training (Xie et al. 2020, UDA) and data-augmentation
    self-KD. Needs `data.augment`.
    """

    Args = ConsistencyArgs
    wants_clean = True

    def __init__(self, ctx: SchemeContext):
        self.args = parse_args(ConsistencyArgs, ctx.args, "consistency")
        if ctx.augment is None:
            raise ConfigError(
                "scheme consistency compares clean and augmented inputs; add data.augment "
                "(e.g. [{name: shift}, {name: noise}])"
            )
        super().__init__(ctx.student, ctx.objective)
        self._tap = student_tap(ctx, [])

    def own_terms(self, k: Any, batch: dict[str, Tensor], step: int) -> dict[str, tuple]:
        a = self.args
        with torch.no_grad():
            clean = self.student(batch["clean"])
        return {
            "consistency": (
                a.weight,
                soft_kl(k.logits, soft_probs(clean, a.temperature), a.temperature),
            )
        }


# --------------------------------------------------------------------------- CS-KD


__all__ = ["CleanToAugmented", "MeanTeacher", "TemporalEnsembling"]
