"""Model name table and the builder that also accepts user code as 'package.module:attr'."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence

from torch import nn

from distill.errors import ConfigError, unknown_name
from distill.models.zoo import MLP, ConvNet, ResNet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "convnet": ConvNet,
    "resnet": ResNet,
}


def resolve_reference(ref: str, what: str) -> object:
    """Import 'package.module:attr' (the only way a config reaches user code)."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{what} reference {ref!r} must look like 'package.module:attr'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(
            f"{what} {ref!r}: cannot import {module_name!r} ({e}); is it on PYTHONPATH?"
        ) from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{what} {ref!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, args: dict | None = None
) -> nn.Module:
    """Build a model from the table or from 'package.module:attr' with keyword `args`.

    `input_shape` and `num_classes` are passed when the builder's signature accepts them.
    """
    args = dict(args or {})
    if ":" in name:
        fn = resolve_reference(name, "model")
    elif name in MODELS:
        fn = MODELS[name]
    else:
        raise ConfigError(
            unknown_name("model", name, MODELS, "or give your own as 'package.module:attr'")
        )
    if not callable(fn):
        raise ConfigError(f"model {name!r} is not callable")
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    for key, value in (("input_shape", tuple(input_shape)), ("num_classes", num_classes)):
        if key in params and key not in args:
            args[key] = value
    try:
        model = fn(**args)
    except TypeError as e:
        valid = [p for p in params if p not in ("self", "input_shape", "num_classes")]
        raise ConfigError(f"model {name!r}: {e}; its arguments are {valid}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


__all__ = ["MODELS", "MLP", "ConvNet", "ResNet", "build_model", "resolve_reference"]
