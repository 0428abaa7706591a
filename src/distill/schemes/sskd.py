"""SSKD: knowledge distillation meets self-supervision (Xu, Liu, Li & Loy 2020, ECCV).

Every batch of N inputs is extended by three transformed copies (rotations by 90, 180 and
270 degrees for square images; for 1-D signals, our choice: reversed, negated, and both).
Each model gets a self-supervision head on its penultimate feature, whose embeddings say
which original sample a transformed copy came from (cosine similarity to the N originals).

Two phases in one run, by optimizer step:

1. the first `head_steps` steps train only the teacher's head (the teacher itself stays
   frozen) on that task, with the cosine similarities as logits of a cross-entropy over the
   originals, as in the authors' code;
2. then the student trains, the teacher and its head frozen, on
   - the task loss on the original rows (the objective's task weight);
   - KD on the original rows, T_kl^2 KL(p_t || p_s) at `kl_temperature`;
   - KD on the transformed rows at `tf_temperature`, keeping the rows whose label the
     teacher ranks first plus the `tf_ratio` of the others it ranks best (its "error
     level");
   - KD between the two models' similarity distributions (transformed copy -> originals) at
     `ss_temperature`, keeping rows by the same rule on the teacher's ranking of the true
     original (`ss_ratio`).

The weights default to the paper's CIFAR-100 setting (0.9, 10, 2.7 for KD, similarity and
transform terms, task 1). Unlabelled rows use the teacher's top-1 on the original.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from distill.core.settings import Strict
from distill.losses.response import kd_rows
from distill.schemes.base import (
    SchemeBase,
    SchemeContext,
    as_vector,
    freeze,
    parse_args,
    sample_input,
    vector_dim,
)
from distill.taps import Tap


class SSKDArgs(Strict):
    student_feature: str  # the student's penultimate tensor, e.g. 'head.1:input' or 'fc:input'
    teacher_feature: str  # the teacher's
    head_steps: int = Field(200, ge=1)  # phase 1: train the teacher's head this many steps
    kl_temperature: float = Field(4.0, gt=0)
    ss_temperature: float = Field(0.5, gt=0)
    tf_temperature: float = Field(4.0, gt=0)
    ss_ratio: float = Field(0.75, ge=0, le=1)
    tf_ratio: float = Field(1.0, ge=0, le=1)
    kl_weight: float = Field(0.9, ge=0)
    ss_weight: float = Field(10.0, ge=0)
    tf_weight: float = Field(2.7, ge=0)


def transformed_copies(x: Tensor) -> list[Tensor]:
    """The three transformations of a batch (N, C, *positions) SSKD predicts."""
    if x.dim() == 4:
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(
                f"sskd rotates images by 90 degrees: they must be square, got {tuple(x.shape[-2:])}"
            )
        return [torch.rot90(x, k, dims=(-2, -1)) for k in (1, 2, 3)]
    if x.dim() == 3:
        return [x.flip(-1), -x, -x.flip(-1)]
    raise ValueError(
        f"sskd transforms images (N, C, H, W) or signals (N, C, L); inputs here are "
        f"{tuple(x.shape)}"
    )


def _head(width: int) -> nn.Module:
    """The self-supervision head of the authors' code: linear, BatchNorm, ReLU, linear."""
    return nn.Sequential(
        nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, width)
    )


def similarities(embedding: Tensor, n: int) -> Tensor:
    """(3N, N) cosine similarity of each transformed copy's embedding to every original's
    (rows [j*N + i] are transformation j of sample i)."""
    return F.cosine_similarity(embedding[n:, :, None], embedding[:n].T[None], dim=1)


def kept_rows(teacher_scores: Tensor, truth: Tensor, ratio: float) -> Tensor:
    """Rows where the teacher ranks `truth` first, plus the `ratio` of the others in which it
    ranks `truth` best: SSKD's error-level ranking. Returns row indices."""
    rank = (teacher_scores > teacher_scores.gather(1, truth[:, None])).sum(1)  # 0 = first
    wrong = torch.nonzero(rank > 0).flatten()
    keep = wrong[torch.argsort(rank[wrong], stable=True)][: int(len(wrong) * ratio)]
    return torch.sort(torch.cat([torch.nonzero(rank == 0).flatten(), keep])).values


