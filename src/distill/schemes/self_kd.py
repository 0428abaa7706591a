"""Self-distillation: the student teaches itself (through its deepest head, its past
predictions, its classmates, its batch, its dropout or a second view of itself). The
consistency schemes (an average of its weights, its predictions over epochs, its clean
view) are in `distill.schemes.consistency`.

Auxiliary modules (heads, memories, EMA copies) live beside the student in the scheme and
are never part of the exported model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.core.settings import Strict
from distill.data import load_batch
from distill.losses.response import symmetric_kl
from distill.schemes.base import (
    Head,
    SampleMemory,
    SchemeBase,
    SchemeContext,
    SelfTeaching,
    as_vector,
    dry_shapes,
    labelled,
    parse_args,
    sample_input,
    soft_kl,
    soft_probs,
    soft_target_ce,
    student_tap,
    vector_dim,
)


def _layer_shapes(ctx: SchemeContext, layers: list[str]) -> dict:
    return dry_shapes(ctx.student, layers, sample_input(ctx), "student")


class EpochClock:
    """Epoch of a step, from the trainer's plan: a scheme holds one and hands its `start`
    to the loop as its `on_fit_start`."""

    def __init__(self) -> None:
        self.steps_per_epoch = 1
        self.epochs = 1

    def start(self, total_steps: int, steps_per_epoch: int) -> None:
        self.steps_per_epoch = max(steps_per_epoch, 1)
        self.epochs = max(total_steps // self.steps_per_epoch, 1)

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch


# --------------------------------------------------------------------------- BYOT
class BYOTArgs(Strict):
    heads: list[str] = Field(min_length=1)  # layers that get an auxiliary classifier
    feature: str = "head:input"  # the deepest feature the heads' bottlenecks imitate
    temperature: float = Field(3.0, gt=0)
    kd_weight: float = Field(0.5, ge=0, le=1)  # alpha: share of KD vs label loss per head
    feature_weight: float = Field(0.1, ge=0)  # lambda: bottleneck-to-deepest feature hint


class BYOT(SelfTeaching):
    """Be Your Own Teacher (Zhang et al. 2019): the deepest classifier teaches shallow heads.

    Each head i (at a named layer) adds (1 - a) task(z_i) + a T^2 KL(p_deep^T || p_i^T)
    + l ||h_i - f_deep||^2 where h_i is the head's bottleneck and f_deep the (detached)
    deepest feature; the student's own output keeps its task loss. Heads train the shared
    layers through their gradients and are dropped at export.
    """

    Args = BYOTArgs

    def __init__(self, ctx: SchemeContext):
        a = self.args = parse_args(BYOTArgs, ctx.args, "byot")
        shapes = _layer_shapes(ctx, [*a.heads, a.feature])
        deep = vector_dim(shapes[a.feature])
        n = ctx.data.num_classes
        self.heads = nn.ModuleList([Head(vector_dim(shapes[h]), n, hidden=deep) for h in a.heads])
        super().__init__(ctx.student, ctx.objective, {"heads": self.heads})
        self._tap = student_tap(ctx, [*a.heads, a.feature])

    def own_terms(self, k: Any, batch: dict[str, Tensor], step: int) -> dict[str, tuple]:
        a = self.args
        deep_feat = as_vector(k.feats[a.feature]).detach()
        target = soft_probs(k.logits, a.temperature)
        terms = {}
        for i, (name, head) in enumerate(zip(a.heads, self.heads)):
            z, h = head(k.feats[name])
            terms[f"head{i}_task"] = (1 - a.kd_weight, self.task(z, batch, step))
            terms[f"head{i}_kd"] = (a.kd_weight, soft_kl(z, target, a.temperature))
            terms[f"head{i}_hint"] = (a.feature_weight, F.mse_loss(h, deep_feat))
        return terms


# --------------------------------------------------------------------------- PS-KD
class PSKDArgs(Strict):
    alpha_final: float = Field(
        0.8, ge=0, le=1
    )  # alpha_T: the weight of past predictions at the end


class ProgressiveSelfKD(SchemeBase):
    """PS-KD (Kim et al. 2021): the target mixes the label with last epoch's own prediction.

    target = (1 - alpha_t) y + alpha_t p_{t-1}(x), alpha_t = alpha_T (t + 1) / T for epoch t
    of T; the model is trained with cross-entropy to it, replacing the task loss on labelled
    rows. p_{t-1} is what the model predicted for that sample when it last saw it (the
    previous epoch); before that the label alone is the target.
    """

    Args = PSKDArgs

    def __init__(self, ctx: SchemeContext):
        self.args = parse_args(PSKDArgs, ctx.args, "pskd")
        self.clock = EpochClock()
        self.on_fit_start = self.clock.start  # (the loop tells it the plan)
        self.memory = SampleMemory(len(ctx.data.train), ctx.data.num_classes)
        super().__init__(ctx.student, ctx.objective, {"memory": self.memory})
        self._tap = student_tap(ctx, [])

    def alpha(self, step: int) -> float:
        return self.args.alpha_final * (self.clock.epoch_of(step) + 1) / self.clock.epochs

    def targets(self, batch: dict[str, Tensor], step: int, num_classes: int) -> Tensor:
        """The progressive soft targets of a batch's (labelled) rows."""
        y = F.one_hot(batch["target"].clamp_min(0), num_classes).float()
        index = batch["index"]
        alpha = self.alpha(step) * self.memory.seen[index].float().unsqueeze(1)
        return (1 - alpha) * y + alpha * self.memory.probs[index]

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        k = self._tap.run(batch["input"])
        target = self.targets(batch, step, k.logits.shape[-1])
        self.memory.write(batch["index"], F.softmax(k.logits.detach().float(), -1))
        # PS-KD's loss takes the task loss's place; teacher-free objective terms still apply.
        total, out = self.objective(k, None, batch, step, include_task=False)
        out["pskd"] = soft_target_ce(k.logits, target, labelled(batch))
        return {"loss": total + self.objective.task_weight.at(step) * out["pskd"], **out}


