"""Response-based losses: the student matches the teacher's output distribution.

Every function takes logits of shape (N, C) or (N, L, C) (the last dim holds classes),
treats each leading position as one row, and averages over rows; `mask` (same leading
shape, bool) keeps only some rows, e.g. real tokens in a padded batch. The teacher side
is detached inside, so no gradient ever reaches a frozen teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape; both need (N, C) with the same C"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _row_mean(per_row: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return per_row.mean()
    mask = mask.reshape(per_row.shape).to(per_row.dtype)
    return (per_row * mask).sum() / mask.sum().clamp_min(1.0)


def _log_probs(student_logits: Tensor, teacher_logits: Tensor, temperature: float):
    # Computed in float32 at least: log-softmax of bf16 logits loses the small
    # probabilities that carry the dark knowledge.
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    return s, t


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
    _check(student_logits, teacher_logits, temperature)
    log_s, log_t = _log_probs(student_logits, teacher_logits, temperature)
    per_row = (log_t.exp() * (log_t - log_s)).sum(-1)
    return temperature**2 * _row_mean(per_row, mask)


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
    _check(student_logits, teacher_logits, temperature)
    log_s, log_t = _log_probs(student_logits, teacher_logits, temperature)
    per_row = -(log_t.exp() * log_s).sum(-1)
    return temperature**2 * _row_mean(per_row, mask)


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
    _check(student_logits, teacher_logits, temperature)
    log_s, log_t = _log_probs(student_logits, teacher_logits, temperature)
    per_row = (log_s.exp() * (log_s - log_t)).sum(-1)
    return temperature**2 * _row_mean(per_row, mask)


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
    _check(student_logits, teacher_logits, temperature)
    log_s, log_t = _log_probs(student_logits, teacher_logits, temperature)
    # log m computed stably as logsumexp of the two log-probabilities minus log 2.
    log_m = torch.logaddexp(log_s, log_t) - torch.log(torch.tensor(2.0, device=log_s.device))
    kl_t = (log_t.exp() * (log_t - log_m)).sum(-1)
    kl_s = (log_s.exp() * (log_s - log_m)).sum(-1)
    return temperature**2 * _row_mean(0.5 * (kl_t + kl_s), mask)


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
    per_row = (student.float() - teacher.detach().float()).pow(2)
    if mask is None:
        return per_row.mean()
    per_row = per_row.reshape(*mask.shape, -1).mean(-1)
    return _row_mean(per_row, mask)
