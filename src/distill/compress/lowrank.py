"""Low-rank factorisation of Linear layers by truncated SVD (Denton et al. 2014; Jaderberg
et al. 2014 for the idea of low-rank compression of trained networks).

W (out x in) = U S V^T is cut to its top r singular values and replaced by two layers:
x -> (sqrt(S_r) V_r^T) x -> U_r sqrt(S_r) (.) + b, which costs r (in + out) weights instead
of in * out. r is the smallest rank that keeps a fraction `energy` of sum(S^2), or a fixed
fraction of the full rank; a layer is factorised only when that saves parameters.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from distill.compress.structure import record


class LowRankLinear(nn.Module):
    """`up(down(x))`: a rank-r stand-in for a Linear layer (bias on `up`)."""

    def __init__(self, in_features: int, rank: int, out_features: int, bias: bool = True):
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    @property
    def rank(self) -> int:
        return self.down.out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.down(x))


def choose_rank(singular: Tensor, energy: float | None, ratio: float | None) -> int:
    if ratio is not None:
        return max(1, int(round(ratio * singular.numel())))
    if energy is None:
        raise ValueError("give energy or rank_ratio")
    share = (singular**2).cumsum(0) / (singular**2).sum().clamp_min(1e-30)
    return int((share < energy - 1e-9).sum().item()) + 1


@torch.no_grad()
def factorize(
    model: nn.Module,
    *,
    energy: float | None = 0.9,
    rank_ratio: float | None = None,
    min_features: int = 16,
    skip: tuple[str, ...] | list[str] = (),
) -> dict[str, dict[str, int]]:
    """Replace large Linear layers by LowRankLinear in place; returns
    {layer: {'rank', 'full_rank', 'params_before', 'params_after'}}."""
    if energy is not None and not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    report: dict[str, dict[str, int]] = {}
    targets = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
        and min(m.in_features, m.out_features) >= min_features
        and name not in skip
    ]
    for name, layer in targets:
        w = layer.weight.detach().float()
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        r = choose_rank(s, energy if rank_ratio is None else None, rank_ratio)
        before = w.numel()
        after = r * (layer.in_features + layer.out_features)
        if after >= before:
            continue
        new = LowRankLinear(layer.in_features, r, layer.out_features, layer.bias is not None)
        new.train(layer.training)
        root = s[:r].sqrt()
        new.down.weight.copy_((root[:, None] * vh[:r]).to(layer.weight.dtype))
        new.up.weight.copy_((u[:, :r] * root).to(layer.weight.dtype))
        if layer.bias is not None:
            new.up.bias.copy_(layer.bias)
        model.set_submodule(name, new.to(layer.weight.device))
        report[name] = {
            "rank": r,
            "full_rank": s.numel(),
            "params_before": before,
            "params_after": after,
        }
    if report:
        record(model, {"op": "lowrank", "ranks": {k: v["rank"] for k, v in report.items()}})
    return report


def replay_lowrank(model: nn.Module, op: dict[str, Any]) -> None:
    for name, rank in op["ranks"].items():
        layer = model.get_submodule(name)
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"{name!r} is a {type(layer).__name__}, not a Linear")
        model.set_submodule(
            name, LowRankLinear(layer.in_features, rank, layer.out_features, layer.bias is not None)
        )