# --------------------------------------------------------------------------- mean teacher
class CSKDArgs(Strict):
    temperature: float = Field(4.0, gt=0)
    weight: float = Field(1.0, ge=0)


class ClassWiseSelfKD(SelfTeaching):
    """CS-KD (Yun et al. 2020): a different sample of the same class teaches each sample.

    loss = task + w T^2 KL(p(x'; T) || p(x; T)) with x' drawn from x's class, its prediction
    detached. Pairs are drawn with a generator seeded by (seed, step): reproducible and
    identical after a resume.
    """

    Args = CSKDArgs

    def __init__(self, ctx: SchemeContext):
        self.args = parse_args(CSKDArgs, ctx.args, "cskd")
        train = ctx.data.train
        targets = load_batch(train, torch.arange(len(train)))["target"]
        self.members = {
            int(c): torch.nonzero(targets == c).flatten() for c in targets.unique() if c >= 0
        }
        self.train_data, self.augment, self.seed = train, ctx.augment, ctx.seed
        super().__init__(ctx.student, ctx.objective)
        self._tap = student_tap(ctx, [])

    def partners(self, batch: dict[str, Tensor], step: int) -> Tensor:
        """For each labelled row, the index of another training sample of its class."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_033 + step)
        out = []
        for i, y in zip(batch["index"].tolist(), batch["target"].tolist()):
            pool = self.members.get(y)
            if pool is None or len(pool) < 2:
                out.append(i)
                continue
            j = int(pool[torch.randint(len(pool) - 1, (1,), generator=gen)])
            out.append(j if j != i else int(pool[-1]))  # skip itself: the last member stands in
        return torch.tensor(out)

    def own_terms(self, k: Any, batch: dict[str, Tensor], step: int) -> dict[str, tuple]:
        a = self.args
        pair = load_batch(self.train_data, self.partners(batch, step))["input"]
        if self.augment is not None:
            pair = self.augment(pair, torch.Generator().manual_seed(self.seed + step))
        with torch.no_grad():
            teacher = self.student(pair.to(batch["input"].device))
        rows = labelled(batch)
        if not rows.any():
            return {"class_kd": (a.weight, k.logits.new_zeros((), dtype=torch.float32))}
        kd = soft_kl(k.logits[rows], soft_probs(teacher[rows], a.temperature), a.temperature)
        return {"class_kd": (a.weight, kd)}


# --------------------------------------------------------------------------- BAKE
class BAKEArgs(Strict):
    feature: str = "head:input"  # the embedding whose affinities propagate knowledge
    omega: float = Field(0.5, ge=0, lt=1)
    tau: float = Field(0.1, gt=0)  # temperature of the affinity softmax
    temperature: float = Field(4.0, gt=0)
    weight: float = Field(1.0, ge=0)


def bake_targets(features: Tensor, probs: Tensor, omega: float, tau: float) -> Tensor:
    """q = (1 - w) (I - w A)^-1 p: predictions propagated over the batch's affinity graph.

    A_ij = softmax_j(<f_i, f_j> / tau) over j != i, on L2-normalised features (Ge et al. 2021).
    """
    f = F.normalize(features.detach().float(), dim=1)
    sim = f @ f.t() / tau
    sim.fill_diagonal_(float("-inf"))
    affinity = F.softmax(sim, dim=1)
    eye = torch.eye(len(f), device=f.device)
    return (1 - omega) * torch.linalg.solve(eye - omega * affinity, probs.detach().float())


class BAKE(SelfTeaching):
    """Batch knowledge ensembling (Ge et al. 2021): each sample's soft target is the ensemble
    of the batch's predictions, weighted by feature affinity and propagated to convergence;
    loss = task + w T^2 KL(q || p^T) with q from `bake_targets`.
    """

    Args = BAKEArgs

    def __init__(self, ctx: SchemeContext):
        self.args = parse_args(BAKEArgs, ctx.args, "bake")
        _layer_shapes(ctx, [self.args.feature])  # a bad layer name fails here
        super().__init__(ctx.student, ctx.objective)
        self._tap = student_tap(ctx, [self.args.feature])

    def own_terms(self, k: Any, batch: dict[str, Tensor], step: int) -> dict[str, tuple]:
        a = self.args
        if len(k.logits) < 2:
            return {}
        q = bake_targets(
            as_vector(k.feats[a.feature]), soft_probs(k.logits, a.temperature), a.omega, a.tau
        )
        return {"bake": (a.weight, soft_kl(k.logits, q, a.temperature))}


# --------------------------------------------------------------------------- SD-Dropout
class SDDropoutArgs(Strict):
    feature: str = "head:input"  # the input of the classifier
    classifier: str = "head"  # the module mapping that feature to logits
    rate: float = Field(0.5, gt=0, lt=1)
    temperature: float = Field(4.0, gt=0)
    weight: float = Field(1.0, ge=0)


class SDDropout(SelfTeaching):
    """Self-distillation from dropout (Lee et al. 2023): two dropout samples of the feature,
    passed through the classifier, teach each other: w T^2 [KL(p1 || p2) + KL(p2 || p1)],
    gradients through both sides as in the paper; the task loss on the full feature stays.
    """

    Args = SDDropoutArgs

    def __init__(self, ctx: SchemeContext):
        a = self.args = parse_args(SDDropoutArgs, ctx.args, "sd_dropout")
        try:
            self.classifier = ctx.student.get_submodule(a.classifier)
        except AttributeError:
            raise ConfigError(
                f"scheme.args.classifier: the student has no module {a.classifier!r} "
                f"(`distill layers` lists them)"
            ) from None
        _layer_shapes(ctx, [a.feature])
        super().__init__(ctx.student, ctx.objective)
        self._tap = student_tap(ctx, [a.feature])

    def own_terms(self, k: Any, batch: dict[str, Tensor], step: int) -> dict[str, tuple]:
        a = self.args
        f = k.feats[a.feature]
        z1 = self.classifier(F.dropout(f, a.rate, training=True))
        z2 = self.classifier(F.dropout(f, a.rate, training=True))
        return {"sd_dropout": (a.weight, symmetric_kl(z1, z2, a.temperature))}


# --------------------------------------------------------------------------- USKD
class USKDArgs(Strict):
    feature: str  # a middle layer: its weak classifier helps rank the non-target classes
    alpha: float = Field(1.0, ge=0)  # target-class soft label loss
    beta: float = Field(0.1, ge=0)  # non-target (Zipf) soft label loss
    mu: float = Field(0.005, ge=0)  # weak supervision of the middle classifier


def uskd_losses(
    logits: Tensor, weak_logits: Tensor, targets: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """(target, non-target, weak) losses of USKD (Yang et al. 2023) on labelled rows.

    Target soft label: s_t^2 + 1 - mean_batch(s_t^2) (the model's own target probability,
    squared and re-centred on 1), used as the weight of -log s_t. Non-target soft labels
    follow Zipf's law, 1 / rank, ranked by the sum of the final and the middle classifier's
    normalised non-target probabilities. The middle classifier learns from 0.9-smoothed
    labels. Soft labels are detached.
    """
    n, c = logits.shape
    y = targets.unsqueeze(1)
    p = F.softmax(logits.float(), -1)
    log_p = F.log_softmax(logits.float(), -1)
    p_t = p.gather(1, y)
    soft_t = (p_t**2 + 1 - (p_t**2).mean()).detach()
    target_loss = -(soft_t * log_p.gather(1, y)).mean()
    smooth = torch.full_like(p, 0.1 / c).scatter_add_(1, y, torch.full_like(p_t, 0.9))
    weak_log = F.log_softmax(weak_logits.float(), -1)
    weak_loss = -(smooth * weak_log).sum(1).mean()
    w = weak_log.exp()
    score = p / (1 - p_t + 1e-6) + w / (1 - w.gather(1, y) + 1e-6)
    score = score.detach().scatter(1, y, float("-inf"))  # the target class ranks last
    rank = score.argsort(1, descending=True).argsort(1) + 1  # 1 = highest non-target score
    zipf = 1.0 / rank.float()
    mask = torch.ones_like(p, dtype=torch.bool).scatter_(1, y, False)
    nz = zipf[mask].view(n, c - 1)
    nz = nz / nz.sum(1, keepdim=True)
    non_log = F.log_softmax(logits.float()[mask].view(n, c - 1), -1)
    non_target_loss = -(nz * non_log).sum(1).mean()
    return target_loss, non_target_loss, weak_loss


class USKD(SelfTeaching):
    """Universal self-KD (Yang et al. 2023) with normalised target and Zipf non-target labels.

    loss = task + alpha * target + beta * non-target + mu * weak (see `uskd_losses`); set
    objective.task_weight to 0 for the paper's form, where the target term replaces it.
    """

    Args = USKDArgs

    def __init__(self, ctx: SchemeContext):
        a = self.args = parse_args(USKDArgs, ctx.args, "uskd")
        if ctx.data.num_classes < 3:
            raise ConfigError("scheme uskd ranks non-target classes and needs 3 or more classes")
        shape = _layer_shapes(ctx, [a.feature])[a.feature]
        self.weak = nn.Linear(vector_dim(shape), ctx.data.num_classes)
        super().__init__(ctx.student, ctx.objective, {"weak": self.weak})
        self._tap = student_tap(ctx, [a.feature])

    def own_terms(self, k: Any, batch: dict[str, Tensor], step: int) -> dict[str, tuple]:
        a = self.args
        rows = labelled(batch)
        if not rows.any():
            return {}
        weak = self.weak(as_vector(k.feats[a.feature]))
        t, nt, w = uskd_losses(k.logits[rows], weak[rows], batch["target"][rows])
        return {
            "uskd_target": (a.alpha, t),
            "uskd_non_target": (a.beta, nt),
            "uskd_weak": (a.mu, w),
        }


# --------------------------------------------------------------------------- DTSKD
class DTSKDArgs(Strict):
    layers: list[str] = Field(min_length=1)  # levels fused into the structural teacher
    temperature: float = Field(3.0, gt=0)
    history_weight: float = Field(1.0, ge=0)
    structure_weight: float = Field(1.0, ge=0)


class DualTeacherSelfKD(SelfTeaching):
    """Dual teachers for self-KD (Li et al. 2024), as the surveys describe it.

    Historical teacher: the model's own prediction for the sample in the previous epoch.
    Structural teacher: a classifier over the fused (pooled, concatenated) features of several
    levels of the current network, trained with the task loss and by the student's current
    prediction. The student learns from both:
    task + wh T^2 KL(p_hist || p^T) + ws T^2 KL(p_struct^T || p^T), teachers detached.
    Our reading of the design: the paper's exact fusion module is not reproduced.
    """

    Args = DTSKDArgs

    def __init__(self, ctx: SchemeContext):
        a = self.args = parse_args(DTSKDArgs, ctx.args, "dtskd")
        shapes = _layer_shapes(ctx, a.layers)
        dim = sum(vector_dim(shapes[n]) for n in a.layers)
        self.structural = Head(dim, ctx.data.num_classes, hidden=max(64, ctx.data.num_classes))
        self.memory = SampleMemory(len(ctx.data.train), ctx.data.num_classes)
        super().__init__(
            ctx.student, ctx.objective, {"structural": self.structural, "memory": self.memory}
        )
        self._tap = student_tap(ctx, a.layers)

    def own_terms(self, k: Any, batch: dict[str, Tensor], step: int) -> dict[str, tuple]:
        a = self.args
        fused = torch.cat([as_vector(k.feats[n]) for n in a.layers], 1)
        z_struct, _ = self.structural(fused)
        t = a.temperature
        index = batch["index"]
        seen = self.memory.seen[index]
        if seen.any():
            history = soft_kl(k.logits[seen], self.memory.probs[index][seen], t)
        else:
            history = k.logits.new_zeros((), dtype=torch.float32)
        self.memory.write(index, soft_probs(k.logits, t))
        return {
            "struct_task": (1.0, self.task(z_struct, batch, step)),
            "struct_from_student": (1.0, soft_kl(z_struct, soft_probs(k.logits, t), t)),
            "from_structure": (a.structure_weight, soft_kl(k.logits, soft_probs(z_struct, t), t)),
            "from_history": (a.history_weight, history),
        }


__all__ = [
    "BAKE",
    "BYOT",
    "USKD",
    "ClassWiseSelfKD",
    "DualTeacherSelfKD",
    "ProgressiveSelfKD",
    "SDDropout",
    "bake_targets",
    "uskd_losses",
]
