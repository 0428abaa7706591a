"""Batch augmentations driven by an explicit `torch.Generator`.

They run inside the training loop on a whole batch, before the scheme sees it, so the
teacher and the student always look at the same view ("consistent teaching", Beyer et
al. 2022). The generator's state is checkpointed, so a resumed run draws the same views.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Augmentation = Callable[[Tensor, torch.Generator], Tensor]


def random_shift(x: Tensor, gen: torch.Generator, *, max_shift: int = 3) -> Tensor:
    """Shift each sample along its last dim by an integer in [-max_shift, max_shift], zero-filled."""
    n, length = x.shape[0], x.shape[-1]
    shift = torch.randint(-max_shift, max_shift + 1, (n,), generator=gen).to(x.device)
    src = torch.arange(length, device=x.device).unsqueeze(0) - shift.unsqueeze(1)  # (N, L)
    valid = (src >= 0) & (src < length)
    src = src.clamp(0, length - 1)
    view = (n,) + (1,) * (x.dim() - 2) + (length,)
    out = torch.gather(x, -1, src.reshape(view).expand_as(x))
    return out * valid.reshape(view).to(x.dtype)


def gaussian_noise(x: Tensor, gen: torch.Generator, *, std: float = 0.1) -> Tensor:
    """Add N(0, std^2) noise to every element."""
    return x + std * torch.randn(x.shape, generator=gen).to(x.device, x.dtype)


def random_scale(x: Tensor, gen: torch.Generator, *, low: float = 0.8, high: float = 1.2) -> Tensor:
    """Multiply each sample by a factor drawn uniformly from [low, high]."""
    factor = low + (high - low) * torch.rand((x.shape[0],), generator=gen)
    return x * factor.reshape((-1,) + (1,) * (x.dim() - 1)).to(x.device, x.dtype)


AUGMENTATIONS: dict[str, Callable[..., Tensor]] = {
    "shift": random_shift,
    "noise": gaussian_noise,
    "scale": random_scale,
}


# The per-sample input ranks each augmentation makes sense for (None: any). A shift moves
# along the last axis of a signal (C, L) or an image (C, H, W); on tabular features (D,) it
# would slide values into other columns.
INPUT_RANKS: dict[str, tuple[int, ...] | None] = {"shift": (2, 3), "noise": None, "scale": None}


def augmentation_problem(name: str, input_shape: tuple[int, ...]) -> str | None:
    """Why augmentation `name` does not fit inputs of `input_shape` (per sample), or None."""
    ranks = INPUT_RANKS.get(name)
    if ranks is None or len(input_shape) in ranks:
        return None
    shapes = " or ".join(
        {2: "(C, L) signals", 3: "(C, H, W) images"}.get(r, f"rank {r}") for r in ranks
    )
    return (
        f"{name!r} applies to {shapes}, but each input here has shape {tuple(input_shape)}; "
        f"use {', '.join(k for k, v in INPUT_RANKS.items() if v is None)} instead, or remove it"
    )


def build_augmentation(steps: Sequence[tuple[str, dict]]) -> Augmentation | None:
    """Chain named augmentations [(name, kwargs), ...] into one function (None if empty)."""
    if not steps:
        return None
    fns = [(AUGMENTATIONS[name], kwargs) for name, kwargs in steps]

    def augment(x: Tensor, gen: torch.Generator) -> Tensor:
        for fn, kwargs in fns:
            x = fn(x, gen, **kwargs)
        return x

    return augment
