"""The optimizer, its kernels and parameter groups, the LR schedule, and the device."""

from __future__ import annotations

import math

import torch

from distill.core.errors import ConfigError
from distill.core.settings import ScheduleSettings, TrainSettings
from distill.schemes.contract import Contract


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device is {name!r} but no CUDA device is available; use 'cpu' or 'auto'"
        )
    return torch.device(name)


def lr_factor(step: int, total_steps: int, schedule: ScheduleSettings) -> float:
    """Multiplier of the base LR at optimizer step `step` (0-based) out of `total_steps`."""
    if step < schedule.warmup_steps:
        return (step + 1) / schedule.warmup_steps
    if schedule.name == "constant":
        return 1.0
    if schedule.name == "step":
        frac = step / max(total_steps, 1)
        return schedule.gamma ** sum(frac >= m for m in schedule.milestones)
    span = max(total_steps - schedule.warmup_steps, 1)
    progress = min((step - schedule.warmup_steps) / span, 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return schedule.min_lr_ratio + (1.0 - schedule.min_lr_ratio) * cosine


def lr_groups(contract: Contract, params: list[torch.nn.Parameter]) -> list[dict] | None:
    """Parameter groups for a scheme's `lr_scales` ({module name in scheme.modules: factor of
    the learning rate}, e.g. a generator that must move slower than the student); None when
    it has none. Parameters keep their order, so checkpoints line up."""
    scales, scheme = contract.lr_scales, contract.scheme
    if not scales:
        return None
    unknown = set(scales) - set(scheme.modules.keys())
    if unknown:
        raise ConfigError(f"lr_scales names modules the scheme does not train: {sorted(unknown)}")
    scale_of = {
        id(p): scales[k] for k, m in scheme.modules.items() if k in scales for p in m.parameters()
    }
    groups: list[dict] = []
    for p in params:
        scale = scale_of.get(id(p), 1.0)
        if not groups or groups[-1]["scale"] != scale:
            groups.append({"scale": scale, "params": []})
        groups[-1]["params"].append(p)
    return groups


def make_optimizer(
    params: list[torch.nn.Parameter],
    settings: TrainSettings,
    groups: list[dict] | None = None,
) -> torch.optim.Optimizer:
    """The configured optimizer over `params`; `groups` ([{"scale": f, "params": [...]}])
    give parts of them the learning rate times f."""
    opt = settings.optimizer
    if groups is not None:
        params = [{"params": g["params"], "lr": opt.lr * g["scale"]} for g in groups]
    flat = [p for g in groups for p in g["params"]] if groups is not None else params
    if opt.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=opt.lr,
            momentum=opt.momentum,
            nesterov=opt.nesterov,
            weight_decay=opt.weight_decay,
        )
    cls = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
    return cls(
        params,
        lr=opt.lr,
        betas=opt.betas,
        weight_decay=opt.weight_decay,
        **kernel_args(flat, opt.impl),
    )


def kernel_args(params: list[torch.nn.Parameter], impl: str) -> dict[str, bool]:
    """Keyword arguments choosing the optimizer's kernels.

    'auto' takes the fused kernel (one per parameter for the whole update; on CPU about 4x
    faster than the per-tensor loop PyTorch defaults to there) when every parameter is a
    floating-point tensor on a CPU or CUDA device, else PyTorch's default."""
    if impl == "fused" or (
        impl == "auto"
        and params
        and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    ):
        return {"fused": True}
    if impl == "foreach":
        return {"foreach": True}
    if impl == "loop":
        return {"foreach": False}
    return {}
