"""Where a `Trainer`'s models live and how they run: FSDP shards under torchrun,
channels-last layout, torch.compile."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from distill.core import distributed
from distill.core.errors import ConfigError


def shard_models(t: Any) -> None:
    """Under torchrun, shard the trained and/or frozen models with FSDP when asked to."""
    placement = t.settings.distributed
    t.sharded = distributed.active() and placement.student == "shard"
    shard_frozen = distributed.active() and placement.teacher == "shard"
    if not (t.sharded or shard_frozen):
        return
    if t.sharded and t.settings.precision == "fp16":
        raise ConfigError(
            "train.distributed.student shard with precision fp16 is not supported (the "
            "loss scaler does not handle sharded gradients); use precision bf16"
        )
    frozen = list(t.contract.frozen)
    if (
        t.contract.after_optimizer_step is not None
        and frozen
        and placement.student != placement.teacher
    ):
        raise ConfigError(
            "this scheme updates a frozen copy of the student from its weights after every "
            "step (an EMA teacher), so both must be laid out alike: set "
            "train.distributed.student and train.distributed.teacher to the same value"
        )
    trained = {id(p) for p in t.scheme.modules.parameters()}
    if shard_frozen and any(id(p) in trained for m in frozen for p in m.parameters()):
        raise ConfigError(
            "a frozen model shares parameters with a trained one, so it cannot be sharded "
            "on its own; set train.distributed.teacher to replicate"
        )
    if t.sharded:
        distributed.shard_module(t.scheme.modules, t.device)
    if shard_frozen:
        for m in frozen:
            if any(True for _ in m.parameters()):
                distributed.shard_module(m, t.device)


def models_of(t: Any) -> list[nn.Module]:
    """The trained models (not the objective's loss modules) and the frozen ones."""
    trained = [m for k, m in t.scheme.modules.items() if k != "objective"]
    return [*trained, *t.contract.frozen]


def speed_up(t: Any) -> None:
    """channels_last memory layout and torch.compile, when the config asks for them."""
    s = t.settings
    if s.channels_last:
        for m in models_of(t):
            if any(p.dim() == 4 for p in m.parameters()):
                m.to(memory_format=torch.channels_last)
    c = s.compile
    if not c.enabled:
        return
    if t.sharded:
        raise ConfigError(
            "train.compile with train.distributed.student shard is not supported; turn "
            "one of them off"
        )
    for m in models_of(t):
        if any(True for _ in m.parameters()):
            m.compile(
                backend=c.backend,
                mode=None if c.mode == "default" else c.mode,
                dynamic=c.dynamic,
            )


def autocast(t: Any) -> Any:
    """bf16 / fp16 autocast on the trainer's device, as `train.precision` asks."""
    if t.settings.precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if t.settings.precision == "bf16" else torch.float16
    return torch.autocast(t.device.type, dtype=dtype)
