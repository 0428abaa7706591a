"""Schemes: who teaches whom on each step. A scheme owns models, never a loop.

Every scheme offers the same small surface to the `Trainer`:

- `modules`: an `nn.ModuleDict` of everything it trains (optimised and checkpointed);
- `step(batch, step)`: the named losses for one batch, 'loss' being the one to minimise;
- `eval_model()`: the model to evaluate and export (the student);
- `to(device)` and `train(mode)`, which keep any frozen teacher in eval mode.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from distill.schemes.offline import OfflineKD
from distill.schemes.supervised import Supervised


class Scheme(Protocol):
    modules: nn.ModuleDict

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]: ...

    def eval_model(self) -> nn.Module: ...

    def to(self, device: torch.device) -> Scheme: ...

    def train(self, mode: bool = True) -> None: ...


SCHEMES: dict[str, tuple[type, str]] = {
    "supervised": (Supervised, "task loss only; trains teachers and scratch baselines"),
    "offline": (OfflineKD, "frozen pretrained teacher teaches the student (Hinton et al. 2015)"),
}

__all__ = ["SCHEMES", "OfflineKD", "Scheme", "Supervised"]
