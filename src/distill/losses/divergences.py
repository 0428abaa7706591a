"""The divergences between a teacher's and a student's distributions: each formula once.

Two layers of the same formulas:

- per row, from log-probabilities (..., C) -> (...): `kl_rows`, `jsd_rows`, `skew_rows`,
  `tv_rows`. Every loss, scheme and token divergence in distill computes its divergence
  with these (`distill.losses.response`'s classification losses average them over rows and
  scale by T^2; the token divergences below sum them over supervised tokens);
- per token, for language models (`lm_kd`, `DistillationTrainer`): logits (..., V), an
  optional boolean `mask` over the leading positions (True = a supervised token), the
  divergence summed over supervised tokens. Dividing by the supervised tokens of the whole
  (accumulated) batch gives a mean that does not depend on how the batch was split into
  micro-batches: `token_kd_loss`. The teacher side is always detached.

`sparse_kd_loss` is the same per-token KD from a sparse teacher (its top k and the tail, or
k samples). Everything is computed in float32 at least (float64 stays float64). P is the teacher's
distribution and Q the student's, both at temperature T.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.losses.table import DIVERGENCES


def at_least_float32(x: Tensor) -> Tensor:
    """`x` in float32 or wider: float64 stays float64, half precision goes up to float32."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def log_probs(student: Tensor, teacher: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """(log Q, log P) at temperature T, the teacher detached. In float32 at least: the
    log-softmax of bf16 logits loses the small probabilities that carry the dark knowledge."""
    log_q = F.log_softmax(at_least_float32(student) / temperature, dim=-1)
    log_p = F.log_softmax(at_least_float32(teacher.detach()) / temperature, dim=-1)
    return log_q, log_p


# ---------------------------------------------------------------------- per row
def kl_rows(log_p: Tensor, log_q: Tensor, dim: int = -1) -> Tensor:
    """KL(p || q) along `dim` from log-probabilities: sum p (log p - log q) (0 log 0 = 0)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim)


def mixture(log_a: Tensor, log_b: Tensor, weight_a: float) -> Tensor:
    """log(weight_a * a + (1 - weight_a) * b), stably."""
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log1p(-weight_a))


def jsd_rows(log_p: Tensor, log_q: Tensor, beta: float = 0.5) -> Tensor:
    """Generalized Jensen-Shannon divergence (Lin 1991; Agarwal et al. 2024, GKD):
    beta KL(P || M) + (1 - beta) KL(Q || M), M = beta P + (1 - beta) Q.

    beta = 0.5 is the usual JSD, bounded by ln 2. Its limits, JSD/beta -> KL(P || Q) as
    beta -> 0 and JSD/(1 - beta) -> KL(Q || P) as beta -> 1, are taken as the endpoints:
    beta = 0 gives the forward KL and beta = 1 the reverse KL (the convention of GKD
    implementations)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return kl_rows(log_p, log_q)
    if beta == 1.0:
        return kl_rows(log_q, log_p)
    log_m = mixture(log_p, log_q, beta)
    return beta * kl_rows(log_p, log_m) + (1 - beta) * kl_rows(log_q, log_m)


def skew_rows(log_a: Tensor, log_b: Tensor, alpha: float) -> Tensor:
    """Skew KL (Ko et al. 2024, DistiLLM): KL(A || alpha A + (1 - alpha) B). Mixing some of
    A into B keeps the divergence and its gradient bounded where B is near zero; alpha = 0
    is KL(A || B)."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    log_m = log_b if alpha == 0.0 else mixture(log_a, log_b, alpha)
    return kl_rows(log_a, log_m)


def tv_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Total variation distance 0.5 * sum_v |P(v) - Q(v)| (Wen et al. 2023)."""
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)


# ---------------------------------------------------------------------- per token
def check_logits(
    student: Tensor,
    teacher: Tensor,
    temperature: float,
    need: str = "both need (N, C) with the same C",
) -> None:
    """Refuse logits of two shapes, or a temperature <= 0, saying what is needed."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} "
            f"differ in shape; {need}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _token_log_probs(student: Tensor, teacher: Tensor, temperature: float):
    need = "token divergences need the same vocabulary (see distill.llm.vocab)"
    check_logits(student, teacher, temperature, need)
    return log_probs(student, teacher, temperature)


