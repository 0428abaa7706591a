"""Knowledge taps: forward hooks on named modules of an unmodified model.

A tap records what named submodules produced (or received) during a forward pass, so a
loss can read intermediate features without the model being rewritten to return them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from distill.core.errors import LayerError, did_you_mean

Capture = Literal["output", "input"]

# Knowledge a scheme computes rather than taps: the gradient of the cross-entropy with
# respect to the input (gradient-based attention, Zagoruyko & Komodakis 2017).
INPUT_GRAD = "input_grad"


@dataclass
class Knowledge:
    """What one model said about one batch: its logits and named intermediate tensors."""

    logits: Tensor
    feats: dict[str, Tensor] = field(default_factory=dict)

    def get(self, where: str | Sequence[str]) -> Tensor | tuple[Tensor, ...]:
        """`'logits'` or a tapped layer name ('name:input' for its input); a list gives a tuple."""
        if not isinstance(where, str):
            return tuple(self.get(w) for w in where)
        if where == "logits":
            return self.logits
        if where not in self.feats:
            raise KeyError(f"no tapped tensor {where!r}; tapped: {sorted(self.feats) or 'none'}")
        return self.feats[where]

    def detach(self) -> Knowledge:
        return Knowledge(self.logits.detach(), {k: v.detach() for k, v in self.feats.items()})


def with_input_grad(
    tap: Tap, model_input: Tensor, labels: Tensor, *, create_graph: bool
) -> Knowledge:
    """A forward pass that also records d CE(logits, labels) / d input as feats['input_grad'].

    `create_graph=True` keeps the gradient differentiable (for the student, whose loss then
    back-propagates through it: double backprop); the teacher's is a constant.
    """
    x = model_input.detach().requires_grad_(True)
    with torch.enable_grad():
        knowledge = tap.run(x)
        ce = torch.nn.functional.cross_entropy(knowledge.logits.float(), labels, reduction="sum")
        (grad,) = torch.autograd.grad(ce, x, create_graph=create_graph)
    knowledge.feats[INPUT_GRAD] = grad
    return knowledge


def layer_names(model: nn.Module) -> list[str]:
    """Every named submodule except the root."""
    return [name for name, _ in model.named_modules() if name]


def get_layer(model: nn.Module, name: str, model_label: str | None = None) -> nn.Module:
    """`model.get_submodule(name)` with an error that suggests the closest real names."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        label = model_label or type(model).__name__
        raise LayerError(
            f"unknown layer {name!r} in {label}{did_you_mean(name, layer_names(model))}\n"
            f"list the layers with: distill layers <model>"
        ) from None


def model_tensor(model: nn.Module, name: str) -> Tensor | None:
    """The parameter or buffer called `name` ('head.weight', 'bn.running_var'), or None."""
    module_name, _, attr = name.rpartition(".")
    try:
        owner = model.get_submodule(module_name) if module_name else model
    except AttributeError:
        return None
    if attr in owner._parameters or attr in owner._buffers:
        tensor = getattr(owner, attr)
        return tensor if isinstance(tensor, Tensor) else None
    return None


def _tensor_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]


