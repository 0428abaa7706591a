"""Typed settings for the training loop (also the `train:` section of a config)."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


def _numeric(annotation: Any) -> bool:
    """True when a field takes numbers (int/float, maybe in a tuple, list or Optional) but no
    booleans: there a YAML `true` is a slip, which pydantic would quietly read as 1."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, tuple, list):
        kinds = [a for a in args if a is not type(None) and a is not Ellipsis]
        return any(_numeric(a) for a in kinds) and bool not in kinds
    return annotation in (int, float)


class Strict(BaseModel):
    """Base for every settings model: unknown keys are errors, values are frozen, numbers
    are read strictly (a boolean, inf or NaN where a number goes is an error)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, value in data.items():
            field = cls.model_fields.get(name)
            if field is None or not _numeric(field.annotation):
                continue
            items = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, bool) for v in items):
                raise ValueError(
                    f"{name} must be a number, got {value!r}: YAML reads true/false/yes/no/on/off "
                    f"as booleans; write a number"
                )
        return data


class OptimizerSettings(Strict):
    name: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only
    nesterov: bool = False  # sgd only
    betas: tuple[float, float] = (0.9, 0.999)  # adam/adamw only
    # kernels: auto = fused where supported (float params on CPU/CUDA), else PyTorch's default
    impl: Literal["auto", "fused", "foreach", "loop"] = "auto"


class ScheduleSettings(Strict):
    """Learning-rate schedule over optimizer steps: linear warm-up, then constant/cosine/step."""

    name: Literal["constant", "cosine", "step"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)  # cosine ends at lr * min_lr_ratio
    milestones: tuple[float, ...] = (0.5, 0.75)  # step: fractions of training where lr *= gamma
    gamma: float = Field(0.1, gt=0)


class CacheSettings(Strict):
    """`train.cache`: whether and how a frozen teacher's outputs are cached."""

    mode: Literal["auto", "on", "off"] = "auto"  # auto: whenever the cached run is exact
    dir: str | None = None  # default: teacher/ in $DISTILL_CACHE_DIR (~/.cache/distill)
    views: int | None = None  # with augmentation: cache this many augmented views per sample
    topk: int | None = None  # keep only the top-k logits + the tail's mass (approximate)
    dtype: Literal["fp32", "fp16"] = "fp32"
    memory_mb: float = 2048  # entries up to this size are loaded into memory
    verify: bool = True  # checksum every array when an entry is opened


class CompileSettings(Strict):
    """`train.compile`: run the models' forward passes through `torch.compile`.

    Compiles the student, the other trained models and the frozen teachers in place (their
    weights and checkpoints are unchanged). The first steps pay for compilation (seconds to
    a minute); it pays off on long runs, above all on GPUs.
    """

    enabled: bool = False
    backend: str = "inductor"  # any torch.compile backend; 'eager'/'aot_eager' for debugging
    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = (
        "default"
    )
    dynamic: bool | None = None  # None: PyTorch decides (recompiles once on a new batch size)


class DistributedSettings(Strict):
    """`train.distributed`: how models are placed on the ranks of a torchrun launch.

    replicate: every rank holds the whole model (data parallel, gradients all-reduced).
    shard: FSDP; each rank holds 1/N of the parameters, gradients and optimizer state,
    for models too large for one device. Ignored in a single process.
    """

    student: Literal["replicate", "shard"] = "replicate"  # every trained module
    teacher: Literal["replicate", "shard"] = "replicate"  # every frozen model (teachers, EMA)


class TrainSettings(Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(1024, ge=1)
    optimizer: OptimizerSettings = OptimizerSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    grad_accum: int = Field(1, ge=1)
    clip_grad_norm: float | None = Field(None, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    # validate every N epochs (and after the last); the best weights are picked among them
    eval_every: int = Field(1, ge=1)
    # validate every N optimizer steps instead (and after the last epoch): for long epochs,
    # e.g. language models trained for one pass; epoch ends are then not validated
    eval_every_steps: int | None = Field(None, ge=1)
    # write the resume checkpoint every N epochs (and after the last); a crash resumes from
    # the latest one written
    checkpoint_every: int = Field(1, ge=1)
    checkpoint_every_steps: int | None = Field(None, ge=1)
    max_steps: int | None = Field(None, ge=1)  # stop (with a checkpoint) after this many steps
    early_stop_patience: int | None = Field(None, ge=1)  # epochs without a better val metric
    # the validation metric that picks the best weights (higher is better, nll: lower);
    # map / miou for detection / segmentation (scheme: dense)
    monitor: Literal["acc", "nll", "map", "miou"] = "acc"
    progress: bool = True
    # DataLoader worker processes collating batches ahead of the loop, for datasets without
    # a .batch() method (those are collated sample by sample); 0: in the loop's process
    workers: int = Field(0, ge=0)
    cache: CacheSettings = CacheSettings()  # the teacher-output cache (distill.loop.cache)
    distributed: DistributedSettings = DistributedSettings()  # under torchrun
    compile: CompileSettings = CompileSettings()
    # 4-D (image) models and inputs in NHWC memory layout: faster convolutions on GPUs with
    # tensor cores and on CPUs with oneDNN; a no-op for models without 4-D weights
    channels_last: bool = False
    # experiment trackers fed the metrics log's rows (distill.core.trackers); csv: metrics.csv,
    # always written
    report_to: list[Literal["csv", "tensorboard", "mlflow", "wandb"]] = []
    # the trackers also get the training losses and learning rate every N optimizer steps
    # (as steps/<name>: the mean over those steps); 0: per epoch only
    log_every_steps: int = Field(10, ge=0)


class QuantSettings(Strict):
    """Quantization-aware training of a model (`student.quantize`; distill.compress.quant)."""

    bits: int = Field(8, ge=2, le=8)  # weights
    act_bits: int | None = Field(8, ge=2, le=8)  # activations entering each layer; None: float
    momentum: float = Field(0.01, gt=0, le=1)  # EMA of the activation range
    skip: list[str] = []  # layers left in full precision


class SparsitySettings(Strict):
    """Unstructured magnitude pruning while a model trains (`student.sparsity`;
    distill.compress.prune)."""

    amount: float = Field(..., ge=0.0, lt=1.0)  # final fraction of zero weights
    scope: Literal["global", "layer"] = "global"
    start_step: int = Field(0, ge=0)  # first pruning step
    end_step: int | None = Field(None, ge=0)  # target reached here (None: at start_step)
    every: int = Field(50, ge=1)  # steps between pruning rounds on the way
    skip: list[str] = []  # modules never pruned (e.g. the classifier head)


# data.condense (the method is distill.paradigms.condense)
class NetSpec(Strict):
    name: str = "convnet"
    args: dict[str, Any] = {}


class CondenseSettings(Strict):
    """`data.condense`: replace the training split by a condensed set."""

    per_class: int = Field(10, ge=1)  # synthetic samples per class (IPC)
    method: Literal["dm", "random"] = "dm"
    iterations: int = Field(1000, ge=1)  # dm: updates of the synthetic set
    lr: float = Field(0.1, gt=0)  # dm: SGD step on the samples (momentum 0.5)
    batch_real: int = Field(64, ge=1)  # dm: real samples per class per iteration
    net: NetSpec | None = None  # dm: the embedding network (default: by input shape)
    layer: str = "head:input"  # dm: the tapped embedding (the classifier's input)
    seed: int = 0
