"""Runs made of stages: each stage is an ordinary run in `<run_dir>/stages/NN-name`.

Four things expand into stages:

- `stages:` in a config (multi-stage training: e.g. a hint stage, then a KD stage), each with
  its own scheme, objective, optimizer and epochs; the student carries over by default;
- `scheme: ban` — born-again networks (Furlanello et al. 2018): generation k teaches a freshly
  initialised generation k+1 of the same architecture; optionally the generations' ensemble
  is tested too;
- `scheme: teacher_assistant` (Mirzadeh et al. 2020): teacher -> assistant(s) -> student,
  each trained by offline KD from the one before;
- `scheme: lifelong` — one stage per task of a class-incremental sequence, each distilling
  from the previous stage's model (LwF) and/or anchored to it by EWC
  (distill.paradigms.lifelong).

Every stage checkpoints on its own; a finished stage (its results.json) is never retrained,
and `--resume` continues the stage that was interrupted. The final stage's best weights are
copied to `<run_dir>/checkpoints/best.safetensors`, so `distill eval` works on the whole run.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from pydantic import Field

from distill.core import rundir
from distill.core.checkpoint import atomic_write_text
from distill.core.config import ExperimentConfig, ModelConfig, dump_config, parse_config
from distill.core.errors import ConfigError
from distill.core.registry import resolve
from distill.core.rundir import finished
from distill.core.settings import Strict
from distill.models.weights import restore_weights
from distill.schemes import SCHEMES, parse_args


class BANArgs(Strict):
    generations: int = Field(3, ge=1)  # students trained after generation 0
    ensemble: bool = True  # also test the average of all generations' predictions
    temperature: float = Field(1.0, gt=0)  # of the default KD term (when objective has none)


class TeacherAssistantArgs(Strict):
    assistants: list[ModelConfig] = Field(min_length=1)  # largest first


class Pipeline(Protocol):
    """What a pipeline scheme's table entry (`SchemeSpec.pipeline`) points at.

    `stages` makes the (name, config dict) of every stage from the run's config `cfg` and
    its dumped dict `base`; `stage_dir(i, name)` and `trained(model, run_dir)` (a model
    section whose weights are a stage's best) come from here, so that every pipeline names
    its dirs the same way. `after_stage` runs once a stage has finished (also when it
    finished in an earlier invocation); `summary` adds to the run's results.json.
    """

    def stages(
        self, cfg: ExperimentConfig, base: dict, stage_dir: Callable, trained: Callable
    ) -> list[tuple[str, dict]]: ...

    def after_stage(self, cfg: ExperimentConfig, index: int, stage: ExperimentConfig) -> None: ...

    def summary(
        self, cfg: ExperimentConfig, stages: list[ExperimentConfig], results: list[dict]
    ) -> dict[str, Any]: ...


class _NothingBetween:
    """A pipeline with no work between its stages and nothing to add to results.json."""

    def after_stage(self, cfg: ExperimentConfig, index: int, stage: ExperimentConfig) -> None:
        return None

    def summary(
        self, cfg: ExperimentConfig, stages: list[ExperimentConfig], results: list[dict]
    ) -> dict[str, Any]:
        return {}


# the typed arguments of every pipeline scheme, by name (read from the scheme table)
PIPELINE_ARGS: dict[str, type[Strict]] = {
    name: resolve(spec.pipeline_args) for name, spec in SCHEMES.items() if spec.pipeline_args
}


def _pipeline_of(cfg: ExperimentConfig) -> Pipeline | None:
    spec = SCHEMES.get(cfg.scheme.name)
    return spec.stages if spec is not None else None


def is_pipeline(cfg: ExperimentConfig) -> bool:
    return bool(cfg.stages) or _pipeline_of(cfg) is not None


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _stage_dir(run_dir: Path, i: int, name: str) -> Path:
    return run_dir / "stages" / f"{i:02d}-{name}"


def _trained(model: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    return {"name": model["name"], "args": model.get("args", {}), "weights": str(run_dir)}


def expand(cfg: ExperimentConfig) -> list[ExperimentConfig]:
    """The stage configs of a pipeline, in order; weights of earlier stages are referenced by
    their run dirs (they exist once those stages have run)."""
    base = cfg.model_dump(mode="json")
    base.pop("stages")
    run_dir = cfg.resolved_run_dir()
    pipeline = _pipeline_of(cfg)
    if cfg.stages:
        stages = _user_stages(cfg, base, run_dir)
    else:
        assert pipeline is not None, "expand() of a config that is no pipeline"
        stages = pipeline.stages(cfg, base, lambda i, name: _stage_dir(run_dir, i, name), _trained)
    out = []
    for i, (name, data) in enumerate(stages):
        spec = SCHEMES.get(data["scheme"]["name"])
        if spec is not None and spec.teacher == "none":
            data["teacher"] = None  # a teacher-free stage ignores the run's teacher
        data["name"] = f"{cfg.name}-{name}"
        data["run_dir"] = str(_stage_dir(run_dir, i, name))
        out.append(parse_config(data, f"stage {i} ({name})"))
    return out


def _user_stages(cfg: ExperimentConfig, base: dict, run_dir: Path) -> list[tuple[str, dict]]:
    if _pipeline_of(cfg) is not None:
        raise ConfigError(
            f"scheme {cfg.scheme.name!r} makes its own stages; it cannot be combined with stages:"
        )
    names = [s.name for s in cfg.stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"stages: stage names must be unique, got {names}")
    out: list[tuple[str, dict]] = []
    previous: dict[str, Any] | None = None  # the student of the stage before
    for i, stage in enumerate(cfg.stages):
        data = dict(base)
        s = stage.model_dump(mode="json", exclude_unset=True)
        for key in ("scheme", "objective", "student"):
            if key in s:
                data[key] = s[key]
        data["train"] = _merge(base["train"], stage.train)
        if stage.teacher == "previous":
            if previous is None:
                raise ConfigError("stages.0.teacher: 'previous' needs a stage before it")
            data["teacher"] = _trained(previous, _stage_dir(run_dir, i - 1, cfg.stages[i - 1].name))
        elif "teacher" in s:
            data["teacher"] = s["teacher"]
        student = dict(data["student"])
        if stage.init == "previous" and previous is not None:
            if (student["name"], student.get("args", {})) != (
                previous["name"],
                previous.get("args", {}),
            ):
                raise ConfigError(
                    f"stages.{i}.init: 'previous' carries the student's weights over, but this "
                    f"stage's student differs from the previous one; set init: fresh"
                )
            student = _trained(student, _stage_dir(run_dir, i - 1, cfg.stages[i - 1].name))
        data["student"] = student
        out.append((stage.name, data))
        previous = {k: v for k, v in student.items() if k != "weights"}
    return out


def _kd_objective(base: dict, temperature: float) -> dict:
    objective = dict(base["objective"])
    if not objective.get("terms"):
        objective["terms"] = [{"loss": "kd", "args": {"temperature": temperature}}]
    return objective


class _BornAgain(_NothingBetween):
    """Born-again networks: generation 0 (the teacher, or trained here), then generations
    1..G, each a fresh student of the same architecture taught by the one before."""

    def stages(self, cfg, base, stage_dir, trained):
        args = parse_args(BANArgs, cfg.scheme.args, "ban")
        out: list[tuple[str, dict]] = []
        student = {k: v for k, v in base["student"].items() if k != "weights"}
        if cfg.teacher is not None:
            teacher = base["teacher"]
            if cfg.teacher.weights is None:
                raise ConfigError("teacher.weights: a BAN teacher (generation 0) must be trained")
        else:
            gen0 = {
                **base,
                "scheme": {"name": "supervised"},
                "teacher": None,
                "objective": {**base["objective"], "terms": []},
                "student": student,
            }
            out.append(("gen0", gen0))
            teacher = trained(student, stage_dir(0, "gen0"))
        for g in range(1, args.generations + 1):
            seed = base["train"]["seed"] + g  # each generation starts from a different init
            data = {
                **base,
                "scheme": {"name": "offline"},
                "teacher": teacher,
                "student": student,
                "objective": _kd_objective(base, args.temperature),
                "train": {**base["train"], "seed": seed},
            }
            out.append((f"gen{g}", data))
            teacher = trained(student, stage_dir(len(out) - 1, f"gen{g}"))
        return out

    def summary(self, cfg, stages, results):
        if not parse_args(BANArgs, cfg.scheme.args, "ban").ensemble:
            return {}
        from distill.app.build import build

        built = build(stages[-1])
        return _ensemble_test(built, [s.resolved_run_dir() for s in stages], cfg)


class _TeacherAssistant(_NothingBetween):
    """Teacher -> assistant(s) -> student, each stage offline KD from the one before."""

    def stages(self, cfg, base, stage_dir, trained):
        args = parse_args(TeacherAssistantArgs, cfg.scheme.args, "teacher_assistant")
        if cfg.teacher is None or cfg.teacher.weights is None:
            raise ConfigError(
                "teacher: the teacher_assistant scheme needs a trained teacher (weights)"
            )
        teacher = base["teacher"]
        chain = [a.model_dump(mode="json") for a in args.assistants] + [base["student"]]
        out: list[tuple[str, dict]] = []
        for i, model in enumerate(chain):
            name = f"assistant{i}" if i < len(chain) - 1 else "student"
            data = {
                **base,
                "scheme": {"name": "offline"},
                "teacher": teacher,
                "student": model,
                "objective": _kd_objective(base, 4.0),
            }
            out.append((name, data))
            teacher = trained(model, stage_dir(i, name))
        return out


BAN = _BornAgain()
TEACHER_ASSISTANT = _TeacherAssistant()


# ------------------------------------------------------------------------- running
def pipeline_problems(cfg: ExperimentConfig) -> list[str]:
    """Problems of every stage that need no trained weights (names, args, stage wiring)."""
    from distill.app.problems import name_problems

    try:
        stages = expand(cfg)
    except ConfigError as e:
        return [str(e)]
    problems = []
    for i, stage in enumerate(stages):
        problems += [f"stage {i} ({stage.name}): {p}" for p in name_problems(stage)]
    return problems


def run_pipeline(
    cfg: ExperimentConfig,
    *,
    resume: bool,
    overwrite: bool,
    callbacks=(),
    allow_changes=(),
    run_stage: Callable[..., dict],
) -> dict:
    """Run every stage in turn with `run_stage` (`distill.app.run.run_experiment`, which calls
    this for a run in stages); see the module docstring."""
    from distill.app.run_check import check_run_dir

    run_dir = cfg.resolved_run_dir()
    problems = pipeline_problems(cfg)
    if problems:
        raise ConfigError("config has problems:\n  " + "\n  ".join(problems))
    check_run_dir(run_dir, cfg, resume=resume, overwrite=overwrite, allow=allow_changes)
    with rundir.RunLock(run_dir):
        changes = check_run_dir(
            run_dir, cfg, resume=resume, overwrite=overwrite, allow=allow_changes
        )
        for line in changes:
            print(line, file=sys.stderr)
        rundir.begin(run_dir, "pipeline", overwrite=overwrite, source=cfg._source)
        return _run_stages(cfg, run_dir, resume, callbacks, allow_changes, run_stage)


def _run_stages(
    cfg: ExperimentConfig, run_dir: Path, resume: bool, callbacks, allow_changes, run_stage
) -> dict:
    stages, pipeline = expand(cfg), _pipeline_of(cfg)
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    atomic_write_text(
        run_dir / "pipeline.json",
        json.dumps({"stages": [s.resolved_run_dir().name for s in stages]}, indent=2),
    )
    results = []
    for i, stage in enumerate(stages):
        stage_dir = stage.resolved_run_dir()
        done = stage_dir / "results.json"
        after = pipeline.after_stage if pipeline is not None else None
        if finished(stage_dir):
            results.append(json.loads(done.read_text()))
            if after is not None:
                after(cfg, i, stage)
            continue
        can_resume = (stage_dir / "checkpoints" / "last.safetensors").is_file()
        r = run_stage(
            stage,
            resume=resume and can_resume,
            overwrite=not (resume and can_resume) and stage_dir.exists(),
            callbacks=callbacks,
            allow_changes=allow_changes if resume and can_resume else (),
        )
        results.append(r)
        if not r["complete"]:
            return {
                "name": cfg.name,
                "run_dir": str(run_dir),
                "complete": False,
                "stopped_by": r["stopped_by"],
                "stages": results,
            }
        if after is not None:
            after(cfg, i, stage)
    return _finish_stages(cfg, run_dir, stages, results)


def _finish_stages(
    cfg: ExperimentConfig, run_dir: Path, stages: list[ExperimentConfig], results: list[dict]
) -> dict:
    """The last stage's weights as the run's, and results.json summing up the stages."""
    from distill.app.build import weights_path

    final = stages[-1].resolved_run_dir()
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    _copy_atomic(weights_path(str(final)), run_dir / "checkpoints" / "best.safetensors")
    summary: dict[str, Any] = {
        "name": cfg.name,
        "run_dir": str(run_dir),
        "complete": True,
        "stopped_by": None,
        "stages": [
            {"stage": s.name, **{k: v for k, v in r.items() if k.startswith(("test_", "best_"))}}
            for s, r in zip(stages, results)
        ],
        **{k: v for k, v in results[-1].items() if k.startswith(("test_", "teacher_"))},
    }
    pipeline = _pipeline_of(cfg)
    if pipeline is not None:
        summary.update(pipeline.summary(cfg, stages, results))
    atomic_write_text(run_dir / "results.json", json.dumps(summary, indent=2))
    return summary


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)


@torch.no_grad()
def _ensemble_test(built, stage_dirs: list[Path], cfg: ExperimentConfig) -> dict[str, float]:
    """Test accuracy of the average of every generation's softmax (the BAN ensemble)."""
    from distill.app.build import load_model, weights_path
    from distill.evaluate import predict_logits, targets_of

    test = built.data.test
    targets = targets_of(test)
    probs = 0.0
    for d in stage_dirs:
        model = load_model(cfg.student, built.data, "student")
        restore_weights(model, weights_path(str(d)), "student")
        probs = probs + F.softmax(predict_logits(model, test, batch_size=512).float(), -1)
    acc = float((probs.argmax(-1) == targets).float().mean())
    return {"ensemble_test_acc": acc, "ensemble_members": len(stage_dirs)}


def final_stage_dir(run_dir: Path) -> Path:
    """The run dir whose config and curves describe a pipeline's final model (else run_dir)."""
    info = run_dir / "pipeline.json"
    if not info.is_file():
        return run_dir
    names = json.loads(info.read_text())["stages"]
    return run_dir / "stages" / names[-1]


__all__ = [
    "BAN",
    "PIPELINE_ARGS",
    "TEACHER_ASSISTANT",
    "Pipeline",
    "expand",
    "final_stage_dir",
    "is_pipeline",
    "pipeline_problems",
    "run_pipeline",
]
