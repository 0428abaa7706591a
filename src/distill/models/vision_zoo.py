"""Models from timm and torchvision by name: `student: {name: timm, args: {model: resnet18}}`.

Both libraries are optional; each is imported only when such a model is built, and a
missing one is named with the pip command. The classifier is sized to the data's classes
and the first layer to its channels (timm's `in_chans`; torchvision models take 3-channel
images). Pretrained weights are never downloaded: give a local file with distill's
`weights:` (a safetensors file, a torch.save state dict, or a run dir), or timm's
`checkpoint_path`.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from torch import nn

from distill.core.errors import ConfigError


def _library(name: str, extra: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError(
            f"this model needs {name}, which is not installed: pip install torch==<your torch> "
            f"{extra} (pinning torch keeps pip from replacing it)"
        ) from None


def timm_model(
    input_shape: Sequence[int], num_classes: int, *, model: str, **args: Any
) -> nn.Module:
    """`timm.create_model(model, num_classes=..., in_chans=C, pretrained=False, **args)`."""
    timm = _library("timm", "timm")
    if args.pop("pretrained", False):
        raise ConfigError(
            "timm: pretrained: true would download weights; give a local file with "
            "checkpoint_path: (timm) or weights: (distill) instead"
        )
    if len(input_shape) != 3:
        raise ConfigError(
            f"timm models read (C, H, W) images; the data's inputs are {tuple(input_shape)}"
        )
    try:
        return timm.create_model(
            model, pretrained=False, num_classes=num_classes, in_chans=input_shape[0], **args
        )
    except (RuntimeError, ValueError, TypeError) as e:
        raise ConfigError(f"timm model {model!r}: {e}") from None


def torchvision_model(
    input_shape: Sequence[int], num_classes: int, *, model: str, **args: Any
) -> nn.Module:
    """`torchvision.models.get_model(model, weights=None, num_classes=..., **args)`."""
    tv = _library("torchvision", "torchvision")
    if args.pop("weights", None) is not None:
        raise ConfigError(
            "torchvision: weights would download them; give a local file with distill's "
            "weights: (beside name:, not in args) instead"
        )
    if len(input_shape) != 3 or input_shape[0] != 3:
        raise ConfigError(
            f"torchvision classifiers read 3-channel images; the data's inputs are "
            f"{tuple(input_shape)} (load the images with mode: RGB)"
        )
    try:
        return tv.models.get_model(model, weights=None, num_classes=num_classes, **args)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"torchvision model {model!r}: {e}") from None
