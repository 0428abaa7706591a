"""Correlation losses on feature maps: DIST+'s channel and spatial relations (Huang et
al., TPAMI 2025), and DIST+ itself with DIST on the logits.

A relation here compares one map position by position, so student and teacher maps must
have the same shape: a student of another width reads the teacher's through an adapter
(`adapter: linear` in a term). Correlations are Pearson's, as DIST defines them
(`distill.losses.response.pearson_distance`); the teacher side is detached inside.
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill.losses.divergences import at_least_float32
from distill.losses.response import dist_loss, pearson_distance


def _feature_map(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Both maps as (B, Ch, P) in float32 at least, P = the flattened spatial positions
    (1 for a (B, Ch) vector); the teacher detached."""
    if student.shape != teacher.shape or student.dim() < 2:
        raise ValueError(
            f"dist_plus: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} "
            "must be feature maps (B, Ch, *spatial) of one shape; give the term an adapter "
            "(adapter: linear) when the channel counts differ"
        )
    if student.shape[0] < 2:
        raise ValueError(
            f"dist_plus: the spatial relation correlates the samples of a batch and needs at "
            f"least 2 samples in the batch, got {student.shape[0]}"
        )
    flat = [at_least_float32(x).reshape(x.shape[0], x.shape[1], -1) for x in (student, teacher)]
    return flat[0], flat[1].detach()


def dist_plus_channel_relation(student: Tensor, teacher: Tensor) -> Tensor:
    """DIST+'s channel relation (Huang et al., TPAMI 2025): 1 - the mean over samples and
    positions of the Pearson correlation across channels of F_s[b, :, p] and F_t[b, :, p].

    torchdistill 1.1.5's `DISTPlusLoss` returns the mean correlation itself for this term,
    so minimising it pushes the maps towards anti-correlation; here it is a distance, like
    every other DIST term (the two differ by 1 - x)."""
    fs, ft = _feature_map(student, teacher)
    return pearson_distance(fs, ft, dim=1)


def dist_plus_spatial_relation(student: Tensor, teacher: Tensor) -> Tensor:
    """DIST+'s spatial relation (Huang et al., TPAMI 2025): with A = the channel sum of a map,
    (B, P), 1 - the mean over positions of the Pearson correlation across the batch of
    A_s[:, p] and A_t[:, p]."""
    fs, ft = _feature_map(student, teacher)
    return pearson_distance(fs.sum(1), ft.sum(1), dim=0)


def dist_plus_relation_loss(
    student: Tensor, teacher: Tensor, *, iota: float = 1.0, kappa: float = 1.0
) -> Tensor:
    """DIST+'s two relation terms on a feature map (Huang et al., TPAMI 2025):
    iota * channel relation + kappa * spatial relation (`dist_plus_channel_relation`,
    `dist_plus_spatial_relation`).

    student and teacher are (B, Ch, *spatial) maps of one shape (the student through an
    adapter when the channel counts differ); a (B, Ch) vector counts as one position. With
    `dist` on the logits this is DIST+ (`dist_plus_loss`; examples/dist_plus.yaml). The
    paper's teacher acclimation stage has no public formula and is not part of it.
    """
    total = student.new_zeros((), dtype=torch.float32)
    if iota:
        total = total + iota * dist_plus_channel_relation(student, teacher)
    if kappa:
        total = total + kappa * dist_plus_spatial_relation(student, teacher)
    return total


def dist_plus_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_feats: Tensor,
    teacher_feats: Tensor,
    *,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
    iota: float = 1.0,
    kappa: float = 1.0,
) -> Tensor:
    """DIST+ (Huang et al., TPAMI 2025): DIST on the logits (`dist_loss`: tau^2 * (beta *
    inter + gamma * intra)) + iota * channel relation + kappa * spatial relation on a
    feature map. In a config it is two terms, `dist` on the logits and
    `dist_plus_relation` on the tapped map (examples/dist_plus.yaml)."""
    response = dist_loss(
        student_logits, teacher_logits, beta=beta, gamma=gamma, temperature=temperature
    )
    relation = dist_plus_relation_loss(student_feats, teacher_feats, iota=iota, kappa=kappa)
    return response + relation
