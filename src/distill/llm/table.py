"""The token divergences `lm_kd` and `DistillationTrainer` offer, as data: name -> (the
function's name in `distill.llm.divergences`, the paper). Torch-free, for `distill methods`."""

from __future__ import annotations

DIVERGENCES: dict[str, tuple[str, str]] = {
    "forward_kl": ("forward_kl", "Hinton et al. 2015 / Kim & Rush 2016 (token-level KD)"),
    "reverse_kl": ("reverse_kl", "Gu et al. 2024, MiniLLM (reverse KL)"),
    "jsd": (
        "generalized_jsd",
        "Agarwal et al. 2024, On-Policy Distillation (GKD), generalized JSD",
    ),
    "skew_kl": ("skew_forward_kl", "Ko et al. 2024, DistiLLM (skew KL)"),
    "skew_reverse_kl": ("skew_reverse_kl", "Ko et al. 2024, DistiLLM (skew reverse KL)"),
    "tv": ("total_variation", "Wen et al. 2023, f-Divergence Minimization (total variation)"),
}
