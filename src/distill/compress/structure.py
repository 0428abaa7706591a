"""Model surgery that survives a save and a load.

Compression changes a model's shape: structured pruning narrows layers, low-rank
factorisation splits a Linear in two, quantization-aware training wraps layers with fake
quantizers. The model's builder (`convnet`, a user's class, ...) knows none of this, so each
change is recorded on the model (`distill_structure`, a list of JSON-able ops) and written
into every weights file as `info["structure"]`. Loading replays the ops on a freshly built
model before the weights go in, so a compressed model loads wherever a plain one does
(a teacher's weights, `distill eval`, the report, a later stage).
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

ATTR = "distill_structure"

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def structure_of(model: nn.Module) -> list[dict[str, Any]]:
    """The ops applied to `model` since it was built (empty for a plain model)."""
    return copy.deepcopy(getattr(model, ATTR, []))


def record(model: nn.Module, op: dict[str, Any]) -> None:
    # object.__setattr__: a plain attribute, not registered as state or a submodule
    object.__setattr__(model, ATTR, [*getattr(model, ATTR, []), op])


def resized(module: nn.Module, *, inputs: int | None = None, outputs: int | None = None):
    """A fresh copy of a Conv, Linear or BatchNorm layer with other channel counts
    (its weights are not copied: the caller fills them)."""
    if isinstance(module, nn.Linear):
        new = nn.Linear(
            inputs or module.in_features,
            outputs or module.out_features,
            bias=module.bias is not None,
        )
    elif isinstance(module, CONV):
        if module.groups != 1:
            raise ValueError("grouped convolutions cannot be resized")
        new = type(module)(
            inputs or module.in_channels,
            outputs or module.out_channels,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
        )
    elif isinstance(module, BN):
        new = type(module)(
            outputs or module.num_features,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
        )
    else:
        raise ValueError(f"cannot resize a {type(module).__name__}")
    new.train(module.training)
    ref = next(module.parameters(), None)
    return new if ref is None else new.to(ref.device)
