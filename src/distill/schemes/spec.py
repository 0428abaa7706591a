"""What a scheme's entry in the table holds (`SchemeSpec`): its paper and capabilities.

This module imports nothing of torch or of the schemes: a spec names its builder and its
arguments model as `module:attr` strings, resolved on first use, so `distill schemes`
answers at once, and the loop, the data layer and the domains (LLM, embeddings, dense
prediction, diffusion) never import each other through this table.

The capabilities are what `build`, `validate`, the teacher cache and the stages read, so
that no scheme is known there by its name:

- `teacher`: what the config's teacher section means (none, required, optional, teachers);
- `taps_teacher`: `objective.terms` read the frozen teacher through taps (sized by a dry
  forward of both models), and the scheme runs them;
- `teacher_terms`: `objective.terms` may hold terms that read a teacher;
- `takes_peers`: a `peers:` list gives the online peers;
- `paired_data`: works with `data.paired` (the teacher reads another modality);
- `cacheable`: the teacher's outputs may be cached ahead of training (`distill.loop.cache`);
- `teacher_for_metrics`: a teacher section is allowed although the scheme trains without
  one (its test accuracy and agreement are then reported);
- `monitors`: the `train.monitor` values its validation reports;
- `predicts_classes`: the student outputs class logits (not embeddings, images or boxes);
- `pipeline_args`, `pipeline`: a pipeline scheme (it runs as stages, `builder` is None):
  its typed arguments, and the object that makes its stages (`stages(cfg, base, stage_dir,
  trained)`, `after_stage(cfg, index, stage)`, `summary(cfg, stages, results)`; see
  `distill.app.stages.Pipeline`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from distill.core.registry import resolve

TeacherUse = Literal["none", "required", "optional", "teachers"]


@dataclass(frozen=True)
class SchemeSpec:
    """How a config name maps to a scheme: its paper, its capabilities and where its code
    is. `build` (a callable taking a `SchemeContext`) is None for pipeline schemes."""

    family: str
    paper: str
    teacher: TeacherUse
    builder: str | None = None  # "module:attr" of the callable taking a SchemeContext
    args_from: str | None = None  # "module:attr" of its typed arguments (a Strict model)
    pipeline_args: str | None = None  # a pipeline scheme's arguments
    pipeline: str | None = None  # "module:attr" of the object that makes its stages
    arg_names: tuple[str, ...] = ()  # for `distill schemes` (checked against args_from)
    taps_teacher: bool = False
    teacher_terms: bool = False
    takes_peers: bool = False
    paired_data: bool = False
    cacheable: bool = False
    teacher_for_metrics: bool = False
    # "module:attr" of a function of the scheme's args: False when they name another source
    # of the teacher's outputs (a cache, a server), so the teacher section is not loaded
    needs_teacher: str | None = None
    monitors: tuple[str, ...] = ("acc", "nll")
    predicts_classes: bool = True

    @property
    def build(self) -> Any:
        return resolve(self.builder) if self.builder else None

    @property
    def args(self) -> type | None:
        return resolve(self.args_from) if self.args_from else None

    @property
    def is_pipeline(self) -> bool:
        return self.builder is None

    @property
    def stages(self) -> Any:
        return resolve(self.pipeline) if self.pipeline else None


__all__ = ["SchemeSpec", "TeacherUse"]