def masked_sum(per_token: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return per_token.sum()
    return (per_token * mask.reshape(per_token.shape).to(per_token.dtype)).sum()


def forward_kl(
    student: Tensor, teacher: Tensor, *, mask: Tensor | None = None, temperature: float = 1.0
) -> Tensor:
    """KL(P || Q): mean-seeking; the student covers every mode of the teacher."""
    log_q, log_p = _token_log_probs(student, teacher, temperature)
    return masked_sum(kl_rows(log_p, log_q), mask)


def reverse_kl(
    student: Tensor, teacher: Tensor, *, mask: Tensor | None = None, temperature: float = 1.0
) -> Tensor:
    """KL(Q || P): mode-seeking (Gu et al. 2024, MiniLLM); the surveys' fix for bland text."""
    log_q, log_p = _token_log_probs(student, teacher, temperature)
    return masked_sum(kl_rows(log_q, log_p), mask)


def generalized_jsd(
    student: Tensor,
    teacher: Tensor,
    *,
    beta: float = 0.5,
    mask: Tensor | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """The generalized JSD of `jsd_rows` (GKD), per token."""
    log_q, log_p = _token_log_probs(student, teacher, temperature)
    return masked_sum(jsd_rows(log_p, log_q, beta), mask)


def skew_forward_kl(
    student: Tensor,
    teacher: Tensor,
    *,
    alpha: float = 0.1,
    mask: Tensor | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Skew KL (Ko et al. 2024, DistiLLM): KL(P || alpha P + (1 - alpha) Q)."""
    log_q, log_p = _token_log_probs(student, teacher, temperature)
    return masked_sum(skew_rows(log_p, log_q, alpha), mask)


def skew_reverse_kl(
    student: Tensor,
    teacher: Tensor,
    *,
    alpha: float = 0.1,
    mask: Tensor | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Skew reverse KL (Ko et al. 2024, DistiLLM): KL(Q || alpha Q + (1 - alpha) P)."""
    log_q, log_p = _token_log_probs(student, teacher, temperature)
    return masked_sum(skew_rows(log_q, log_p, alpha), mask)


def total_variation(
    student: Tensor, teacher: Tensor, *, mask: Tensor | None = None, temperature: float = 1.0
) -> Tensor:
    """Total variation distance (Wen et al. 2023, f-divergence KD), per token."""
    log_q, log_p = _token_log_probs(student, teacher, temperature)
    return masked_sum(tv_rows(log_p, log_q), mask)


# name -> (function, paper), from the table `distill methods` reads (`losses.table`)
TOKEN_DIVERGENCES: dict[str, tuple[Callable[..., Tensor], str]] = {
    name: (globals()[fn], paper) for name, (fn, paper) in DIVERGENCES.items()
}


def divergence_args(divergence: str, temperature: float, beta: float, alpha: float) -> dict:
    """The keyword arguments a divergence takes: temperature, plus beta (jsd) or alpha (skew)."""
    if divergence not in TOKEN_DIVERGENCES:
        raise ValueError(
            f"unknown token divergence {divergence!r}; choose from {sorted(TOKEN_DIVERGENCES)}"
        )
    out: dict[str, float] = {"temperature": temperature}
    if divergence == "jsd":
        out["beta"] = beta
    if divergence in ("skew_kl", "skew_reverse_kl"):
        out["alpha"] = alpha
    return out


def token_kd_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    divergence: str = "forward_kl",
    mask: Tensor | None = None,
    num_tokens: float | Tensor | None = None,
    temperature: float = 1.0,
    **args: float,
) -> Tensor:
    """A divergence averaged over supervised tokens.

    `num_tokens` is the number of supervised tokens in the whole batch the optimizer step
    sees (over every micro-batch of gradient accumulation); each micro-batch's loss is its
    token sum over that number, so the accumulated gradient equals the full batch's.
    Without it, the micro-batch's own token count is used.
    """
    if divergence not in TOKEN_DIVERGENCES:
        raise ValueError(
            f"unknown token divergence {divergence!r}; choose from {sorted(TOKEN_DIVERGENCES)}"
        )
    fn = TOKEN_DIVERGENCES[divergence][0]
    total = fn(student, teacher, mask=mask, temperature=temperature, **args)
    if num_tokens is None:
        num_tokens = mask.sum() if mask is not None else student.shape[:-1].numel()
    return total / torch.as_tensor(num_tokens, dtype=total.dtype).clamp_min(1)


def sparse_kd_loss(
    student_logits: Tensor,
    ids: Tensor,
    values: Tensor,
    extra: Tensor,
    mode: str,
    *,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    num_tokens: float | Tensor | None = None,
) -> Tensor:
    """The KD loss from a sparse teacher (a cache's or a server's top-k or samples,
    `distill.llm.cache`), summed over supervised tokens and divided by `num_tokens` (as
    `token_kd_loss`).

    topk: KL over the k tokens and the tail bucket; sample: the unbiased soft cross-entropy
    sum_v w(v) (-log q(v)) (its value includes the teacher's entropy, its gradient does not).
    """
    log_q = F.log_softmax(student_logits.float() / temperature, -1)
    log_q_ids = log_q.gather(-1, ids)
    if mode == "topk":
        q_tail = torch.log1p(-log_q_ids.exp().sum(-1).clamp(max=1 - 1e-6))
        p = values.exp()
        per_token = (p * (values - log_q_ids)).sum(-1) + extra.exp() * (extra - q_tail)
    else:
        per_token = -(values * log_q_ids).sum(-1)
    per_token = per_token * temperature**2 if temperature != 1.0 else per_token
    if mask is not None:
        per_token = per_token * mask.to(per_token.dtype)
    if num_tokens is None:
        num_tokens = mask.sum() if mask is not None else per_token.numel()
    return per_token.sum() / torch.as_tensor(num_tokens, dtype=per_token.dtype).clamp_min(1)
