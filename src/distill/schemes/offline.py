"""Offline distillation: a frozen, pretrained teacher teaches the student (Hinton et al. 2015)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from distill.data import teacher_input
from distill.models.mode import set_training
from distill.objective import Objective
from distill.schemes.base import SchemeContext, freeze
from distill.taps import Knowledge, Tap, with_input_grad


class OfflineKD:
    """The teacher runs in eval mode under `no_grad` on the same (augmented) batch as the student.

    Taps on both models are derived from the objective's terms, so a layer name is written
    once, in the term that reads it. With a `teacher_cache` (`distill.loop.cache.TeacherCache`)
    the teacher's outputs are read from it by sample index (and view) instead.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        objective: Objective,
        teacher_cache: Any = None,
    ):
        self.student = student
        self.teacher = freeze(teacher)
        self.frozen = [self.teacher]  # what the trainer may shard or compile
        self.objective = objective
        self.modules = nn.ModuleDict({"student": student, "objective": objective})
        self._student_tap = Tap(student, objective.student_layers(), "student")
        self._teacher_tap = Tap(teacher, objective.teacher_layers(), "teacher")
        self.teacher_cache = teacher_cache  # from distill.app.build when the cache is exact

    @classmethod
    def from_context(cls, ctx: SchemeContext) -> OfflineKD:
        return cls(ctx.student, ctx.teacher, ctx.objective, ctx.teacher_cache)

    def teacher_knowledge(self, batch: dict[str, Tensor]) -> Knowledge:
        if self.teacher_cache is not None and "index" in batch:
            return self.teacher_cache.lookup(batch["index"], batch.get("view"))
        with torch.no_grad():
            return self._teacher_tap.run(teacher_input(batch)).detach()

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        if self.objective.reads_input_grad():
            student, teacher = self._with_input_grads(batch)
        else:
            teacher = self.teacher_knowledge(batch)
            student = self._student_tap.run(batch["input"])
        total, components = self.objective(student, teacher, batch, step)
        return {"loss": total, **components}

    def _with_input_grads(self, batch: dict[str, Tensor]) -> tuple[Knowledge, Knowledge]:
        """Both models' knowledge plus d CE / d input (unlabelled rows use the teacher's top-1)."""
        with torch.no_grad():
            guess = self.teacher(batch["input"]).argmax(-1)
        labels = torch.where(batch["target"] >= 0, batch["target"], guess)
        teacher = with_input_grad(
            self._teacher_tap, batch["input"], labels, create_graph=False
        ).detach()
        student = with_input_grad(self._student_tap, batch["input"], labels, create_graph=True)
        return student, teacher

    def eval_model(self) -> nn.Module:
        return self.student

    def to(self, device: torch.device) -> OfflineKD:
        self.modules.to(device)
        self.teacher.to(device)
        return self

    def train(self, mode: bool = True) -> None:
        set_training(self.modules, mode)
        set_training(self.teacher, False)
