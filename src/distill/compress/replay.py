"""Replaying a compressed model's recorded structure on a freshly built one.

A weights file of a pruned, factorised or quantized model records the ops that made it
(`distill.compress.structure`); `apply_structure` replays them so the file's tensors fit.
It sits above the ops' own modules (pruning resizes, `lowrank`, `quant`), which record
their ops through `structure` and never import this module.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.compress.lowrank import replay_lowrank
from distill.compress.quant import prepare_qat
from distill.compress.structure import ATTR, record, resized
from distill.core.errors import CheckpointError
from distill.core.settings import QuantSettings


def _replay_resize(model: nn.Module, op: dict[str, Any]) -> None:
    for name, dims in op["modules"].items():
        old = model.get_submodule(name)
        model.set_submodule(name, resized(old, inputs=dims.get("in"), outputs=dims.get("out")))


def apply_structure(model: nn.Module, ops: list[dict[str, Any]] | None) -> nn.Module:
    """Replay recorded ops on a freshly built `model` (in place; returns it)."""
    if getattr(model, ATTR, []):  # already has its structure (e.g. built once, loaded twice)
        if getattr(model, ATTR) == list(ops or []):
            return model
        raise CheckpointError(
            "these weights were saved from a model compressed differently "
            f"({ops}) than the model they are loaded into ({getattr(model, ATTR)})"
        )
    for op in ops or []:
        kind = op.get("op")
        try:
            if kind == "resize":
                _replay_resize(model, op)
            elif kind == "lowrank":
                replay_lowrank(model, op)
            elif kind == "quantize":
                prepare_qat(model, QuantSettings(**op["settings"]), fresh=False)
                continue  # prepare_qat records the op itself
            else:
                raise CheckpointError(
                    f"unknown structure op {kind!r} in the weights file; it was written by a "
                    "newer distill (known: resize, lowrank, quantize)"
                )
        except (AttributeError, KeyError, ValueError) as e:
            raise CheckpointError(
                f"the weights file's structure op {kind!r} does not fit this model ({e}); check "
                "that the model name and args are the ones the compressed model was built from"
            ) from None
        record(model, op)
    return model
