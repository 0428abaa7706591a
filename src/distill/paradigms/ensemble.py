"""Ensemble compression: one small student learns what an ensemble of teachers predicts.

Bucilă, Caruana & Niculescu-Mizil 2006 (Model Compression) label a large *transfer set* with
the ensemble and fit a single model to it. When real unlabelled data is scarce they make it
with MUNGE: for each training example e and its nearest neighbour e', every attribute is,
with probability p, redrawn from a normal centred on the neighbour's value with standard
deviation |e_a - e'_a| / s. `munge` implements that, drawing fresh synthetic samples from
each batch (neighbours are searched in the whole training split once).

Scheme `ensemble_kd` (family "ensemble", config `teachers:`) trains the student on real plus
MUNGE samples towards either

- `target: mean`: the ensemble's mean distribution at temperature T (Hinton et al. 2015), or
- `target: dirichlet`: Ensemble Distribution Distillation (EnD^2; Malinin, Mlodozeniec &
  Gales 2020). The student's logits z parameterise a Dirichlet alpha = exp(z) over class
  distributions and are fitted by the likelihood of every member's prediction, so the student
  keeps the ensemble's *spread* (disagreement), not only its mean. Its mean prediction,
  alpha / alpha_0, is softmax(z): the student is still an ordinary classifier.

Its test metrics cover accuracy, NLL and calibration (ECE) of the student, the ensemble and
the members, and how well the student's uncertainty ranks samples like the ensemble's.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from distill.core.errors import ConfigError
from distill.core.settings import Strict
from distill.metrics import spearman
from distill.paradigms.graph import nearest
from distill.schemes.base import SchemeBase, SchemeContext, parse_args, soft_kl


# ------------------------------------------------------------------------ MUNGE
def nearest_neighbours(x: Tensor, chunk: int = 2048) -> Tensor:
    """(N,) index of each row's nearest other row (Euclidean on flattened inputs)."""
    return nearest(x, 1, "euclidean", chunk)[:, 0]


def munge(
    x: Tensor, neighbour: Tensor, *, p: float, s: float, generator: torch.Generator
) -> Tensor:
    """One MUNGE sample per row of `x` (Bucilă et al. 2006, continuous attributes).

    Each attribute is, with probability p, replaced by a draw from N(x'_a, |x_a - x'_a| / s)
    where x' is the row's nearest neighbour; otherwise it is kept."""
    if not 0 <= p <= 1 or s <= 0:
        raise ValueError(f"munge needs 0 <= p <= 1 and s > 0, got p={p}, s={s}")
    swap = torch.rand(x.shape, generator=generator) < p
    noise = torch.randn(x.shape, generator=generator)
    drawn = neighbour + noise.to(x.device) * (x - neighbour).abs() / s
    return torch.where(swap.to(x.device), drawn, x)


def transfer_set(x: Tensor, multiplier: int, *, p: float, s: float, seed: int) -> Tensor:
    """`x` plus `multiplier` MUNGE copies of it (a fixed, enlarged transfer set)."""
    g = torch.Generator().manual_seed(seed)
    nbrs = x[nearest_neighbours(x)]
    parts = [x] + [munge(x, nbrs, p=p, s=s, generator=g) for _ in range(multiplier)]
    return torch.cat(parts)


# --------------------------------------------------------------------- EnD^2
def dirichlet_nll(
    student_logits: Tensor, member_probs: Tensor, *, smoothing: float = 1e-4
) -> Tensor:
    """-(1/M) sum_m log Dir(pi_m | alpha), alpha = exp(z), mean over samples (EnD^2).

    log Dir(pi | alpha) = lgamma(alpha_0) - sum_c lgamma(alpha_c) + sum_c (alpha_c - 1) log pi_c.
    `member_probs` is (M, B, C); each pi_m is smoothed towards uniform by `smoothing` so that
    log pi stays finite."""
    c = member_probs.shape[-1]
    pi = (1 - smoothing) * member_probs.float() + smoothing / c
    log_alpha = student_logits.float().clamp(-20, 20)
    alpha = log_alpha.exp()
    log_norm = torch.lgamma(alpha.sum(-1)) - torch.lgamma(alpha).sum(-1)  # (B,)
    log_lik = log_norm + ((alpha - 1) * pi.log()).sum(-1)  # (M, B)
    return -log_lik.mean()


