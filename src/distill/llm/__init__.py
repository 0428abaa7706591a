"""Distillation for causal language models (Hugging Face `transformers` or any model that
returns logits / hidden states): token divergences, a chunked memory-efficient path, hidden-
state matching, teacher-logit caches, vocabulary alignment, on-policy and sequence-level KD.

Nothing here imports `transformers` at import time; `distill.DistillationTrainer` loads it
on first use.
"""

from distill.llm.chunked import chunked_token_divergence
from distill.llm.divergences import (
    TOKEN_DIVERGENCES,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    token_kd_loss,
    total_variation,
)

__all__ = [
    "TOKEN_DIVERGENCES",
    "chunked_token_divergence",
    "forward_kl",
    "generalized_jsd",
    "reverse_kl",
    "skew_forward_kl",
    "skew_reverse_kl",
    "token_kd_loss",
    "total_variation",
]
