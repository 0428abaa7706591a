"""Supervised training: one model, labels only. Trains teachers and scratch baselines."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distill.objective import Objective
from distill.taps import Tap


class Supervised:
    def __init__(self, student: nn.Module, objective: Objective | None = None):
        self.objective = objective if objective is not None else Objective()
        if len(self.objective.terms):
            raise ValueError(
                "the supervised scheme has no teacher, but the objective has distillation "
                "terms; use scheme: offline with a teacher, or remove the terms"
            )
        self.student = student
        self.modules = nn.ModuleDict({"student": student, "objective": self.objective})
        self._tap = Tap(student, [], "student")

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        knowledge = self._tap.run(batch["input"])
        total, components = self.objective(knowledge, None, batch["target"], step)
        return {"loss": total, **components}

    def eval_model(self) -> nn.Module:
        return self.student

    def to(self, device: torch.device) -> Supervised:
        self.modules.to(device)
        return self

    def train(self, mode: bool = True) -> None:
        self.modules.train(mode)
