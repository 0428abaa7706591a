"""Pruning: unstructured magnitude pruning (also gradually, during training) and
structured channel/neuron pruning that really removes channels.

- Magnitude pruning zeroes the smallest weights of Conv and Linear layers, globally
  (one threshold over all layers) or per layer (Han et al. 2015). The gradual schedule
  raises sparsity from 0 to its target along s_t = s_f (1 - (1 - t/n)^3) (Zhu & Gupta
  2017), so a student can be pruned while it is distilled.
- Channel pruning ranks a layer's output channels by the L1 norm of their filters (Li et
  al. 2017, "Pruning Filters for Efficient ConvNets") or by the |scale| of the BatchNorm
  that follows (Liu et al. 2017, network slimming; L1 where no BatchNorm follows), keeps the best ones and rebuilds that
  layer, its BatchNorm and every layer that reads it narrower. The graph is read with
  torch.fx, so it works on any traceable model; a layer whose output reaches anything the
  analysis does not understand (a residual add, a reshape, the model's output) is left whole.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.compress.structure import BN, CONV, record, resized
from distill.core.settings import SparsitySettings

PRUNABLE = (nn.Linear, *CONV)


def prunable_weights(model: nn.Module, skip: Sequence[str] = ()) -> dict[str, Tensor]:
    """Weights of the Conv and Linear layers, by module name, minus `skip` (and their children)."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE) and not any(
            name == s or name.startswith(s + ".") for s in skip
        ):
            out[name] = module.weight
    return out


@torch.no_grad()
def magnitude_masks(
    weights: dict[str, Tensor], amount: float, scope: str = "global"
) -> dict[str, Tensor]:
    """Boolean keep-masks that drop the `amount` fraction of smallest-magnitude weights,
    over all layers together (`global`) or within each layer (`layer`). Ties at the
    threshold are broken by position so exactly round(amount * n) weights go."""
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"pruning amount must be in [0, 1), got {amount}")

    def keep(flat: Tensor) -> Tensor:
        drop = int(round(amount * flat.numel()))
        mask = torch.ones_like(flat, dtype=torch.bool)
        if drop:
            mask[flat.abs().argsort(stable=True)[:drop]] = False
        return mask

    if scope == "layer":
        return {k: keep(w.detach().flatten()).view_as(w) for k, w in weights.items()}
    if scope != "global":
        raise ValueError(f"pruning scope must be 'global' or 'layer', got {scope!r}")
    flat = torch.cat([w.detach().flatten().float() for w in weights.values()])
    mask = keep(flat)
    out, start = {}, 0
    for k, w in weights.items():
        out[k] = mask[start : start + w.numel()].view_as(w)
        start += w.numel()
    return out


def sparsity(model: nn.Module, skip: Sequence[str] = ()) -> float:
    """Fraction of exactly-zero weights over the prunable layers."""
    ws = list(prunable_weights(model, skip).values())
    total = sum(w.numel() for w in ws)
    return sum(int((w == 0).sum()) for w in ws) / max(total, 1)


@torch.no_grad()
def magnitude_prune(
    model: nn.Module, amount: float, scope: str = "global", skip: Sequence[str] = ()
) -> dict[str, Tensor]:
    """Zero the smallest weights in place; returns the keep-masks."""
    weights = prunable_weights(model, skip)
    masks = magnitude_masks(weights, amount, scope)
    for name, w in weights.items():
        w.mul_(masks[name])
    return masks


def scheduled_amount(step: int, s: SparsitySettings) -> float:
    """Zhu & Gupta (2017): s_t = s_f * (1 - (1 - p)^3), p the fraction of the ramp done,
    evaluated at the last pruning round (every `every` steps) at or before `step`."""
    if step < s.start_step:
        return 0.0
    end = s.end_step if s.end_step is not None else s.start_step
    if end <= s.start_step or step >= end:
        return s.amount
    done = (step - s.start_step) // s.every * s.every
    return s.amount * (1.0 - (1.0 - done / (end - s.start_step)) ** 3)


