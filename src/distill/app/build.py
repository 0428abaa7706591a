"""Config -> objects: data, models, objective and scheme (the checks are `distill.app.problems`,
the terms `distill.app.terms`, `distill validate` is `distill.app.validate`).

Every object built here can be built by hand in Python; this file only wires names to them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill.app.problems import (
    check_monitor,
    name_problems,
    teacher_from_source,
)
from distill.app.terms import (
    add_input_grads,
    build_terms,
    check_classes,
    config_reads_input_grad,
    dry_knowledge,
    needs_teacher,
)
from distill.core.checkpoint import weights_info
from distill.core.config import DataConfig, ExperimentConfig, ModelConfig
from distill.core.distributed import env_world_size
from distill.core.errors import CheckpointError, ConfigError
from distill.data import (
    DataSplits,
    augmentation_problem,
    build_augmentation,
    load_batch,
    load_dataset,
    teacher_input,
)
from distill.data.loading import is_stream
from distill.loop.cache import CachePlan, TeacherCache, plan_cache
from distill.loop.rng import seed_everything
from distill.models import build_model
from distill.models.weights import restore_weights
from distill.objective import Objective, tapped_layers
from distill.schemes import SCHEMES, SchemeContext


@dataclass
class Built:
    cfg: ExperimentConfig
    data: DataSplits
    student: nn.Module
    teacher: nn.Module | None
    objective: Objective
    scheme: Any
    augment: Callable | None
    cache_plan: CachePlan | None = None
    # run by the Trainer after every optimizer step (e.g. pruning masks): its step_hooks
    step_hooks: list[Any] = field(default_factory=list)


def load_data(spec: DataConfig) -> DataSplits:
    data = _load_data(spec)
    if spec.condense is not None:
        from distill.paradigms.condense import condense

        if data.paired_shape is not None:
            raise ConfigError("data.condense does not apply to paired (cross-modal) data")
        plain = spec.model_dump(mode="json", exclude={"condense", "augment"})
        data = condense(data, spec.condense, plain)
    return data


def _load_data(spec: DataConfig) -> DataSplits:
    return load_dataset(
        spec.name,
        val_fraction=spec.val_fraction,
        split_seed=spec.split_seed,
        train_samples=spec.train_samples,
        unlabeled=spec.unlabeled,
        classes=spec.classes,
        task_classes=spec.task_classes,
        label_map=spec.label_map,
        view=spec.view,
        paired=spec.paired,
        **spec.options,
    )


def weights_path(ref: str) -> Path:
    """A weights file, or a run dir whose best weights are used."""
    path = Path(ref)
    if path.is_dir():
        path = path / "checkpoints" / "best.safetensors"
    return path


def load_model(
    spec: ModelConfig, data: DataSplits, role: str, *, missing_weights_ok: bool = False
) -> nn.Module:
    """Build a model; load its weights when given. A specialist teacher (one with `classes`)
    is built with that many outputs. `missing_weights_ok` skips weights that do not exist yet
    (a later stage's teacher, while validating a multi-stage run)."""
    classes = getattr(spec, "classes", None)
    num_classes = len(classes) if classes else spec.num_classes or data.num_classes
    if role == "teacher" and data.teacher_tokenizer is not None:  # cross-tokenizer LM KD
        num_classes = data.teacher_tokenizer.vocab_size
    shape = data.input_shape
    if role.startswith("teacher") and data.paired_shape is not None:  # cross-modal
        shape = data.paired_shape
    model = build_model(spec.name, shape, num_classes, spec.args)
    if spec.weights is not None:
        path = weights_path(spec.weights)
        if missing_weights_ok and not path.exists():
            return with_peft(model, spec, role)
        model = restore_into(model, spec, path, role)
    if not has_adapter(model):
        model = with_peft(model, spec, role)
    if getattr(spec, "quantize", None) is not None:
        from distill.compress.quant import is_quantized, prepare_qat

        if not is_quantized(model):  # (weights saved from QAT come back quantized already)
            try:
                prepare_qat(model, spec.quantize)
            except ValueError as e:
                raise ConfigError(f"{role}.quantize: {e}") from None
    return model


def restore_into(model: nn.Module, spec: ModelConfig, path: Path, role: str) -> nn.Module:
    """`model` (as built) with the weights of `path`: a plain file as it is; a PEFT run's
    full weights (adapter included) into the model wrapped by `spec.peft`; a LoRA run's
    adapter-only weights on top of the base weights file it names (checked to be the
    same base it was trained on)."""
    label = f"{role} {spec.name!r}"
    info = weights_info(path)
    if info.get("adapter_only"):
        restore_weights(model, weights_path(info["peft_base"]), f"{label} base")
        model = with_peft(model, spec, role)
        restore_weights(model, path, label)
        return model
    try:  # the base model's weights, then the adapter around it
        restore_weights(model, path, label)
    except CheckpointError:
        if spec.peft is None:
            raise
        model = with_peft(model, spec, role)  # weights a PEFT run saved (adapter included)
        restore_weights(model, path, label)
    return model


def has_adapter(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def with_peft(model: nn.Module, spec: ModelConfig, role: str) -> nn.Module:
    """`model` inside the PEFT adapter `spec.peft` describes (a LoRA config), or as it is."""
    if spec.peft is None:
        return model
    try:
        from peft import LoraConfig
    except ImportError:
        raise ConfigError(f"{role}.peft needs the peft package: pip install peft") from None
    from distill.llm.trainer_options import with_adapter

    try:
        return with_adapter(model, LoraConfig(**spec.peft))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{role}.peft: {e}") from None


def _dry_batch(data: DataSplits, n: int = 4) -> dict[str, Tensor]:
    if is_stream(data.train):  # the first samples of the stream
        from distill.data.loading import stream_batches, stream_loader

        loader = stream_loader(data.train, batch_size=n, workers=0, pin_memory=False)
        return next(stream_batches(loader))
    return load_batch(data.train, torch.arange(min(n, len(data.train))))


def build(
    cfg: ExperimentConfig, *, missing_weights_ok: bool = False, data: DataSplits | None = None
) -> Built:
    """Build everything a run needs. Raises ConfigError/CheckpointError on the first problem.

    `data`: the config's data, when already loaded (`validate` loads it once). The steps run
    in a fixed order, since model and adapter initialisation draw from the seeded RNG."""
    spec = _buildable(cfg)
    seed_everything(cfg.train.seed)
    data = data if data is not None else load_data(cfg.data)
    models = _Models.load(cfg, spec, data, missing_weights_ok)
    batch = _dry_batch(data)
    objective, teacher_layers = _objective(cfg, spec, data, models, batch)
    augment = _augmentation(cfg, data, batch)
    plan, cache = _teacher_cache(cfg, data, models.teacher, teacher_layers, objective, augment)
    ctx = SchemeContext(
        student=models.student,
        objective=objective,
        data=data,
        args=dict(cfg.scheme.args),
        teacher=models.teacher,
        teachers=models.teachers,
        teacher_classes=[t.classes for t in cfg.teachers],
        peers=models.peers,
        augment=augment,
        seed=cfg.train.seed,
        teacher_cache=cache,
    )
    try:
        scheme = spec.build(ctx)
    except (ValueError, RuntimeError, TypeError) as e:
        raise ConfigError(f"scheme {cfg.scheme.name!r}: {str(e).splitlines()[0]}") from None
    hooks = _step_hooks(cfg, models.student)
    return Built(cfg, data, models.student, models.teacher, objective, scheme, augment, plan, hooks)


def _buildable(cfg: ExperimentConfig) -> Any:
    """The scheme's spec, once the names check out and the scheme builds in one run."""
    problems = name_problems(cfg)
    if problems:
        raise ConfigError("config has problems:\n  " + "\n  ".join(problems))
    spec = SCHEMES[cfg.scheme.name]
    if spec.is_pipeline:
        raise ConfigError(
            f"scheme {cfg.scheme.name!r} runs in stages; start it with distill run "
            f"(or distill.app.run.run_experiment), which trains each stage in turn"
        )
    check_monitor(cfg.scheme.name, spec, cfg.train.monitor)
    return spec


@dataclass
class _Models:
    student: nn.Module
    teacher: nn.Module | None
    teachers: list[nn.Module]
    peers: list[nn.Module]

    @classmethod
    def load(cls, cfg: ExperimentConfig, spec: Any, data: DataSplits, ok: bool) -> _Models:
        """Student, then teacher, teachers and peers (this order: their init is seeded)."""

        def model(m: ModelConfig, role: str) -> nn.Module:
            return load_model(m, data, role, missing_weights_ok=ok)

        student = model(cfg.student, "student")
        teacher = None
        if cfg.teacher is not None and teacher_from_source(cfg, spec):
            print(
                "scheme.args: the teacher's outputs come from a cache or a server, so the "
                "teacher section is not loaded (and the teacher's own test metrics are left "
                "out); remove the section to silence this",
                file=sys.stderr,
            )
        elif cfg.teacher is not None and spec.teacher in ("required", "optional"):
            teacher = model(cfg.teacher, "teacher")
        teachers = [model(t, f"teachers.{i}") for i, t in enumerate(cfg.teachers)]
        peers = [model(p, f"peers.{i}") for i, p in enumerate(cfg.peers)]
        return cls(student, teacher, teachers, peers)


def _objective(
    cfg: ExperimentConfig, spec: Any, data: DataSplits, models: _Models, batch: dict
) -> tuple[Objective, list[str]]:
    """The terms sized from a dry forward of both models (their tapped shapes), the class
    counts checked; returns the objective and the teacher's tapped layers."""
    student, teacher, offline = models.student, models.teacher, spec.taps_teacher
    student_layers = tapped_layers(t.student for t in cfg.objective.terms)
    teacher_layers = tapped_layers(t.teacher for t in cfg.objective.terms)
    student_k = dry_knowledge(student, student_layers, batch, f"student {cfg.student.name}")
    teacher_k = None
    if teacher is not None and offline:
        teacher_batch = {**batch, "input": teacher_input(batch)}
        teacher_k = dry_knowledge(
            teacher, teacher_layers, teacher_batch, f"teacher {cfg.teacher.name}"
        )
    # sentence encoders output embeddings, denoisers images, detectors boxes: not classes
    if spec.predicts_classes:
        logits_read = not offline or any(
            needs_teacher(t.loss)
            and "logits" in ([t.teacher] if isinstance(t.teacher, str) else t.teacher)
            for t in cfg.objective.terms
        )
        check_classes(
            data, student_k, teacher_k, padded=spec.family == "llm", teacher_logits_read=logits_read
        )
    if teacher_k is not None and config_reads_input_grad(cfg):
        add_input_grads(
            student, teacher, student_layers, teacher_layers, batch, student_k, teacher_k
        )
    terms = build_terms(
        cfg, student_k, teacher_k, batch, None if is_stream(data.train) else len(data.train)
    )
    objective = Objective(
        terms, task_weight=cfg.objective.task_weight, label_smoothing=cfg.objective.label_smoothing
    )
    targets = getattr(data.train, "targets", None)
    if isinstance(targets, Tensor) and not targets.is_floating_point() and targets.dim() == 1:
        objective.all_labelled = bool((targets >= 0).all())
    return objective, teacher_layers


def _augmentation(cfg: ExperimentConfig, data: DataSplits, batch: dict) -> Callable | None:
    """`data.augment` built and tried on the dry batch (bad args fail here, not mid-run)."""
    augment = build_augmentation([(a.name, a.args) for a in cfg.data.augment])
    if augment is not None:
        try:
            augment(batch["input"].clone(), torch.Generator().manual_seed(0))
        except (TypeError, ValueError, RuntimeError) as e:
            raise ConfigError(
                f"data.augment: {str(e).splitlines()[0]}; see distill.data.augment for the args of each"
            ) from None
    for i, aug in enumerate(cfg.data.augment):
        problem = augmentation_problem(aug.name, data.input_shape)
        if problem is not None:
            raise ConfigError(f"data.augment.{i}: {problem}")
    return augment


def _teacher_cache(
    cfg: ExperimentConfig,
    data: DataSplits,
    teacher: nn.Module | None,
    teacher_layers: list[str],
    objective: Objective,
    augment: Callable | None,
) -> tuple[CachePlan, TeacherCache | None]:
    """Whether the teacher's outputs are cached ahead of training (and the cache if so)."""
    disk_random = bool(getattr(data.train, "random", False))
    plan = plan_cache(
        cfg.train.cache,
        scheme=cfg.scheme.name,
        # the teacher reads the paired modality, which augmentation does not touch
        augmented=(augment is not None and cfg.data.paired is None) or disk_random,
        # random per-sample transforms of data read from disk are a pure function of
        # (seed, epoch, sample): cacheable epoch by epoch, unless a batch augmentation adds draws
        epoch_views=disk_random and augment is None,
        streamed=is_stream(data.train),
        reads_input_grad=config_reads_input_grad(cfg),
        sharded_teacher=cfg.train.distributed.teacher == "shard" and env_world_size() > 1,
    )
    if not plan.use:
        return plan, None
    cache = TeacherCache(
        teacher,
        data.train,
        teacher_layers,
        settings=cfg.train.cache,
        augment=augment,
        augment_spec=[a.model_dump(mode="json") for a in cfg.data.augment],
        seed=cfg.train.seed,
        epochs=cfg.train.epochs,
        workers=cfg.train.workers,
        log=_log if cfg.train.progress else lambda _m: None,
        warn=_log,  # a damaged cache is said whatever train.progress is
        progress=cfg.train.progress,
    )
    for key, fn in objective.prepared_teacher().items():  # e.g. KD's soft targets, once
        cache.derive(key, fn)
    return plan, cache


def _step_hooks(cfg: ExperimentConfig, student: nn.Module) -> list[Any]:
    """What runs after every optimizer step besides the scheme: pruning masks."""
    if cfg.student.sparsity is None:
        return []
    from distill.compress.prune import SparsityKeeper

    if cfg.train.distributed.student == "shard":
        raise ConfigError(
            "student.sparsity prunes whole weight tensors and cannot run on a sharded "
            "student; set train.distributed.student: replicate"
        )
    return [SparsityKeeper(student, cfg.student.sparsity)]


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def export_info(cfg: ExperimentConfig) -> dict[str, Any]:
    """What a weights file needs to rebuild its model: stored in the file's metadata."""
    info = {
        "model": cfg.student.name,
        "args": json.loads(json.dumps(cfg.student.args)),
        "dataset": cfg.data.name,
    }
    if cfg.student.peft is not None and cfg.student.weights is not None:
        info["peft_base"] = cfg.student.weights  # best weights keep only the adapter
    return info
