"""Weights files into models: a file's recorded compression replayed, then its tensors.

(The files themselves are `distill.core.checkpoint`; this sits above it and above the
compression ops whose structure it replays.)
"""

from __future__ import annotations

import os

import torch

from distill.compress.replay import apply_structure
from distill.core.checkpoint import load_adapter, load_into, load_weights
from distill.core.errors import CheckpointError


def restore_weights(module: torch.nn.Module, path: str | os.PathLike, label: str) -> dict:
    """Load a weights file into a freshly built `module`: first replay the compression the
    file records (pruned widths, low-rank layers, quantizers), then the tensors. Weights
    holding NaN or inf are refused. An adapter-only file (`adapter_part`) goes into a
    PEFT-wrapped `module` whose base is loaded. Returns the file's info."""
    state, info = load_weights(path, allow_non_finite=True)
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise CheckpointError(
            f"the {label} weights in {str(path)!r} hold NaN or inf (in {', '.join(bad[:4])}"
            f"{' ...' if len(bad) > 4 else ''}): the run that wrote them diverged. Use weights "
            f"from before that, or retrain that model"
        )
    if info.get("adapter_only"):  # a LoRA run's adapter: `module` holds its base already
        load_adapter(module, state, info, label)
        return info
    apply_structure(module, info.get("structure"))
    load_into(module, state, label)
    return info
