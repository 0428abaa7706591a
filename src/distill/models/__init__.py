"""Model name table and the builder that also accepts user code as 'package.module:attr'."""

from __future__ import annotations

import inspect
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
    try:
        model = fn(**args)
    except TypeError as e:
        valid = [p for p in params if p not in ("self", "input_shape", "num_classes")]
        raise ConfigError(f"model {name!r}: {e}; its arguments are {valid}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


__all__ = ["MODELS", "MLP", "ConvNet", "ResNet", "Transformer", "build_model", "resolve_reference"]