class SparsityKeeper:
    """A trainer step hook: prunes on schedule and keeps pruned weights at zero after every
    optimizer step (their gradients would otherwise revive them). The masks are the zeros
    themselves, so a resumed run needs nothing beyond its weights."""

    def __init__(self, model: nn.Module, settings: SparsitySettings):
        self.model, self.settings = model, settings
        self.masks: dict[str, Tensor] | None = None
        self.amount = -1.0

    def settled(self, step: int) -> bool:
        """Whether the weights after `step` optimizer steps are at the final sparsity."""
        return scheduled_amount(step, self.settings) >= self.settings.amount

    @torch.no_grad()
    def __call__(self, step: int) -> None:
        target = scheduled_amount(step + 1, self.settings)  # the weights after this step
        weights = prunable_weights(self.model, self.settings.skip)
        if self.masks is None or target != self.amount:
            if target > 0:
                # existing zeros are the smallest magnitudes, so they stay pruned
                for name, w in weights.items():
                    if self.masks is not None:
                        w.mul_(self.masks[name])
                self.masks = magnitude_masks(weights, target, self.settings.scope)
            else:
                self.masks = {k: torch.ones_like(w, dtype=torch.bool) for k, w in weights.items()}
            self.amount = target
        for name, w in weights.items():
            w.mul_(self.masks[name])


# --------------------------------------------------------------------- structured pruning
_PASS_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.LeakyReLU,
    nn.Hardswish,
    nn.Dropout,
    nn.Identity,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)
_PASS_FUNCTIONS = {
    torch.relu,
    F.relu,
    F.gelu,
    F.silu,
    torch.tanh,
    torch.sigmoid,
    F.dropout,
    F.max_pool1d,
    F.max_pool2d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
}
_PASS_METHODS = {"relu", "sigmoid", "tanh", "contiguous"}


class _Blocked(Exception):
    """A layer's output reaches an operation the channel analysis does not follow."""


def _trace(model: nn.Module, example: Tensor):
    from torch.fx import symbolic_trace
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        gm = symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure means the same to the user
        raise ValueError(
            f"structured pruning reads the model's graph with torch.fx, which cannot trace "
            f"{type(model).__name__} ({type(e).__name__}: {e}); use unstructured pruning "
            "(structured: false) or make the forward traceable"
        ) from None
    was = model.training
    gm.eval()
    with torch.no_grad():
        ShapeProp(gm).propagate(example)
    gm.train(was)
    return gm


def _flatten_start(node) -> int | None:
    """start_dim of a flatten node, or None when the node is not a flatten."""
    if node.op == "call_function" and node.target is torch.flatten:
        return node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    if node.op == "call_method" and node.target == "flatten":
        return node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    return None


def _dependents(gm, node, modules: dict[str, nn.Module]) -> dict[str, Any]:
    """Where the output channels of layer `node` go: the BatchNorms that scale them and the
    layers that read them (with how many input features each channel spans)."""
    out = {"norms": [], "readers": []}

    def walk(n, span: int, channel_dim: int) -> None:
        for user in n.users:
            if user.op == "call_module":
                m = modules[user.target]
                if isinstance(m, BN) and channel_dim == 1:
                    out["norms"].append(user.target)
                    walk(user, span, channel_dim)
                elif isinstance(m, _PASS_MODULES):
                    walk(user, span, channel_dim)
                elif isinstance(m, nn.Flatten) and m.start_dim == 1 and channel_dim == 1:
                    walk(user, span * math.prod(n.meta["tensor_meta"].shape[2:]), -1)
                elif isinstance(m, nn.Linear) and channel_dim == -1:
                    out["readers"].append((user.target, span))
                elif isinstance(m, CONV) and channel_dim == 1 and m.groups == 1:
                    out["readers"].append((user.target, 1))
                else:
                    raise _Blocked
            elif (user.op == "call_function" and user.target in _PASS_FUNCTIONS) or (
                user.op == "call_method" and user.target in _PASS_METHODS
            ):
                if user.args[0] is not n:
                    raise _Blocked
                walk(user, span, channel_dim)
            elif _flatten_start(user) == 1 and channel_dim == 1:
                walk(user, span * math.prod(n.meta["tensor_meta"].shape[2:]), -1)
            elif user.op == "call_function" and user.target is operator.getitem:
                raise _Blocked
            else:
                raise _Blocked

    layer = modules[node.target]
    walk(node, 1, -1 if isinstance(layer, nn.Linear) else 1)
    if not out["readers"]:
        raise _Blocked
    return out


