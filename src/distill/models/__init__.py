"""Model name table and the builder that also accepts user code as 'package.module:attr'."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Sequence

from torch import nn

from distill.core.errors import ConfigError
from distill.core.registry import lookup, resolve, resolve_reference
from distill.models.zoo import MLP, ConvNet, ResNet, Transformer

# name -> "module:attr" of the builder, imported when first built: the domains' models
# (detection, diffusion, language models, graphs, encoders) are named here, never imported
MODELS: dict[str, str] = {
    "mlp": "distill.models.zoo:MLP",
    "convnet": "distill.models.zoo:ConvNet",
    "resnet": "distill.models.zoo:ResNet",
    "transformer": "distill.models.zoo:Transformer",
    "detector": "distill.dense.models:Detector",
    "segnet": "distill.dense.models:SegNet",
    "gnn": "distill.paradigms.graph:GNN",
    "node_mlp": "distill.paradigms.graph:NodeMLP",
    "mlp_denoiser": "distill.diffusion.core:MLPDenoiser",
    "conv_denoiser": "distill.diffusion.core:ConvDenoiser",
    "hf_causal_lm": "distill.llm.models:hf_causal_lm",
    "hf_pretrained": "distill.llm.models:hf_pretrained",
    "minilm_teacher": "distill.models.encoders:minilm_teacher",
    "sentence_encoder": "distill.models.encoders:sentence_encoder",
    "pretrained_encoder": "distill.models.encoders:pretrained_encoder",
    "timm": "distill.models.vision_zoo:timm_model",  # timm is imported only when used
    "torchvision": "distill.models.vision_zoo:torchvision_model",
    "hf_model": "distill.models.hf_auto:hf_model",  # transformers is imported only when used
    "hf_masked_lm": "distill.llm.mlm:hf_masked_lm",
}


def model_builder(name: str) -> Callable[..., nn.Module]:
    """The callable behind a model name: the table's entry, or the user's `module:attr`."""
    if ":" not in name and name in MODELS:
        return resolve(MODELS[name])
    return lookup("model", name, MODELS)


def _check_arg_types(name: str, fn: Callable[..., nn.Module], args: dict) -> None:
    """Each argument against the builder's own type hints, so `hidden: big` is named as a
    wrong value instead of failing deep inside torch. Builders without hints (a user's
    function) are called as they are."""
    try:
        hints = typing.get_type_hints(fn.__init__ if isinstance(fn, type) else fn)
    except Exception:  # unresolvable hints (forward references in user code): no check
        return
    from pydantic import TypeAdapter, ValidationError

    for key, value in args.items():
        hint = hints.get(key)
        if hint is None or key in ("input_shape", "num_classes"):
            continue
        try:
            TypeAdapter(hint).validate_python(value, strict=isinstance(value, str))
        except ValidationError as e:
            reason = e.errors()[0]["msg"] if e.errors() else str(e)
            raise ConfigError(
                f"model {name!r}: argument {key}={value!r} is not a valid "
                f"{_type_name(hint)} ({reason}); set it as in: distill layers {name} "
                f"--args '{{\"{key}\": ...}}'"
            ) from None
        except Exception:  # a hint pydantic cannot check (a torch type): left to the builder
            continue


def _type_name(hint: object) -> str:
    if typing.get_args(hint):  # Sequence[int], int | None: the whole expression
        return str(hint).replace("typing.", "").replace("collections.abc.", "")
    return getattr(hint, "__name__", str(hint))


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, args: dict | None = None
) -> nn.Module:
    """Build a model from the table or from 'package.module:attr' with keyword `args`.

    `input_shape` and `num_classes` are passed when the builder's signature accepts them.
    """
    args = dict(args or {})
    fn = model_builder(name)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    for key, value in (("input_shape", tuple(input_shape)), ("num_classes", num_classes)):
        if key in params and key not in args:
            args[key] = value
    valid = [p for p in params if p not in ("self", "input_shape", "num_classes")]
    _check_arg_types(name, fn, args)
    try:
        model = fn(**args)
    except TypeError as e:
        raise ConfigError(f"model {name!r}: {e}; its arguments are {valid}") from None
    except (ValueError, RuntimeError) as e:  # a value the builder could not use
        given = {k: v for k, v in args.items() if k not in ("input_shape", "num_classes")}
        raise ConfigError(
            f"model {name!r} could not be built with args {given}: {str(e).splitlines()[0]}; "
            f"check the values (its arguments are {valid})"
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


__all__ = ["MODELS", "MLP", "ConvNet", "ResNet", "Transformer", "build_model", "resolve_reference"]
