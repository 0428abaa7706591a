"""Distillation schemes for quantized students (the student is built with `student.quantize`).

- `speq` (Boo et al. 2021, Stochastic Precision Ensemble): no separate teacher. The teacher
  is the student itself run with each activation quantizer switched to full precision at
  random (probability `prob`); its softened output, detached, teaches the fully quantized
  pass through a cosine-similarity loss, w * (1 - cos(p_teacher^T, p_student^T)).
- `qkd` (Kim et al. 2019, QKD: Quantization-aware Knowledge Distillation): three phases on
  one optimizer-step clock. Self-studying (steps < self_study): the quantized student learns
  the task alone. Co-studying (next co_study steps): the full-precision teacher is trained
  too, each model learning the task plus T^2 KL from the other's detached soft targets, so
  the teacher adapts to what the quantized student can represent. Tutoring (the rest): the
  teacher is frozen and teaches the student with T^2 KL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from distill.compress.quant import act_quantizers, is_quantized, stochastic_precision
from distill.core.errors import ConfigError
from distill.core.settings import Strict
from distill.schemes.base import SchemeBase, SchemeContext, parse_args, soft_kl, soft_probs
from distill.taps import Tap


def _require_quantized(ctx: SchemeContext, scheme: str) -> None:
    if not is_quantized(ctx.student):
        raise ConfigError(
            f"scheme {scheme!r} trains a quantized student: add student.quantize "
            "(e.g. student: {..., quantize: {bits: 4}})"
        )


def cosine_distillation(student_logits: Tensor, teacher_logits: Tensor, temperature: float):
    """1 - cos(softmax(z_t / T), softmax(z_s / T)), averaged over the batch (SPEQ's loss)."""
    p_s = F.softmax(student_logits.float() / temperature, dim=-1)
    p_t = soft_probs(teacher_logits, temperature)  # detached: the target
    return (1.0 - F.cosine_similarity(p_s, p_t, dim=-1)).mean()


class SPEQArgs(Strict):
    prob: float = Field(0.5, gt=0, le=1)  # chance that an activation runs at full precision
    temperature: float = Field(1.0, gt=0)
    weight: float = Field(1.0, ge=0)


class SPEQ(SchemeBase):
    """Stochastic-precision self-distillation of a quantized student (Boo et al. 2021)."""

    Args = SPEQArgs

    def __init__(self, ctx: SchemeContext):
        self.args = parse_args(SPEQArgs, ctx.args, "speq")
        _require_quantized(ctx, "speq")
        if not act_quantizers(ctx.student):
            raise ConfigError(
                "scheme 'speq' varies activation precision: set student.quantize.act_bits"
            )
        super().__init__(ctx.student, ctx.objective)
        self._tap = Tap(ctx.student, ctx.objective.student_layers(), "student")
        self._gen = torch.Generator().manual_seed(ctx.seed)

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        a = self.args
        # the teacher pass first: restoring BatchNorm statistics after it must not touch
        # tensors the student's graph has saved
        with torch.no_grad(), stochastic_precision(self.student, a.prob, self._gen):
            teacher = self.student(batch["input"])
        knowledge = self._tap.run(batch["input"])
        total, out = self.student_objective(knowledge, batch, step)
        out["speq"] = cosine_distillation(knowledge.logits, teacher, a.temperature)
        return {"loss": total + a.weight * out["speq"], **out}


class QKDArgs(Strict):
    self_study: int = Field(..., ge=0)  # optimizer steps of the student alone
    co_study: int = Field(..., ge=0)  # then steps where teacher and student teach each other
    temperature: float = Field(2.0, gt=0)
    weight: float = Field(1.0, ge=0)  # of each KL term
    teacher_lr_scale: float = Field(0.1, gt=0)  # the trained teacher's learning rate factor


class QKD(SchemeBase):
    """Self-studying, co-studying and tutoring phases of QKD (Kim et al. 2019)."""

    Args = QKDArgs

    def __init__(self, ctx: SchemeContext):
        self.args = parse_args(QKDArgs, ctx.args, "qkd")
        _require_quantized(ctx, "qkd")
        if ctx.teacher is None:
            raise ConfigError("scheme 'qkd' needs a full-precision teacher (the teacher section)")
        super().__init__(ctx.student, ctx.objective, {"teacher": ctx.teacher})
        self.teacher = ctx.teacher
        for p in self.teacher.parameters():
            p.requires_grad_(True)
        self._tap = Tap(ctx.student, ctx.objective.student_layers(), "student")

    @property
    def lr_scales(self) -> dict[str, float]:
        return {"teacher": self.args.teacher_lr_scale}

    def phase(self, step: int) -> str:
        a = self.args
        if step < a.self_study:
            return "self_study"
        return "co_study" if step < a.self_study + a.co_study else "tutoring"

    def train(self, mode: bool = True) -> None:
        super().train(mode)
        self.teacher.train(mode and getattr(self, "_phase", "") == "co_study")

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        a, x = self.args, batch["input"]
        phase = self._phase = self.phase(step)
        self.teacher.train(phase == "co_study" and self.student.training)
        knowledge = self._tap.run(x)
        total, out = self.student_objective(knowledge, batch, step)
        if phase == "self_study":
            return {"loss": total, **out}
        if phase == "co_study":
            t_logits = self.teacher(x)
            out["teacher_task"] = self.task(t_logits, batch, step)
            out["teacher_kd"] = soft_kl(
                t_logits, soft_probs(knowledge.logits, a.temperature).detach(), a.temperature
            )
            total = total + out["teacher_task"] + a.weight * out["teacher_kd"]
        else:
            with torch.no_grad():
                t_logits = self.teacher(x)
        out["kd"] = soft_kl(
            knowledge.logits, soft_probs(t_logits, a.temperature).detach(), a.temperature
        )
        return {"loss": total + a.weight * out["kd"], **out}