def channel_groups(model: nn.Module, example: Tensor, skip: Sequence[str] = ()) -> dict[str, Any]:
    """Every layer whose output channels can be removed, with what depends on them."""
    gm = _trace(model, example)
    modules = dict(gm.named_modules())
    groups = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target in skip:
            continue
        m = modules[node.target]
        if not isinstance(m, PRUNABLE) or (isinstance(m, CONV) and m.groups != 1):
            continue
        if isinstance(m, nn.Linear) and len(node.meta["tensor_meta"].shape) < 2:
            continue
        try:
            groups[node.target] = _dependents(gm, node, modules)
        except _Blocked:
            continue
    return groups


def channel_scores(model: nn.Module, name: str, norms: list[str], criterion: str) -> Tensor:
    layer = model.get_submodule(name)
    if criterion == "bn" and norms:  # layers without a BatchNorm after them fall back to L1
        return model.get_submodule(norms[0]).weight.detach().abs()
    if criterion not in ("l1", "bn"):
        raise ValueError(f"channel criterion must be 'l1' or 'bn', got {criterion!r}")
    return layer.weight.detach().abs().flatten(1).sum(1)


def _narrow_norm(model: nn.Module, name: str, keep: Tensor) -> None:
    """The norm layer `name` keeps the channels `keep` (affine and running statistics)."""
    norm = model.get_submodule(name)
    small = resized(norm, outputs=len(keep))
    for attr in ("weight", "bias", "running_mean", "running_var"):
        if getattr(norm, attr, None) is not None:
            getattr(small, attr).copy_(getattr(norm, attr)[keep])
    if norm.num_batches_tracked is not None:
        small.num_batches_tracked.copy_(norm.num_batches_tracked)
    model.set_submodule(name, small)


def _narrow_reader(model: nn.Module, name: str, keep: Tensor, span: int, dims: dict) -> int:
    """The layer `name` reading the pruned channels keeps their input columns (`span`
    columns per channel, after a flatten); returns its new input width."""
    reader = model.get_submodule(name)
    cols = (keep[:, None] * span + torch.arange(span)).flatten()
    new_reader = resized(reader, inputs=len(cols), outputs=dims.get(name, {}).get("out"))
    new_reader.weight.copy_(reader.weight[:, cols])
    if reader.bias is not None:
        new_reader.bias.copy_(reader.bias)
    model.set_submodule(name, new_reader)
    return len(cols)


@torch.no_grad()
def prune_channels(
    model: nn.Module,
    amount: float,
    example: Tensor,
    *,
    criterion: str = "l1",
    skip: Sequence[str] = (),
    min_channels: int = 1,
) -> dict[str, dict[str, int]]:
    """Remove the `amount` fraction of output channels (neurons) of every prunable layer,
    in place; returns {layer: {'before', 'after'}}. The model really shrinks: the kept
    filters, BatchNorm entries and reader columns are copied into narrower layers."""
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"channel pruning amount must be in [0, 1), got {amount}")
    groups = channel_groups(model, example, skip)
    if not groups:
        raise ValueError(
            "no layer of this model can lose channels: every Conv/Linear output reaches a "
            "residual add, a reshape or the model's output"
        )
    dims: dict[str, dict[str, int]] = {}
    report = {}
    keeps = {}
    for name, deps in groups.items():
        scores = channel_scores(model, name, deps["norms"], criterion)
        n = scores.numel()
        k = max(min_channels, n - int(round(amount * n)))
        keeps[name] = scores.argsort(descending=True, stable=True)[:k].sort().values
        report[name] = {"before": n, "after": k}
    for name, deps in groups.items():
        keep = keeps[name]
        layer = model.get_submodule(name)
        new = resized(layer, outputs=len(keep), inputs=dims.get(name, {}).get("in"))
        # a layer may already have been narrowed on its input side by an earlier group
        new.weight.copy_(layer.weight[keep])
        if layer.bias is not None:
            new.bias.copy_(layer.bias[keep])
        model.set_submodule(name, new)
        dims.setdefault(name, {})["out"] = len(keep)
        for norm_name in deps["norms"]:
            _narrow_norm(model, norm_name, keep)
            dims[norm_name] = {"out": len(keep)}
        for reader_name, span in deps["readers"]:
            inputs = _narrow_reader(model, reader_name, keep, span, dims)
            dims.setdefault(reader_name, {})["in"] = inputs
    record(model, {"op": "resize", "modules": dims})
    return report