def entropy(p: Tensor) -> Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def ensemble_uncertainty(member_probs: Tensor) -> dict[str, Tensor]:
    """Total (entropy of the mean), data (mean entropy) and knowledge (their difference:
    the mutual information, the members' disagreement) uncertainty per sample."""
    mean = member_probs.mean(0)
    total, data = entropy(mean), entropy(member_probs).mean(0)
    return {"total": total, "data": data, "knowledge": total - data}


def dirichlet_uncertainty(logits: Tensor) -> dict[str, Tensor]:
    """The same three for a Dirichlet with alpha = exp(z) (Malinin & Gales 2018):
    expected entropy E[H(pi)] = -sum_c (alpha_c / alpha_0)(psi(alpha_c + 1) - psi(alpha_0 + 1))."""
    alpha = logits.float().clamp(-20, 20).exp()
    a0 = alpha.sum(-1, keepdim=True)
    mean = alpha / a0
    data = -(mean * (torch.digamma(alpha + 1) - torch.digamma(a0 + 1))).sum(-1)
    total = entropy(mean)
    return {"total": total, "data": data, "knowledge": total - data}


# -------------------------------------------------------------------- the scheme
class EnsembleArgs(Strict):
    target: Literal["mean", "dirichlet"] = "mean"
    temperature: float = Field(1.0, gt=0)  # mean: KD temperature
    kd_weight: float = Field(1.0, ge=0)
    transfer: Literal["none", "munge"] = "munge"  # add synthetic samples to every batch
    munge_p: float = Field(0.5, ge=0, le=1)  # Bucilă et al. use 0.5
    munge_s: float = Field(1.0, gt=0)  # local variance of the redraws (larger: closer)
    synthetic_per_real: int = Field(1, ge=1)
    smoothing: float = Field(1e-4, ge=0, lt=1)  # dirichlet: pi -> (1 - e) pi + e / C
    # dirichlet: the members' distributions are softened at temperature anneal_from at the
    # start, falling linearly to 1 over the first anneal_fraction of training (EnD^2's
    # annealing: the likelihood of near-one-hot members is hard to fit from scratch)
    anneal_from: float = Field(1.0, ge=1)
    anneal_fraction: float = Field(0.5, gt=0, le=1)


