"""`validate`: every problem a config would hit, found before anything trains.

It sits above `distill.app.build` (which constructs the run's objects) and `distill.app.stages`
(which expands a run in stages), and reads both; neither imports it.
"""

from __future__ import annotations

from distill.app.build import build, load_data
from distill.app.problems import name_problems
from distill.app.stages import expand, is_pipeline, pipeline_problems
from distill.core.config import ExperimentConfig
from distill.core.errors import CheckpointError, ConfigError, DataError, LayerError
from distill.data import DataSplits
from distill.models import build_model
from distill.objective import tapped_layers
from distill.schemes import SCHEMES
from distill.taps import Tap


def validate(cfg: ExperimentConfig) -> list[str]:
    """Every problem a run would hit: names, then every layer name, then weights and shapes.

    Empty means the config builds and a dry forward through every term works. A run in
    stages is checked stage by stage (weights that earlier stages will write are skipped).
    """
    if is_pipeline(cfg):
        problems = pipeline_problems(cfg)
        if problems:
            return problems
        for i, stage in enumerate(expand(cfg)):
            try:
                data = load_data(stage.data)
            except ConfigError as e:
                problems.append(f"stage {i} ({stage.name}): {e}")
                continue
            found = _layer_problems(stage, data)
            if not found:
                try:
                    build(stage, missing_weights_ok=True, data=data)
                except (ConfigError, CheckpointError, DataError, LayerError) as e:
                    found = [str(e)]
            problems += [f"stage {i} ({stage.name}): {p}" for p in found]
        return problems
    problems = name_problems(cfg)
    if problems:
        return problems
    try:
        data = load_data(cfg.data)  # once, for the layer checks and the build
    except ConfigError as e:
        return [str(e)]
    problems = _layer_problems(cfg, data)
    if problems:
        return problems
    try:
        build(cfg, data=data)
    except (ConfigError, CheckpointError, DataError, LayerError) as e:
        problems.append(str(e))
    return problems


def _layer_problems(cfg: ExperimentConfig, data: DataSplits) -> list[str]:
    """Check every term's layer names (build stops at the first bad one; users want them all)."""
    problems = []
    for role in ("student", "teacher"):
        spec = getattr(cfg, role)
        if spec is None or (role == "teacher" and not SCHEMES[cfg.scheme.name].taps_teacher):
            continue
        try:
            model = build_model(spec.name, data.input_shape, data.num_classes, spec.args)
        except ConfigError as e:
            problems.append(f"{role}: {e}")
            continue
        for i, term in enumerate(cfg.objective.terms):
            for layer in tapped_layers([getattr(term, role)]):
                try:
                    Tap(model, [layer], f"{role} {spec.name}").remove()
                except LayerError as e:
                    problems.append(f"objective.terms.{i}.{role}: {e}")
    return problems
