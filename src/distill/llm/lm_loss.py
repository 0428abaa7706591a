"""The language-model KD loss, one definition for `lm_kd` and `DistillationTrainer`:
(kd, ce), each summed over the supervised tokens and divided by `num_tokens` (the
supervised tokens of the whole optimizer step, so gradient accumulation does not change
it). The divergence is any of `distill.llm.TOKEN_DIVERGENCES`; the vocabularies are cut to
the shorter (padded embedding rows carry no tokens).

From logits, or, memory-efficient, from the final hidden states and the output heads in
chunks of `chunk_size` tokens (`distill.llm.chunked`: full logits never exist).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distill.llm.chunked import chunked_cross_entropy, chunked_token_divergence
from distill.losses.divergences import token_kd_loss


def lm_losses_from_logits(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    divergence: str,
    num_tokens: Tensor | float,
    **div_args: float,
) -> tuple[Tensor, Tensor]:
    """(kd, ce) from (N, L, V) logits aligned with `targets` (N, L), -1 / -100 where no
    loss (anything below 0)."""
    vocab = min(student_logits.shape[-1], teacher_logits.shape[-1])
    z_s, z_t = student_logits[..., :vocab], teacher_logits[..., :vocab]
    mask = targets >= 0
    kd = token_kd_loss(
        z_s, z_t, divergence=divergence, mask=mask, num_tokens=num_tokens, **div_args
    )
    ce = F.cross_entropy(z_s.float()[mask], targets[mask], reduction="sum") / num_tokens
    return kd, ce


def lm_losses_from_hidden(
    student_hidden: Tensor,
    student_head: Tensor,
    teacher_hidden: Tensor,
    teacher_head: Tensor,
    targets: Tensor,
    *,
    divergence: str,
    num_tokens: Tensor | float,
    chunk_size: int,
    **div_args: float,
) -> tuple[Tensor, Tensor]:
    """(kd, ce) from the supervised tokens' final hidden states (rows, d) and the output
    head weights (V, d), `targets` (rows,), computed `chunk_size` tokens at a time."""
    vocab = min(student_head.shape[0], teacher_head.shape[0])
    w_s, w_t = student_head[:vocab], teacher_head[:vocab]
    kd = chunked_token_divergence(
        student_hidden,
        w_s,
        teacher_hidden,
        w_t,
        divergence=divergence,
        num_tokens=num_tokens,
        chunk_size=chunk_size,
        **div_args,
    )
    ce = chunked_cross_entropy(student_hidden, w_s, targets, chunk_size) / num_tokens
    return kd, ce
