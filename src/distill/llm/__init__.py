"""Distillation for causal language models (Hugging Face `transformers` or any model that
returns logits / hidden states): token divergences, a chunked memory-efficient path, hidden-
state matching, teacher-logit caches, vocabulary alignment, on-policy and sequence-level KD.

Nothing here imports `transformers` (or torch) at import time; the names below, and
`distill.DistillationTrainer`, load on first use.
"""

from distill.core.registry import lazy_exports

_HOME = {
    "TOKEN_DIVERGENCES": "distill.losses.divergences",
    "chunked_token_divergence": "distill.llm.chunked",
    "forward_kl": "distill.losses.divergences",
    "generalized_jsd": "distill.losses.divergences",
    "reverse_kl": "distill.losses.divergences",
    "skew_forward_kl": "distill.losses.divergences",
    "skew_reverse_kl": "distill.losses.divergences",
    "token_kd_loss": "distill.losses.divergences",
    "total_variation": "distill.losses.divergences",
}


__getattr__ = lazy_exports(__name__, _HOME)


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
