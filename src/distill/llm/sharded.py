"""The teacher of `DistillationTrainer` placed for multi-process training.

A frozen teacher needs no gradients, no optimizer state and no DDP wrapper; what it needs
under sharded training is not to be held whole by every process when the student is not:

- **FSDP** (the student sharded by Accelerate, or `shard_teacher=True`): the teacher is
  sharded with FSDP2 (`torch.distributed.fsdp.fully_shard`, through
  `distill.core.distributed.shard_module`) over all processes: each holds 1/N of its
  weights and gathers a layer's weights only for that layer's forward. Accelerate's own
  `prepare_model(..., evaluation_mode=True)` leaves a model unwrapped, so the sharding is
  done here. It works on any backend, CPU (gloo) included.
- **DeepSpeed ZeRO-3**: the teacher goes through `deepspeed.initialize` with the run's
  DeepSpeed config, without optimizer or scheduler (the engine's inference path): its
  parameters are partitioned like the student's. At ZeRO stage 1 or 2 only optimizer state
  is partitioned, which a frozen teacher has none of, so it is a plain replica.
- otherwise a replica on the process's device.
"""

from __future__ import annotations

import copy
from typing import Any

import torch


def deepspeed_inference_config(config: dict[str, Any]) -> dict[str, Any]:
    """The run's DeepSpeed config for a frozen model: its ZeRO stage 3 and precision kept,
    optimizer and scheduler dropped (nothing to step), batch sizes kept so that the engine
    accepts the config."""
    out = copy.deepcopy(config)
    for key in ("optimizer", "scheduler"):
        out.pop(key, None)
    zero = out.setdefault("zero_optimization", {})
    if zero.get("stage") != 3:
        zero["stage"] = 0  # stages 1-2 partition optimizer state only: nothing to partition
    zero.pop("offload_optimizer", None)
    return out


def prepare_teacher(
    teacher: torch.nn.Module, accelerator: Any, device: torch.device, shard: bool
) -> torch.nn.Module:
    """The teacher placed as described in the module docstring."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        plugin = accelerator.state.deepspeed_plugin
        if plugin.zero_stage == 3:
            import deepspeed

            config = deepspeed_inference_config(plugin.deepspeed_config)
            engine, *_ = deepspeed.initialize(model=teacher, config=config)
            engine.eval()
            return engine
    if shard and accelerator.num_processes > 1:
        from distill.core.distributed import shard_module

        teacher.to(device)
        shard_module(teacher, device)
        return teacher
    return teacher.to(device)