class EnsembleKD(SchemeBase):
    """Distil an ensemble (config `teachers:`) into one student; see the module docstring."""

    Args = EnsembleArgs

    def __init__(self, ctx: SchemeContext):
        args = parse_args(EnsembleArgs, ctx.args, "ensemble_kd")
        if len(ctx.teachers) < 2:
            raise ConfigError(
                f"teachers: ensemble_kd compresses an ensemble; give two or more teachers "
                f"(got {len(ctx.teachers)})"
            )
        if any(c is not None for c in ctx.teacher_classes):
            raise ConfigError(
                "teachers: ensemble_kd needs members that predict every class (no classes:); "
                "specialists belong to scheme: multi_teacher"
            )
        if ctx.objective.terms:
            raise ConfigError(
                "objective.terms: ensemble_kd makes its own distillation loss; set "
                "scheme.args.target and kd_weight instead"
            )
        super().__init__(ctx.student, ctx.objective, frozen=ctx.teachers)
        self.teachers = ctx.teachers
        self.args = args
        self.seed = ctx.seed
        self.total_steps = 1
        self.neighbour_of: Tensor | None = None
        self.pool: Tensor | None = None
        if args.transfer == "munge":
            if not hasattr(ctx.data.train, "inputs"):
                raise ConfigError("MUNGE needs an in-memory array dataset; use transfer: none")
            self.pool = ctx.data.train.inputs
            self.neighbour_of = nearest_neighbours(self.pool)

    def on_fit_start(self, total_steps: int, steps_per_epoch: int) -> None:
        self.total_steps = max(1, total_steps)

    def target_temperature(self, step: int) -> float:
        """EnD^2 annealing: anneal_from at step 0, down to 1 at anneal_fraction of training."""
        done = min(1.0, step / (self.args.anneal_fraction * self.total_steps))
        return self.args.anneal_from + (1.0 - self.args.anneal_from) * done

    @torch.no_grad()
    def member_logits(self, x: Tensor) -> Tensor:
        """(M, B, C) every member's logits."""
        return torch.stack([t(x).float() for t in self.teachers])

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        x = batch["input"]
        n_real = len(x)
        if self.pool is not None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            nbr = self.pool[self.neighbour_of[batch["index"].cpu()]].to(x.device)
            made = [
                munge(x, nbr, p=self.args.munge_p, s=self.args.munge_s, generator=g)
                for _ in range(self.args.synthetic_per_real)
            ]
            x = torch.cat([x, *made])
        logits = self.student(x)
        members = self.member_logits(x)
        if self.args.target == "mean":
            t = self.args.temperature
            kd = soft_kl(logits, F.softmax(members / t, -1).mean(0), t)
        else:
            t = self.target_temperature(step)
            probs = F.softmax(members / t, -1)
            kd = dirichlet_nll(logits, probs, smoothing=self.args.smoothing)
        task = self.task(logits[:n_real], batch, step)
        return {"loss": task + self.args.kd_weight * kd, "task": task, "kd": kd}

    @torch.no_grad()
    def test_metrics(self, test, *, batch_size: int) -> dict[str, float]:
        from distill.evaluate import predict_logits, targets_of
        from distill.metrics import expected_calibration_error

        device = next(self.student.parameters()).device
        y = targets_of(test)
        z = predict_logits(self.student, test, batch_size=batch_size, device=device)
        members = torch.stack(
            [
                F.softmax(predict_logits(t, test, batch_size=batch_size, device=device), -1)
                for t in self.teachers
            ]
        )
        ens_log = members.mean(0).clamp_min(1e-12).log()

        def block(prefix: str, logits: Tensor) -> dict[str, float]:
            log_p = F.log_softmax(logits.float(), -1)
            return {
                f"{prefix}acc": float((logits.argmax(-1) == y).float().mean()),
                f"{prefix}nll": float(F.nll_loss(log_p, y)),
                f"{prefix}ece": expected_calibration_error(logits, y),
            }

        out = {**block("test_", z), **block("ensemble_test_", ens_log)}
        member_rows = [block("", m.clamp_min(1e-12).log()) for m in members]
        for key in ("acc", "nll", "ece"):
            out[f"member_test_{key}_mean"] = sum(r[key] for r in member_rows) / len(member_rows)
        out["test_agreement"] = float((z.argmax(-1) == ens_log.argmax(-1)).float().mean())
        ens_u = ensemble_uncertainty(members)
        stu_total = entropy(F.softmax(z.float(), -1))
        out["test_total_uncertainty_rank_corr"] = spearman(stu_total, ens_u["total"])
        if self.args.target == "dirichlet":
            stu_u = dirichlet_uncertainty(z)
            out["test_knowledge_uncertainty_rank_corr"] = spearman(
                stu_u["knowledge"], ens_u["knowledge"]
            )
        out["ensemble_members"] = float(len(self.teachers))
        return out


__all__ = [
    "EnsembleKD",
    "dirichlet_nll",
    "dirichlet_uncertainty",
    "ensemble_uncertainty",
    "munge",
    "nearest_neighbours",
    "transfer_set",
]