def _kd_rows(student: Tensor, teacher: Tensor, temperature: float, rows: Tensor) -> Tensor:
    if len(rows) == 0:
        return student.new_zeros((), dtype=torch.float32)
    return kd_rows(student[rows], teacher[rows], temperature).mean()


class SSKD(SchemeBase):
    """See the module docstring. `modules`: the student, both self-supervision heads (the
    teacher's trains in phase 1 only) and the objective; the teacher is frozen."""

    Args = SSKDArgs

    def __init__(self, ctx: SchemeContext):
        if ctx.teacher is None:
            raise ValueError("sskd needs a teacher")
        if ctx.objective.terms:
            raise ValueError("sskd computes its own distillation terms; remove objective.terms")
        self.args = a = parse_args(SSKDArgs, ctx.args, "sskd")
        teacher = freeze(ctx.teacher)
        x = sample_input(ctx, 4)
        transformed_copies(x)  # inputs of the wrong rank fail here, before training
        self._s_tap = Tap(ctx.student, [a.student_feature], "student")
        self._t_tap = Tap(teacher, [a.teacher_feature], "teacher")
        with torch.no_grad():
            ctx.student.eval()
            s_dim = vector_dim(self._s_tap.run(x).feats[a.student_feature].shape)
            t_dim = vector_dim(self._t_tap.run(x).feats[a.teacher_feature].shape)
            ctx.student.train()
        self.student_head, self.teacher_head = _head(s_dim), _head(t_dim)
        heads = {"student_head": self.student_head, "teacher_head": self.teacher_head}
        super().__init__(ctx.student, ctx.objective, trained=heads, frozen=[teacher])
        self.teacher = teacher

    @classmethod
    def from_context(cls, ctx: SchemeContext) -> SSKD:
        return cls(ctx)

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        x = batch["input"]
        n = len(x)
        both = torch.cat([x, *transformed_copies(x)])  # (4N, ...)
        truth = torch.arange(n, device=x.device).repeat(3)  # which original each copy is
        if step < self.args.head_steps:
            return self._head_step(both, n, truth)
        return self._student_step(both, batch, n, truth, step)

    def _head_step(self, both: Tensor, n: int, truth: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            feat = self._t_tap.run(both).feats[self.args.teacher_feature]
        self.teacher_head.train()
        loss = F.cross_entropy(similarities(self.teacher_head(as_vector(feat)), n), truth)
        return {"loss": loss, "teacher_head": loss.detach()}

    def _student_step(
        self, both: Tensor, batch: dict[str, Tensor], n: int, truth: Tensor, step: int
    ) -> dict[str, Tensor]:
        a = self.args
        self.teacher_head.eval()
        with torch.no_grad():
            t = self._t_tap.run(both)
            t_sim = similarities(self.teacher_head(as_vector(t.feats[a.teacher_feature])), n)
        s = self._s_tap.run(both)
        s_sim = similarities(self.student_head(as_vector(s.feats[a.student_feature])), n)
        labels = torch.where(batch["target"] >= 0, batch["target"], t.logits[:n].argmax(-1))
        everything = torch.arange(n, device=both.device)
        kl = _kd_rows(s.logits[:n], t.logits[:n], a.kl_temperature, everything)
        tf_rows = kept_rows(t.logits[n:], labels.repeat(3), a.tf_ratio)
        tf = _kd_rows(s.logits[n:], t.logits[n:], a.tf_temperature, tf_rows)
        ss_rows = kept_rows(t_sim, truth, a.ss_ratio)
        ss = _kd_rows(s_sim, t_sim, a.ss_temperature, ss_rows)
        task = self.task(s.logits[:n], batch, step)
        total = task + a.kl_weight * kl + a.ss_weight * ss + a.tf_weight * tf
        return {
            "loss": total,
            "task": task.detach(),
            "kd": kl.detach(),
            "ss": ss.detach(),
            "tf": tf.detach(),
        }


__all__ = ["SSKD", "SSKDArgs", "kept_rows", "similarities", "transformed_copies"]
