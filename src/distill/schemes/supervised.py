"""Supervised training: one model, labels only. Trains teachers and scratch baselines."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distill.models.mode import set_training
from distill.objective import Objective
from distill.schemes.base import SchemeContext
from distill.taps import Tap


class Supervised:
    def __init__(self, student: nn.Module, objective: Objective | None = None):
        self.objective = objective if objective is not None else Objective()
        if any(term.needs_teacher for term in self.objective.terms):
            raise ValueError(
                "the supervised scheme has no teacher, but the objective has terms that read "
                "one; use scheme: offline with a teacher, or keep only teacher-free terms (tf_kd)"
            )
        self.student = student
        self.modules = nn.ModuleDict({"student": student, "objective": self.objective})
        self._tap = Tap(student, self.objective.student_layers(), "student")

    @classmethod
    def from_context(cls, ctx: SchemeContext) -> Supervised:
        return cls(ctx.student, ctx.objective)

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        knowledge = self._tap.run(batch["input"])
        total, components = self.objective(knowledge, None, batch, step)
        return {"loss": total, **components}

    def eval_model(self) -> nn.Module:
        return self.student

    def to(self, device: torch.device) -> Supervised:
        self.modules.to(device)
        return self

    def train(self, mode: bool = True) -> None:
        set_training(self.modules, mode)
