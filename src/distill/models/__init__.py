"""Model name table and the builder that also accepts user code as 'package.module:attr'."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

from torch import nn

from distill.dense.models import Detector, SegNet
from distill.diffusion.core import ConvDenoiser, MLPDenoiser
from distill.errors import ConfigError
from distill.llm.models import hf_causal_lm, hf_pretrained
from distill.models.encoders import minilm_teacher, pretrained_encoder, sentence_encoder
from distill.models.zoo import MLP, ConvNet, ResNet, Transformer
from distill.paradigms.graph import GNN, NodeMLP
from distill.registry import lookup, resolve_reference

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "convnet": ConvNet,
    "resnet": ResNet,
    "transformer": Transformer,
    "detector": Detector,
    "segnet": SegNet,
    "gnn": GNN,
    "node_mlp": NodeMLP,
    "mlp_denoiser": MLPDenoiser,
    "conv_denoiser": ConvDenoiser,
    "hf_causal_lm": hf_causal_lm,
    "hf_pretrained": hf_pretrained,
    "minilm_teacher": minilm_teacher,
    "sentence_encoder": sentence_encoder,
    "pretrained_encoder": pretrained_encoder,
    "timm": lambda input_shape, num_classes, **args: _vision(
        "timm_model", input_shape, num_classes, **args
    ),
    "torchvision": lambda input_shape, num_classes, **args: _vision(
        "torchvision_model", input_shape, num_classes, **args
    ),
    "hf_model": lambda input_shape, num_classes, **args: _hf_model(
        input_shape, num_classes, **args
    ),
    "hf_masked_lm": lambda input_shape, num_classes, **args: _masked_lm(
        input_shape, num_classes, **args
    ),
}


def _vision(which, input_shape, num_classes, **args):
    from distill.models import vision_zoo  # timm / torchvision are imported only when used

    return getattr(vision_zoo, which)(input_shape, num_classes, **args)


def _hf_model(input_shape, num_classes, **args):
    from distill.models.hf_auto import hf_model  # transformers is imported only when used

    return hf_model(input_shape, num_classes, **args)


def _masked_lm(input_shape, num_classes, **args):
    from distill.mlm import hf_masked_lm  # imports the scheme machinery: load on use

    return hf_masked_lm(input_shape, num_classes, **args)


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, args: dict | None = None
) -> nn.Module:
    """Build a model from the table or from 'package.module:attr' with keyword `args`.

    `input_shape` and `num_classes` are passed when the builder's signature accepts them.
    """
    args = dict(args or {})
    fn = lookup("model", name, MODELS)
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
