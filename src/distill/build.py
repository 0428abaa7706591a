"""Config -> objects: data, models, objective and scheme; and the checks `distill validate` runs.

Every object built here can be built by hand in Python; this file only wires names to them.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill.cache import CachePlan, TeacherCache, plan_cache
from distill.checkpoint import weights_info
from distill.config import DataConfig, ExperimentConfig, ModelConfig, TermConfig
from distill.data import (
    AUGMENTATIONS,
    DATASETS,
    DataSplits,
    augmentation_problem,
    build_augmentation,
    load_batch,
    load_dataset,
    teacher_input,
)
from distill.data.loading import is_stream
from distill.distributed import env_world_size
from distill.errors import CheckpointError, ConfigError, unknown_name
from distill.losses import LOSSES
from distill.models import MODELS, build_model
from distill.models.weights import restore_weights
from distill.objective import ADAPTERS, Objective, Schedule, Term, reads_input_grad, tapped_layers
from distill.registry import lookup
from distill.schemes import SCHEMES, SchemeContext, parse_args
from distill.schemes.table import with_capability
from distill.taps import INPUT_GRAD, Knowledge, Tap, with_input_grad
from distill.trainer import seed_everything


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


def resolve_loss(name: str) -> Callable[..., Tensor]:
    """A loss function, or a loss module class (built from the two tensor shapes)."""
    if ":" in name:
        return lookup("loss", name, {})
    table = {k: v.fn for k, v in LOSSES.items()}
    return lookup("loss", name, table, "list them with: distill methods")


def is_module_loss(fn: object) -> bool:
    return isinstance(fn, type) and issubclass(fn, nn.Module)


# Builders that load trained weights themselves (a teacher needs no weights: file then)
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
    from distill.trackers import missing

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
    if cfg.data.paired is not None and _reads_input_grad(cfg):
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
        if _reads_input_grad(cfg):
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


def _teacher_problems(cfg: ExperimentConfig, spec: Any) -> list[str]:
    """What the scheme's use of a teacher (none, required, optional, teachers) asks of the
    config's teacher and teachers sections."""
    problems, name = [], cfg.scheme.name
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
    if not _has_adapter(model):
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


