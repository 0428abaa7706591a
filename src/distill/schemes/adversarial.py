"""Adversarial distillation: a discriminator between teacher and student outputs, and
adversarially robust distillation (ARD) with PGD adversarial training as its teacher-free
baseline.

Every scheme here runs on the one training loop with one optimizer. Where two players
have opposite goals (discriminator and student), each player's loss is built so that its
gradient reaches only that player's parameters, and both players take their step in the
same optimizer update.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.core.settings import Strict
from distill.robustness import pgd
from distill.schemes.base import (
    SchemeBase,
    SchemeContext,
    as_vector,
    dry_shapes,
    labelled,
    parse_args,
    sample_input,
    soft_kl,
    soft_probs,
    vector_dim,
)
from distill.taps import Tap


# --------------------------------------------------------------------------- discriminator
class Discriminator(nn.Module):
    """A small MLP scoring how teacher-like an output vector is (one logit per row).

    No BatchNorm, so a forward pass on teacher rows and one on student rows do not mix
    their statistics."""

    def __init__(self, in_dim: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


def discriminator_losses(disc: nn.Module, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
    """(L_D, L_adv) of adversarial distillation for one batch.

    L_D = -E[log D(T(x))] - E[log(1 - D(S(x)))] trains the discriminator to tell teacher
    outputs (`real`) from student outputs (`fake`); L_adv = -E[log D(S(x))] trains the
    student to fool it (the non-saturating form). L_D sees the outputs detached, so its
    gradient reaches only the discriminator; L_adv runs the discriminator with its
    parameters detached, so its gradient reaches only the student (survey of Gou et al.
    2021, eqs. for AKD; Goodfellow et al. 2014).
    """
    real, fake = real.float(), fake.float()
    bce = F.binary_cross_entropy_with_logits
    real_score = disc(real.detach())
    fake_score = disc(fake.detach())
    l_d = bce(real_score, torch.ones_like(real_score)) + bce(
        fake_score, torch.zeros_like(fake_score)
    )
    frozen = {k: v.detach() for k, v in disc.named_parameters()}
    fooled = torch.func.functional_call(disc, frozen, (fake,))
    l_adv = bce(fooled, torch.ones_like(fooled))
    return l_d, l_adv


class AdversarialArgs(Strict):
    compare: Literal["logits", "features"] = "logits"  # what the discriminator sees
    student_layer: str | None = None  # compare: features
    teacher_layer: str | None = None  # compare: features
    hidden: int = Field(64, ge=1)  # discriminator width
    weight: float = Field(0.1, ge=0)  # of L_adv in the student's loss
    d_weight: float = Field(1.0, gt=0)  # of L_D (scales the discriminator's learning rate)
    temperature: float = Field(1.0, gt=0)  # compare: logits; the discriminator sees softmax(z / T)


class AdversarialKD(SchemeBase):
    """GAN-style distribution matching: a discriminator learns to tell the teacher's outputs
    from the student's, and the student learns to fool it, on top of the config's objective
    (task loss and any KD terms). `compare: logits` compares softened class distributions;
    `compare: features` compares tapped layers (position-averaged; the student's projected to the
    teacher's width by a trained linear map). Wang et al. 2018 (KDGAN), Xu et al. 2018;
    losses as in `discriminator_losses`.
    """

    Args = AdversarialArgs

    def __init__(self, ctx: SchemeContext):
        a = self.args = parse_args(AdversarialArgs, ctx.args, "adversarial")
        if ctx.teacher is None:
            raise ConfigError("scheme 'adversarial' needs a teacher")
        s_layers, t_layers = ctx.objective.student_layers(), ctx.objective.teacher_layers()
        if a.compare == "features":
            if not (a.student_layer and a.teacher_layer):
                raise ConfigError(
                    "scheme 'adversarial' with compare: features needs scheme.args.student_layer "
                    "and scheme.args.teacher_layer (layer names, see `distill layers`)"
                )
            s_layers = sorted({*s_layers, a.student_layer})
            t_layers = sorted({*t_layers, a.teacher_layer})
            sample = sample_input(ctx)
            s_dim = vector_dim(
                dry_shapes(ctx.student, [a.student_layer], sample, "student")[a.student_layer]
            )
            t_dim = vector_dim(
                dry_shapes(ctx.teacher, [a.teacher_layer], sample, "teacher")[a.teacher_layer]
            )
            self.proj: nn.Module = nn.Linear(s_dim, t_dim) if s_dim != t_dim else nn.Identity()
            width = t_dim
        else:
            self.proj = nn.Identity()
            width = ctx.data.num_classes
        self.disc = Discriminator(width, a.hidden)
        self.teacher = ctx.teacher
        super().__init__(
            ctx.student,
            ctx.objective,
            {"discriminator": self.disc, "projection": self.proj},
            frozen=[ctx.teacher],
        )
        self._student_tap = Tap(ctx.student, s_layers, "student")
        self._teacher_tap = Tap(ctx.teacher, t_layers, "teacher")

    def _pair(self, student, teacher) -> tuple[Tensor, Tensor]:
        """(real, fake): the teacher's and the student's vectors the discriminator compares."""
        a = self.args
        if a.compare == "logits":
            real = soft_probs(teacher.logits, a.temperature)
            fake = F.softmax(student.logits.float() / a.temperature, dim=-1)
            return real, fake
        real = as_vector(teacher.feats[a.teacher_layer])
        fake = self.proj(as_vector(student.feats[a.student_layer]))
        return real, fake

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        a = self.args
        student = self._student_tap.run(batch["input"])
        with torch.no_grad():
            teacher = self._teacher_tap.run(batch["input"]).detach()
        total, out = self.objective(student, teacher, batch, step)
        out["disc"], out["adv"] = discriminator_losses(self.disc, *self._pair(student, teacher))
        return {"loss": total + a.weight * out["adv"] + a.d_weight * out["disc"], **out}


# --------------------------------------------------------------------------- robust distillation
class RobustArgs(Strict):
    eps: float = Field(0.1, gt=0)  # L-infinity radius of the perturbations
    steps: int = Field(5, ge=1)  # PGD iterations
    step_size: float | None = Field(None, gt=0)  # default 2.5 * eps / steps
    # what the attack maximises: kl, the student's divergence from the teacher's clean
    # prediction (needs a teacher); ce, the student's cross-entropy on the labels
    attack: Literal["kl", "ce"] = "kl"
    temperature: float = Field(1.0, gt=0)
    kd_weight: float = Field(1.0, ge=0)  # of T^2 KL(teacher(x) || student(x + delta))
    clamp: tuple[float, float] | None = None  # valid input range, e.g. [0, 1] for images


class RobustDistillation(SchemeBase):
    """Adversarially robust distillation (ARD, Goldblum et al. 2020): the student matches a
    (robust) teacher's prediction on the clean input at PGD-perturbed inputs,

        loss = task(S(x)) + w * T^2 KL(softmax(T(x)/T) || softmax(S(x + delta)/T)),

    delta found by PGD (Madry et al. 2018) inside ||delta||_inf <= eps from a random start,
    maximising that divergence (`attack: kl`) or the student's label cross-entropy
    (`attack: ce`, the paper's choice). The attack runs with the student in eval mode (its
    BatchNorm statistics untouched) and a random start drawn from (seed, step), so a resumed
    run draws the same perturbations.

    Without a teacher (scheme `pgd_at`) it is PGD adversarial training of the student alone:
    loss = task(S(x + delta)) with delta maximising the label cross-entropy.
    """

    Args = RobustArgs

    def __init__(self, ctx: SchemeContext, name: str):
        a = self.args = parse_args(RobustArgs, ctx.args, name)
        self.teacher = ctx.teacher
        if self.teacher is None and a.attack == "kl":
            a = self.args = a.model_copy(update={"attack": "ce"})  # nothing to diverge from
        if ctx.objective.terms:
            raise ConfigError(
                f"scheme {name!r} builds its own loss (objective.task_weight still weighs the "
                f"task term); remove objective.terms"
            )
        self.seed = ctx.seed
        frozen = [ctx.teacher] if ctx.teacher is not None else []
        super().__init__(ctx.student, ctx.objective, frozen=frozen)

    def perturb(self, x: Tensor, target: Tensor, teacher_probs: Tensor | None, step: int):
        """x + delta from PGD, with the student in eval mode (its training mode restored)."""
        a = self.args
        if a.attack == "kl":

            def attack(z: Tensor) -> Tensor:
                return soft_kl(z, teacher_probs, a.temperature)
        else:

            def attack(z: Tensor) -> Tensor:
                return F.cross_entropy(z.float(), target)

        gen = torch.Generator().manual_seed(self.seed * 7_919 + step)
        was = self.student.training
        self.student.eval()
        try:
            return pgd(
                self.student,
                x,
                target,
                a.eps,
                steps=a.steps,
                step_size=a.step_size,
                generator=gen,
                loss_fn=attack,
                clamp=a.clamp,
            )
        finally:
            self.student.train(was)

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        a, x = self.args, batch["input"]
        teacher_probs = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(x)
            teacher_probs = soft_probs(teacher_logits, a.temperature)
            # unlabelled rows attack (and learn) the teacher's top class
            target = torch.where(labelled(batch), batch["target"], teacher_logits.argmax(-1))
        else:
            target = batch["target"]
        x_adv = self.perturb(x, target, teacher_probs, step)
        if self.teacher is None:
            out = {"task_adv": self.task(self.student(x_adv), batch, step)}
            return {"loss": out["task_adv"], **out}
        out = {
            "task": self.task(self.student(x), batch, step),
            "kd_adv": soft_kl(self.student(x_adv), teacher_probs, a.temperature),
        }
        return {"loss": out["task"] + a.kd_weight * out["kd_adv"], **out}


def build_ard(ctx: SchemeContext) -> RobustDistillation:
    """Scheme `ard`: robust distillation from the teacher."""
    return RobustDistillation(ctx, "ard")


def build_pgd_at(ctx: SchemeContext) -> RobustDistillation:
    """Scheme `pgd_at`: PGD adversarial training of the student alone (ARD's baseline)."""
    return RobustDistillation(ctx, "pgd_at")