def _first_tensor(value: object) -> Tensor:
    """Hooks see tuples for inputs and sometimes for outputs; features are their first tensor."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            if isinstance(item, Tensor):
                return item
    if isinstance(value, dict):
        for item in value.values():
            if isinstance(item, Tensor):
                return item
    if hasattr(value, "last_hidden_state"):
        return value.last_hidden_state
    raise TypeError(f"the tapped module returned {type(value).__name__}, which holds no tensor")


class Tap:
    """Forward hooks that record named submodule outputs (or inputs) into `self.feats`.

    Use as a context manager or call `remove()`; a wrong name raises at construction with
    the closest valid names. Names ending in ':input' record the module's first input. A
    name that is a parameter or buffer ('fc.weight', 'bn.bias') reads that tensor itself,
    for losses built on a model's own weights (a classifier applied to features, BatchNorm
    statistics); `run()` adds it to the knowledge of every pass.

        with Tap(model, ["layer2", "fc:input"]) as tap:
            logits = model(x)
        tap.feats["layer2"]
    """

    def __init__(self, model: nn.Module, names: Iterable[str], model_label: str | None = None):
        self.model = model
        self.feats: dict[str, Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        names = list(dict.fromkeys(names))
        # the model's own tensors, read as they are (no hook)
        self.tensors = {
            n: t for n in names if ":" not in n for t in [model_tensor(model, n)] if t is not None
        }
        specs = [(n, *self._split(n)) for n in names if n not in self.tensors]
        modules = [(key, self._layer(layer, model_label), what) for key, layer, what in specs]
        for key, module, what in modules:
            self._handles.append(self._register(key, module, what))

    def _layer(self, name: str, model_label: str | None) -> nn.Module:
        try:
            return get_layer(self.model, name, model_label)
        except LayerError:
            near = did_you_mean(name, _tensor_names(self.model))
            if not near or did_you_mean(name, layer_names(self.model)):
                raise  # (a layer name close to a real layer: suggest layers)
            label = model_label or type(self.model).__name__
            raise LayerError(
                f"unknown layer or tensor {name!r} in {label}{near}\n"
                f"list the layers with: distill layers <model>"
            ) from None

    @staticmethod
    def _split(name: str) -> tuple[str, Capture]:
        layer, _, what = name.partition(":")
        if what not in ("", "output", "input"):
            raise LayerError(f"tap {name!r}: the part after ':' must be 'input' or 'output'")
        return layer, ("input" if what == "input" else "output")

    def _register(self, key: str, module: nn.Module, what: Capture):
        def hook(_module: nn.Module, inputs: tuple, output: object) -> None:
            self.feats[key] = _first_tensor(inputs if what == "input" else output)

        return module.register_forward_hook(hook)

    def clear(self) -> None:
        self.feats = {}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> Tap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def run(self, model_input: Tensor | dict) -> Knowledge:
        """One forward pass; returns the logits and the tensors tapped during it."""
        self.clear()
        out = (
            self.model(**model_input) if isinstance(model_input, dict) else self.model(model_input)
        )
        logits = logits_of(out)
        feats, self.feats = self.feats, {}
        for name in self.tensors:  # looked up again: a module may swap its tensors
            feats[name] = model_tensor(self.model, name)
        return Knowledge(logits, feats)


def logits_of(out: object) -> Tensor:
    """What distill takes as a model's logits, in training, evaluation, the teacher cache and
    export alike: the output itself when it is a tensor; else its `logits` (Hugging Face
    outputs, a dict); else the first item of a tuple or list (the `return_dict=False`
    convention: logits first); else the first tensor it holds."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, dict) and isinstance(out.get("logits"), Tensor):
        return out["logits"]
    if isinstance(getattr(out, "logits", None), Tensor):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    try:
        return _first_tensor(out)
    except TypeError:
        raise TypeError(
            f"the model returned {type(out).__name__}, which holds no tensor; its forward must "
            f"return the logits: a tensor, an output with .logits, or a tuple with logits first"
        ) from None


def describe_layers(model: nn.Module, sample: Tensor) -> list[tuple[str, str, str, int]]:
    """(name, module type, output shape, parameters) for every named module, from one forward pass."""
    names = layer_names(model)
    shapes: dict[str, str] = {}
    with Tap(model, names) as tap:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(sample)
        model.train(was_training)
        for name in names:
            t = tap.feats.get(name)
            shapes[name] = "x".join(str(s) for s in t.shape) if t is not None else "-"
    modules = {n: model.get_submodule(n) for n in names}
    return [
        (n, type(m).__name__, shapes[n], sum(p.numel() for p in m.parameters()))
        for n, m in modules.items()
    ]
