"""The problems a config has that its names and sections alone show: unknown names, and
what the chosen scheme asks of the config (its teachers, arguments, terms, monitor)."""

from __future__ import annotations

from typing import Any

import torch

from distill.app.terms import config_reads_input_grad, needs_teacher
from distill.core.config import ExperimentConfig
from distill.core.errors import ConfigError, unknown_name
from distill.core.registry import resolve
from distill.data import (
    AUGMENTATIONS,
    DATASETS,
)
from distill.losses import LOSSES
from distill.models import MODELS
from distill.objective import ADAPTERS
from distill.schemes import SCHEMES, parse_args
from distill.schemes.table import with_capability

PRETRAINED_MODELS = {"hf_pretrained", "minilm_teacher", "pretrained_encoder"}


def name_problems(cfg: ExperimentConfig) -> list[str]:
    """Problems that need no data or model: unknown names and missing pieces."""
    problems = []
    scheme = cfg.scheme.name
    spec = SCHEMES.get(scheme)
    if spec is None:
        problems.append("scheme.name: " + unknown_name("scheme", scheme, SCHEMES))
    if ":" not in cfg.data.name and cfg.data.name not in DATASETS:
        problems.append("data.name: " + unknown_name("dataset", cfg.data.name, DATASETS))
    for i, aug in enumerate(cfg.data.augment):
        if aug.name not in AUGMENTATIONS:
            problems.append(
                f"data.augment.{i}.name: " + unknown_name("augmentation", aug.name, AUGMENTATIONS)
            )
    models = [("student", cfg.student), ("teacher", cfg.teacher)]
    models += [(f"teachers.{i}", t) for i, t in enumerate(cfg.teachers)]
    models += [(f"peers.{i}", p) for i, p in enumerate(cfg.peers)]
    for role, model in models:
        if model is not None and ":" not in model.name and model.name not in MODELS:
            problems.append(
                f"{role}.name: "
                + unknown_name(
                    "model", model.name, MODELS, "or give your own as 'package.module:attr'"
                )
            )
    for i, term in enumerate(cfg.objective.terms):
        if ":" not in term.loss and term.loss not in LOSSES:
            problems.append(f"objective.terms.{i}.loss: " + unknown_name("loss", term.loss, LOSSES))
        if term.adapter is not None and term.adapter not in ADAPTERS:
            problems.append(
                f"objective.terms.{i}.adapter: " + unknown_name("adapter", term.adapter, ADAPTERS)
            )
    if spec is not None:
        problems += _scheme_problems(cfg, spec)
    if cfg.train.device.startswith("cuda") and not torch.cuda.is_available():
        problems.append(
            f"train.device: {cfg.train.device!r} but no CUDA device is available; use 'cpu' or 'auto'"
        )
    on_cuda = cfg.train.device.startswith("cuda") or (
        cfg.train.device == "auto" and torch.cuda.is_available()
    )
    if cfg.train.precision == "fp16" and not on_cuda:
        problems.append("train.precision: fp16 needs a CUDA device; on CPU use bf16 or fp32")
    from distill.core.trackers import missing

    return problems + missing(cfg.train.report_to)


