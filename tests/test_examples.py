"""Every example config validates and trains for a few steps through the config path."""

from pathlib import Path

import pytest

from distill.app.build import build, load_data
from distill.app.run import run_experiment
from distill.app.validate import validate
from distill.core.checkpoint import load_checkpoint, save_weights
from distill.core.config import load_config, parse_config
from distill.losses import LOSSES
from distill.models import build_model

ROOT = Path(__file__).parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def _with_stand_in_teacher(path: Path, tmp_path: Path) -> list[str]:
    """Overrides that point the example at an untrained teacher of the configured shape."""
    cfg = load_config(path)
    overrides = [f"run_dir={tmp_path / 'run'}", "train.max_steps=3", "train.progress=false"]
    if cfg.teacher is not None and cfg.teacher.num_classes is not None:  # cross-task
        data = load_data(cfg.data)
        spec = cfg.teacher
        teacher = build_model(spec.name, data.input_shape, spec.num_classes, spec.args)
        save_weights(tmp_path / "teacher.safetensors", teacher)
        overrides.append(f"teacher.weights={tmp_path / 'teacher.safetensors'}")
    elif cfg.teacher is not None:
        teacher_only = parse_config(
            {
                **cfg.model_dump(),
                "scheme": "supervised",
                "objective": {},
                "teacher": None,
                "student": {**cfg.teacher.model_dump(), "weights": None},
            }
        )
        save_weights(tmp_path / "teacher.safetensors", build(teacher_only).student)
        overrides.append(f"teacher.weights={tmp_path / 'teacher.safetensors'}")
    return overrides


def test_every_method_has_an_example():
    more = [
        p for d in ("dense", "paradigms") for p in sorted((ROOT / "examples" / d).glob("*.yaml"))
    ]
    runs = [p for p in [*EXAMPLES, *more] if p.stem not in ("federated", "interpret")]
    used = {term.loss for path in runs for term in load_config(path).objective.terms}
    assert set(LOSSES) <= used, f"methods without an example: {sorted(set(LOSSES) - used)}"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_validates_and_trains(path, tmp_path):
    overrides = _with_stand_in_teacher(path, tmp_path)
    cfg = load_config(path, overrides)
    assert validate(cfg) == []
    result = run_experiment(cfg)
    assert result["steps"] == 3 and not result["complete"]
    state = load_checkpoint(tmp_path / "run/checkpoints/last.safetensors")
    assert state["trainer"]["step"] == 3
