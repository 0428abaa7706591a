"""Response-based losses: the student matches the teacher's output distribution.

Every function takes logits of shape (N, C) or (N, L, C) (the last dim holds classes),
treats each leading position as one row, and averages over rows; `mask` (same leading
shape, bool) keeps only some rows, e.g. real tokens in a padded batch. The teacher side
is detached inside, so no gradient ever reaches a frozen teacher.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.losses.divergences import at_least_float32, check_logits, jsd_rows, kl_rows, log_probs


def row_mean(per_row: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return per_row.mean()
    mask = mask.reshape(per_row.shape).to(per_row.dtype)
    return (per_row * mask).sum() / mask.sum().clamp_min(1.0)


def soft_target_kd(
    student_logits: Tensor,
    target_probs: Tensor,
    *,
    temperature: float = 4.0,
    mask: Tensor | None = None,
) -> Tensor:
    """KD from target probabilities: T^2 * KL(q || softmax(z_s / T)), mean over rows.

    `q` (any distribution over the classes: a mix of teachers, an ensemble, a peer's
    aggregate) is a constant. With q = softmax(z_t / T) it is `kd_loss` (Hinton et al. 2015).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    q = at_least_float32(target_probs.detach())
    log_s = F.log_softmax(at_least_float32(student_logits) / temperature, dim=-1)
    return temperature**2 * row_mean(kl_rows(q.clamp_min(1e-12).log(), log_s), mask)


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 4.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Hinton, Vinyals & Dean 2015: T^2 * KL(p_teacher^T || p_student^T), mean over rows.

    The T^2 factor keeps the gradient scale independent of the temperature (soft-target
    gradients shrink as 1/T^2), so the weight against the task loss means the same at any T.
    """
    check_logits(student_logits, teacher_logits, temperature)
    return row_mean(kd_rows(student_logits, teacher_logits, temperature), mask)


def kd_rows(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float, dim: int = -1
) -> Tensor:
    """Hinton et al.'s term per row: T^2 * KL(p_teacher^T || p_student^T) along `dim`.

    The one T^2-scaled KL of the library: `kd_loss` and the schemes that weight or pick
    rows (multi-teacher weighting, SSKD's kept rows, dropout self-distillation) use it."""
    log_s, log_t = log_probs(student_logits, teacher_logits, temperature)
    return temperature**2 * kl_rows(log_t, log_s, dim)


def symmetric_kl(logits_a: Tensor, logits_b: Tensor, temperature: float) -> Tensor:
    """T^2 * (KL(p_a^T || p_b^T) + KL(p_b^T || p_a^T)), mean over rows, with gradients into
    both sides: two stochastic views of one model taught by each other (dropout
    self-distillation, Lee et al. 2022)."""
    log_a = F.log_softmax(at_least_float32(logits_a) / temperature, dim=-1)
    log_b = F.log_softmax(at_least_float32(logits_b) / temperature, dim=-1)
    return temperature**2 * (kl_rows(log_a, log_b) + kl_rows(log_b, log_a)).mean()


def soft_cross_entropy(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 4.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Cross-entropy with soft targets, T^2 * H(p_teacher^T, p_student^T) (Hinton et al. 2015).

    Same gradient as `kd_loss`; the value is larger by T^2 * H(p_teacher^T), so it is not
    zero when the student matches the teacher.
    """
    check_logits(student_logits, teacher_logits, temperature)
    log_s, log_t = log_probs(student_logits, teacher_logits, temperature)
    per_row = -(log_t.exp() * log_s).sum(-1)
    return temperature**2 * row_mean(per_row, mask)


# ------------------------------------------------------------ soft targets, prepared once
#
# With a cached teacher, what KD reads of the teacher is fixed per sample: its probabilities
# at T and their sum p log p. Computing them once, when the cache is opened, leaves the step
# the student's side only: a log-softmax, one product with the stored probabilities, two
# sums and one scale. At small batch sizes each tensor operation costs microseconds of
# dispatch, so the count of operations is what a step pays for.


@dataclass(frozen=True)
class PreparedTeacher:
    """Teacher-side work of a loss done once per sample instead of every step.

    `prepare(teacher_logits, **fixed)` maps teacher logits (..., C) to a tuple of tensors
    with the same leading dims, which `loss(student_logits, prepared, **fixed, mask=None)`
    reads in their place; `args` names the loss's keyword arguments the preparation depends
    on, which must be constant over the run (a scheduled temperature keeps the per-step
    path). Used by `distill.loop.cache.TeacherCache`.
    """

    prepare: Callable[..., tuple[Tensor, ...]]
    loss: Callable[..., Tensor]
    args: tuple[str, ...] = ("temperature",)


def soft_targets(teacher_logits: Tensor, *, temperature: float = 4.0) -> tuple[Tensor, Tensor]:
    """(p, c): the teacher's probabilities softmax(teacher / T), (..., C), and c = sum p log p,
    (...,), the constant that makes the cross-entropy a KL divergence."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_p = F.log_softmax(at_least_float32(teacher_logits.detach()) / temperature, dim=-1)
    p = log_p.exp()
    return p, (p * log_p).sum(-1)


def _soft_target_loss(
    student_logits: Tensor,
    prepared: tuple[Tensor, Tensor],
    temperature: float,
    mask: Tensor | None,
    with_const: bool,
) -> Tensor:
    probs, const = prepared
    if probs.shape != student_logits.shape or const.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"prepared soft targets {tuple(probs.shape)} / {tuple(const.shape)} do not fit "
            f"student logits {tuple(student_logits.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_s = F.log_softmax(at_least_float32(student_logits) / temperature, dim=-1)
    if mask is None:  # the fewest tensor operations: sums over the whole batch, one scale
        cross = log_s.mul(probs).sum()
        total = const.sum() - cross if with_const else -cross
        return total * (temperature**2 / max(const.numel(), 1))
    per_row = -(probs * log_s).sum(-1)
    if with_const:
        per_row = per_row + const
    return temperature**2 * row_mean(per_row, mask)


def kd_from_soft_targets(
    student_logits: Tensor,
    prepared: tuple[Tensor, Tensor],
    *,
    temperature: float = 4.0,
    mask: Tensor | None = None,
) -> Tensor:
    """`kd_loss` on prepared targets (`soft_targets` of the teacher logits at the same T)."""
    return _soft_target_loss(student_logits, prepared, temperature, mask, with_const=True)


def soft_ce_from_soft_targets(
    student_logits: Tensor,
    prepared: tuple[Tensor, Tensor],
    *,
    temperature: float = 4.0,
    mask: Tensor | None = None,
) -> Tensor:
    """`soft_cross_entropy` on prepared targets (`soft_targets` at the same T)."""
    return _soft_target_loss(student_logits, prepared, temperature, mask, with_const=False)


KD_PREPARED = PreparedTeacher(soft_targets, kd_from_soft_targets)
SOFT_CE_PREPARED = PreparedTeacher(soft_targets, soft_ce_from_soft_targets)


def reverse_kl_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """T^2 * KL(p_student^T || p_teacher^T): mode-seeking, the student may drop teacher modes.

    Used for generative students (Gu et al. 2024, MiniLLM); T^2 as in `kd_loss`.
    """
    check_logits(student_logits, teacher_logits, temperature)
    log_s, log_t = log_probs(student_logits, teacher_logits, temperature)
    return temperature**2 * row_mean(kl_rows(log_s, log_t), mask)


def js_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """T^2 * Jensen-Shannon divergence: (KL(p_t || m) + KL(p_s || m)) / 2 with m = (p_t + p_s) / 2.

    Symmetric and bounded by ln 2 * T^2 per row (Lin 1991; used for KD by e.g. Agarwal et al. 2024).
    """
    check_logits(student_logits, teacher_logits, temperature)
    log_s, log_t = log_probs(student_logits, teacher_logits, temperature)
    return temperature**2 * row_mean(jsd_rows(log_t, log_s, 0.5), mask)


def mse_loss(student: Tensor, teacher: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """Mean squared error between student and teacher tensors (logits or features).

    On logits this is logit matching (Ba & Caruana 2014), the T -> infinity limit of KD;
    on features it is a FitNets-style hint (Romero et al. 2015) once an adapter matches
    the shapes. Mean over every element, so the scale does not depend on the width.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"mse: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ "
            f"in shape; add an adapter to the term (adapter: linear) to map one to the other"
        )
    per_row = (at_least_float32(student) - at_least_float32(teacher.detach())).pow(2)
    if mask is None:
        return per_row.mean()
    per_row = per_row.reshape(*mask.shape, -1).mean(-1)
    return row_mean(per_row, mask)


def targets_or_teacher_argmax(targets: Tensor | None, teacher_logits: Tensor) -> Tensor:
    """Labels per row; unlabelled rows (-1) or no labels at all fall back to the teacher's top-1."""
    guess = teacher_logits.detach().argmax(-1).reshape(-1)
    if targets is None:
        return guess
    targets = targets.reshape(-1)
    return torch.where(targets >= 0, targets, guess)


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    targets: Tensor | None = None,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> Tensor:
    """Decoupled KD (Zhao et al. 2022): T^2 * (alpha * TCKD + beta * NCKD), mean over rows.

    TCKD is the KL between the binary distributions [p_target, 1 - p_target] of teacher and
    student; NCKD the KL between their distributions over the non-target classes only
    (softmax with the target class removed). Hinton KD equals TCKD + (1 - p_target^t) * NCKD,
    which couples the two; DKD weights them freely. Defaults are the paper's CIFAR-100
    setting (alpha 1, beta 8, T 4; the paper also warms the weight up over 20 epochs). Rows
    without a label (-1) use the teacher's top-1 class as the target.
    """
    check_logits(student_logits, teacher_logits, temperature)
    s = at_least_float32(student_logits).reshape(-1, student_logits.shape[-1]) / temperature
    t = (
        at_least_float32(teacher_logits.detach()).reshape(-1, teacher_logits.shape[-1])
        / temperature
    )
    gt = F.one_hot(targets_or_teacher_argmax(targets, teacher_logits), s.shape[-1]).bool()
    log_ps, log_pt = F.log_softmax(s, -1), F.log_softmax(t, -1)
    # Binary (target vs rest) log-probabilities: log p_gt and log(1 - p_gt), computed stably.
    s_gt, t_gt = log_ps[gt], log_pt[gt]
    s_rest = torch.logsumexp(log_ps.masked_fill(gt, -torch.inf), -1)
    t_rest = torch.logsumexp(log_pt.masked_fill(gt, -torch.inf), -1)
    tckd = t_gt.exp() * (t_gt - s_gt) + t_rest.exp() * (t_rest - s_rest)
    # Non-target distributions: softmax over the other classes (the target masked out).
    log_qs = F.log_softmax(s.masked_fill(gt, -torch.inf), -1)
    log_qt = F.log_softmax(t.masked_fill(gt, -torch.inf), -1)
    nckd = (log_qt.exp() * (log_qt - log_qs)).masked_fill(gt, 0.0).sum(-1)
    return temperature**2 * (alpha * tckd + beta * nckd).mean()


def standardize_logits(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Z-score each row: (z - mean) / std (unbiased std, as in Sun et al. 2024's code)."""
    logits = at_least_float32(logits)
    return (logits - logits.mean(-1, keepdim=True)) / (logits.std(-1, keepdim=True) + eps)


def ls_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 2.0,
    mask: Tensor | None = None,
) -> Tensor:
    """KD on z-scored logits (Sun et al. 2024, logit standardization).

    Standardising each row before the softmax gives every sample its own effective
    temperature (its logit std) and lets the student match the teacher's logit *relations*
    without matching their range. Then `kd_loss` at the base `temperature` (T^2 included).
    """
    check_logits(student_logits, teacher_logits, temperature)
    return kd_loss(
        standardize_logits(student_logits),
        standardize_logits(teacher_logits.detach()),
        temperature=temperature,
        mask=mask,
    )


def pearson_distance(a: Tensor, b: Tensor, dim: int, eps: float = 1e-8) -> Tensor:
    """1 - Pearson correlation of a and b along `dim`, averaged over every other position.

    The correlation is the cosine similarity of the mean-centred vectors (eps 1e-8 in the
    denominator), as DIST and DIST+ define it."""
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    corr = (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim) + eps)
    return (1.0 - corr).mean()


def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
) -> Tensor:
    """DIST (Huang et al. 2022): match correlations, not exact probabilities.

    With P = softmax(z / T) of shape (N, C): inter-class loss = mean over rows of
    1 - pearson(P_s[i], P_t[i]); intra-class loss = mean over classes of
    1 - pearson(P_s[:, j], P_t[:, j]). Returns T^2 * (beta * inter + gamma * intra).
    Needs a batch of at least 2 rows for the intra-class term. Defaults from the paper.
    """
    check_logits(student_logits, teacher_logits, temperature)
    if student_logits.reshape(-1, student_logits.shape[-1]).shape[0] < 2:
        raise ValueError(
            "dist: the intra-class term correlates each class over the batch and needs 2 or "
            "more rows; use a batch of at least 2 (or set gamma: 0 and use kd)"
        )
    ps = F.softmax(
        at_least_float32(student_logits).reshape(-1, student_logits.shape[-1]) / temperature, -1
    )
    pt = F.softmax(
        at_least_float32(teacher_logits.detach()).reshape(-1, teacher_logits.shape[-1])
        / temperature,
        -1,
    )
    inter = pearson_distance(ps, pt, dim=1)
    intra = pearson_distance(ps, pt, dim=0)
    return temperature**2 * (beta * inter + gamma * intra)


def ttm_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 4.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Transformed teacher matching (Zheng & Yang 2024): KL(softmax(z_t / T) || softmax(z_s)).

    Only the teacher is tempered (a power transform of its probabilities); the student is
    matched at T = 1, which the paper shows adds a Rényi-entropy regulariser on the
    student. No T^2 factor: the student's logits are not divided by T.
    """
    check_logits(student_logits, teacher_logits, temperature)
    log_s = F.log_softmax(at_least_float32(student_logits), dim=-1)
    log_t = F.log_softmax(at_least_float32(teacher_logits.detach()) / temperature, dim=-1)
    return row_mean(kl_rows(log_t, log_s), mask)


def virtual_teacher_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None = None,
    *,
    targets: Tensor,
    correct_prob: float = 0.9,
    temperature: float = 20.0,
) -> Tensor:
    """Teacher-free KD with a virtual teacher (Yuan et al. 2020, Tf-KD_reg).

    The virtual teacher puts `correct_prob` on the label and spreads the rest evenly; as in
    the authors' code its distribution is softened as softmax(p_virtual / T), and the
    student (at T = 1) matches it by KL. No real teacher is read (`teacher_logits` is
    ignored), so it runs under the supervised scheme. Unlabelled rows (-1) are skipped.
    """
    if not 0.0 < correct_prob < 1.0:
        raise ValueError(f"correct_prob must be in (0, 1), got {correct_prob}")
    logits = at_least_float32(student_logits).reshape(-1, student_logits.shape[-1])
    targets = targets.reshape(-1)
    labelled = targets >= 0
    num_classes = logits.shape[-1]
    virtual = torch.full_like(logits, (1.0 - correct_prob) / (num_classes - 1))
    virtual[labelled, targets[labelled]] = correct_prob
    log_v = F.log_softmax(virtual / temperature, dim=-1)
    return row_mean(kl_rows(log_v, F.log_softmax(logits, dim=-1)), labelled)