def _has_adapter(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def with_peft(model: nn.Module, spec: ModelConfig, role: str) -> nn.Module:
    """`model` inside the PEFT adapter `spec.peft` describes (a LoRA config), or as it is."""
    if spec.peft is None:
        return model
    try:
        from peft import LoraConfig
    except ImportError:
        raise ConfigError(f"{role}.peft needs the peft package: pip install peft") from None
    from distill.llm.hf_trainer import with_adapter

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


@torch.no_grad()
def _dry_knowledge(
    model: nn.Module, layers: list[str], batch: dict[str, Tensor], role: str
) -> Knowledge:
    was_training = model.training
    model.eval()
    with Tap(model, layers, role) as tap:
        try:
            knowledge = tap.run(batch["input"])
        except (RuntimeError, ValueError, TypeError) as e:
            raise ConfigError(
                f"the {role} failed on a batch of shape {tuple(batch['input'].shape)}: "
                f"{str(e).splitlines()[0]}. Check its args against the data (inputs "
                f"{tuple(batch['input'].shape[1:])} per sample); `distill layers` shows what it expects"
            ) from None
        finally:
            model.train(was_training)
    return knowledge


def _reads_input_grad(cfg: ExperimentConfig) -> bool:
    return reads_input_grad(w for t in cfg.objective.terms for w in (t.student, t.teacher))


def _add_input_grads(
    student: nn.Module,
    teacher: nn.Module,
    student_layers: list[str],
    teacher_layers: list[str],
    batch: dict[str, Tensor],
    student_k: Knowledge,
    teacher_k: Knowledge,
) -> None:
    """Give the dry knowledge an input gradient too, so terms reading it can be checked."""
    with (
        Tap(teacher, teacher_layers, "teacher") as t_tap,
        Tap(student, student_layers, "student") as s_tap,
    ):
        with torch.no_grad():
            labels = torch.where(
                batch["target"] >= 0, batch["target"], teacher(batch["input"]).argmax(-1)
            )
        teacher_k.feats[INPUT_GRAD] = with_input_grad(
            t_tap, batch["input"], labels, create_graph=False
        ).feats[INPUT_GRAD]
        student_k.feats[INPUT_GRAD] = with_input_grad(
            s_tap, batch["input"], labels, create_graph=False
        ).feats[INPUT_GRAD]


def check_classes(
    data: DataSplits,
    student_k: Knowledge,
    teacher_k: Knowledge | None,
    padded: bool = False,
    teacher_logits_read: bool = True,
) -> None:
    """Student, teacher and data must agree on the number of classes (the last logit dim).
    `padded` (language models) allows more logits than tokens: padding rows are cut off.
    A teacher whose logits no term reads (cross-task: it teaches through its features) may
    predict another label space."""
    n_student = student_k.logits.shape[-1]
    if padded and n_student >= data.num_classes:
        return
    if n_student != data.num_classes:
        raise ConfigError(
            f"the student predicts {n_student} classes but the data has {data.num_classes}; "
            f"build it with num_classes={data.num_classes}"
        )
    if teacher_k is not None and teacher_k.logits.shape[-1] != n_student and teacher_logits_read:
        raise ConfigError(
            f"the teacher predicts {teacher_k.logits.shape[-1]} classes and the student {n_student}; "
            f"response losses compare them class by class, so both need the data's "
            f"{data.num_classes} classes. A teacher trained on another label space (cross-task) "
            f"can teach through its features: give every term a teacher layer and an adapter"
        )


def _check_loss_args(fn: Callable, term: TermConfig, where: str) -> None:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    valid = [
        n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n not in ("targets", "index")
    ]
    for arg in term.args:
        if arg not in valid:
            raise ConfigError(
                f"{where}.args: loss {term.loss!r} has no argument {arg!r}; its arguments are {valid}"
            )


def build_terms(
    cfg: ExperimentConfig,
    student_k: Knowledge,
    teacher_k: Knowledge | None,
    batch: dict[str, Tensor],
    num_samples: int | None,
) -> list[Term]:
    """Terms with adapters sized from the tensors of a dry forward pass.

    Each term is tried on the dry tensors; every failing term is reported in one error.
    """
    terms, problems = [], []
    for i, tc in enumerate(cfg.objective.terms):
        try:
            terms.append(
                _build_term(f"objective.terms.{i}", tc, student_k, teacher_k, batch, num_samples)
            )
        except ConfigError as e:
            problems.append(str(e))
    if problems:
        raise ConfigError("\n".join(problems))
    return terms


def loss_args(where: str, args: dict[str, Any]) -> dict[str, Any]:
    """Config loss args; a mapping with a 'schedule' key becomes a `Schedule`:

    temperature: {schedule: cosine, start: 8.0, end: 2.0, steps: 5000}
    """
    out = {}
    for key, value in args.items():
        if isinstance(value, dict) and "schedule" in value:
            extra = set(value) - {"schedule", "start", "end", "steps"}
            if extra or "end" not in value or "steps" not in value:
                raise ConfigError(
                    f"{where}.args.{key}: a scheduled value needs schedule (linear|cosine), start, "
                    f"end and steps, got {sorted(value)}"
                )
            try:
                value = Schedule(
                    float(value["end"]),
                    int(value["steps"]),
                    value["schedule"],
                    float(value.get("start", 0.0)),
                )
            except ValueError as e:
                raise ConfigError(f"{where}.args.{key}: {e}") from None
        out[key] = value
    return out


def needs_teacher(loss: str) -> bool:
    return LOSSES[loss].needs_teacher if loss in LOSSES else True


@torch.no_grad()
def _adapted(adapter: nn.Module | None, x: Tensor) -> Tensor:
    return adapter(x) if adapter is not None else x


def _shapes(x: Tensor | tuple[Tensor, ...]) -> tuple:
    """A tensor's shape, or a tuple of shapes for a term that reads a list of layers."""
    return tuple(x.shape) if isinstance(x, Tensor) else tuple(tuple(t.shape) for t in x)


def _shape(x: Tensor | tuple[Tensor, ...]) -> str:
    return (
        str(tuple(x.shape)) if isinstance(x, Tensor) else ", ".join(str(tuple(t.shape)) for t in x)
    )


def _term_adapter(where: str, tc: TermConfig, s_tensor: Any, t_tensor: Any) -> Any:
    """The trained map from the student's tensor to the teacher's shape, when asked for."""
    if tc.adapter is not None and not isinstance(s_tensor, Tensor):
        raise ConfigError(
            f"{where}.adapter: an adapter maps one tensor; this term reads a list of layers"
        )
    if tc.adapter is None or t_tensor is None:
        return None
    # with a list on the teacher side (a feature and the teacher's own tensors, e.g.
    # [bn, bn.weight, bn.bias]) the adapter maps the student to the first of them
    target = t_tensor if isinstance(t_tensor, Tensor) else t_tensor[0]
    try:
        return ADAPTERS[tc.adapter](tuple(s_tensor.shape), tuple(target.shape), resize=tc.resize)
    except ValueError as e:
        raise ConfigError(f"{where}.adapter: {e}") from None


def _module_loss(
    where: str,
    tc: TermConfig,
    cls: Any,
    args: dict[str, Any],
    adapter: Any,
    s_tensor: Any,
    t_tensor: Any,
    num_samples: int | None,
) -> Any:
    """A loss with parameters (projection heads, memory banks), built from the shapes."""
    if t_tensor is None:
        raise ConfigError(
            f"{where}: loss {tc.loss!r} is built from teacher shapes and needs a teacher"
        )
    if "num_samples" in inspect.signature(cls).parameters:  # memory banks: a row per sample
        if num_samples is None:
            raise ConfigError(
                f"{where}: loss {tc.loss!r} keeps a memory bank with a row per training "
                f"sample, and streamed data has no sample count or stable sample ids; load "
                f"the data map-style (streaming: false)"
            )
        args.setdefault("num_samples", num_samples)
    try:
        return cls(_shapes(_adapted(adapter, s_tensor)), _shapes(t_tensor), **args)
    except ValueError as e:
        raise ConfigError(f"{where} ({tc.loss}): {e}") from None


def _build_term(
    where: str,
    tc: TermConfig,
    student_k: Knowledge,
    teacher_k: Knowledge | None,
    batch: dict[str, Tensor],
    num_samples: int | None,
) -> Term:
    fn = resolve_loss(tc.loss)
    _check_loss_args(fn, tc, where)
    s_tensor = student_k.get(tc.student)
    t_tensor = teacher_k.get(tc.teacher) if teacher_k is not None else None
    adapter = _term_adapter(where, tc, s_tensor, t_tensor)
    args = loss_args(where, tc.args)
    if is_module_loss(fn):  # a loss with parameters, sized from the dry-forward shapes
        fn, args = _module_loss(where, tc, fn, args, adapter, s_tensor, t_tensor, num_samples), {}
    term = Term(
        tc.name or tc.loss,
        fn,
        weight=Schedule(tc.weight, tc.warmup_steps, tc.ramp, delay=tc.start_step),
        student=tc.student,
        teacher=tc.teacher,
        adapter=adapter,
        loss_args=args,
        needs_teacher=needs_teacher(tc.loss),
        prepared=LOSSES[tc.loss].prepared if tc.loss in LOSSES else None,
    )
    if teacher_k is not None or not term.needs_teacher:
        try:
            term.eval()  # a dry call must not update memory banks or queues
            with torch.no_grad():
                term(student_k, teacher_k, batch, 0)
            term.train()
        except (ValueError, RuntimeError, TypeError) as e:
            shapes = f"student {tc.student!r} {_shape(s_tensor)}"
            if t_tensor is not None:
                shapes += f" vs teacher {tc.teacher!r} {_shape(t_tensor)}"
            raise ConfigError(f"{where} ({tc.loss}: {shapes}): {e}") from None
    return term


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
            f"(or distill.run.run_experiment), which trains each stage in turn"
        )
    _check_monitor(cfg.scheme.name, spec, cfg.train.monitor)
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
        if cfg.teacher is not None and spec.teacher in ("required", "optional"):
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
    student_k = _dry_knowledge(student, student_layers, batch, f"student {cfg.student.name}")
    teacher_k = None
    if teacher is not None and offline:
        teacher_batch = {**batch, "input": teacher_input(batch)}
        teacher_k = _dry_knowledge(
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
    if teacher_k is not None and _reads_input_grad(cfg):
        _add_input_grads(
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
        reads_input_grad=_reads_input_grad(cfg),
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


def _check_monitor(name: str, spec: Any, monitor: str) -> None:
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