def _scheme_problems(cfg: ExperimentConfig, spec: Any) -> list[str]:
    """What the chosen scheme needs from the config: teachers, args, teacher-free terms."""
    problems, name = [], cfg.scheme.name
    if spec.args is not None:
        try:
            parse_args(spec.args, cfg.scheme.args, name)
        except ConfigError as e:
            problems.append(str(e))
    problems += _teacher_problems(cfg, spec)
    if cfg.data.paired is not None and not spec.paired_data:
        problems.append(
            f"data.paired: cross-modal data (the teacher reads the paired modality) works with "
            f"schemes {', '.join(with_capability('paired_data'))}, not {name}"
        )
    if cfg.data.paired is not None and config_reads_input_grad(cfg):
        problems.append("data.paired: input-gradient terms need one input for both models")
    if cfg.data.paired is not None and cfg.train.cache.views:
        problems.append(
            "train.cache.views: with data.paired the teacher reads the paired input, which "
            "augmentation leaves alone, so the cache is exact without views; remove views"
        )
    if cfg.peers and not spec.takes_peers:
        peers = ", ".join(with_capability("takes_peers"))
        problems.append(f"peers: only the online schemes {peers} use peers, not {name}")
    if not spec.is_pipeline and not spec.taps_teacher:
        if config_reads_input_grad(cfg):
            problems.append("objective.terms: input_grad needs a teacher; use scheme: offline")
        # (adversarial runs the objective on its teacher's outputs, as offline does)
        if not spec.teacher_terms and any(needs_teacher(t.loss) for t in cfg.objective.terms):
            why = (
                "has no teacher"
                if spec.teacher_for_metrics
                else "makes its own distillation losses"
            )
            problems.append(
                f"objective.terms: the {name} scheme {why}; "
                f"objective.terms may hold only teacher-free terms (e.g. tf_kd). Terms that "
                f"read a teacher belong to scheme: offline"
            )
    return problems


def teacher_from_source(cfg: Any, spec: Any) -> bool:
    """Whether the run reads its teacher's outputs from another source (a `distill
    lm-cache` cache, a server) instead of a model: then no teacher is loaded, and training
    holds the student alone (the scheme's `needs_teacher` decides)."""
    needs = getattr(spec, "needs_teacher", None)
    return needs is not None and not resolve(needs)(cfg.scheme.args)


def _teacher_problems(cfg: ExperimentConfig, spec: Any) -> list[str]:
    """What the scheme's use of a teacher (none, required, optional, teachers) asks of the
    config's teacher and teachers sections."""
    problems, name = [], cfg.scheme.name
    if teacher_from_source(cfg, spec):  # a cache or server is the teacher
        return problems
    if spec.teacher == "required" and cfg.teacher is None:
        problems.append(f"teacher: the {name} scheme needs a teacher section (name, args, weights)")
    if (
        spec.teacher == "required"
        and cfg.teacher is not None
        and cfg.teacher.weights is None
        and cfg.teacher.name not in PRETRAINED_MODELS
    ):
        problems.append(
            "teacher.weights: an offline teacher must be trained; give its .safetensors file or run dir"
        )
    if spec.teacher == "none" and cfg.teacher is not None and not spec.teacher_for_metrics:
        problems.append(f"teacher: the {name} scheme uses no separate teacher; remove this section")
    if spec.teacher == "teachers":
        if len(cfg.teachers) < 2:
            problems.append(f"teachers: the {name} scheme needs two or more trained teachers")
        problems += [
            f"teachers.{i}.weights: each teacher must be trained; give its weights or run dir"
            for i, t in enumerate(cfg.teachers)
            if t.weights is None
        ]
        if cfg.teacher is not None:
            problems.append(
                f"teacher: the {name} scheme reads its teachers from teachers: (a list)"
            )
    elif cfg.teachers:
        users = ", ".join(k for k, v in SCHEMES.items() if v.teacher == "teachers")
        problems.append(f"teachers: only the schemes {users} use a teachers list, not {name}")
    return problems


def check_monitor(name: str, spec: Any, monitor: str) -> None:
    """`train.monitor` must be a metric the scheme's validation reports."""
    if monitor in spec.monitors:
        return
    if spec.monitors == ("map", "miou"):
        raise ConfigError(
            f"scheme {name!r} picks the best epoch by its task's metric; set train.monitor: map "
            "(detection) or miou (segmentation)"
        )
    if monitor in ("map", "miou"):
        raise ConfigError(
            f"train.monitor: {monitor} is a detection/segmentation metric (scheme dense); "
            f"scheme {name!r} reports {' and '.join(spec.monitors)}"
        )
    if monitor == "acc":
        raise ConfigError(
            f"scheme {name!r} trains a denoiser, which has no accuracy; set "
            "train.monitor: nll (its validation loss picks the best epoch)"
        )
    raise ConfigError(f"train.monitor: scheme {name!r} reports {', '.join(spec.monitors)}")
