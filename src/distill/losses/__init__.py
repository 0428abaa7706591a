"""Distillation losses: pure functions of tensors, named in one table.

`LOSSES` maps the name used in configs to a `LossSpec` (the function, its family and the
paper that defines it). A `package.module:attr` string in a config reaches user losses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from distill.losses.response import (
    js_loss,
    kd_loss,
    mse_loss,
    reverse_kl_loss,
    soft_cross_entropy,
)


@dataclass(frozen=True)
class LossSpec:
    fn: Callable[..., Tensor]
    family: str
    paper: str


LOSSES: dict[str, LossSpec] = {
    "kd": LossSpec(
        kd_loss,
        "response",
        "Hinton, Vinyals & Dean 2015, Distilling the Knowledge in a Neural Network",
    ),
    "soft_ce": LossSpec(
        soft_cross_entropy, "response", "Hinton, Vinyals & Dean 2015 (cross-entropy form)"
    ),
    "reverse_kl": LossSpec(reverse_kl_loss, "response", "Gu et al. 2024, MiniLLM (reverse KL)"),
    "js": LossSpec(js_loss, "response", "Lin 1991 (Jensen-Shannon); Agarwal et al. 2024, GKD"),
    "mse": LossSpec(
        mse_loss,
        "response/feature",
        "Ba & Caruana 2014 (logits); Romero et al. 2015, FitNets (features)",
    ),
}

__all__ = [
    "LOSSES",
    "LossSpec",
    "js_loss",
    "kd_loss",
    "mse_loss",
    "reverse_kl_loss",
    "soft_cross_entropy",
]
