"""A small diffusion model in continuous time (Salimans & Ho 2022 conventions).

z_t = alpha_t x + sigma_t eps with alpha_t = cos(pi t / 2), sigma_t = sin(pi t / 2)
(variance preserving; t = 0 is data, t = 1 pure noise). Denoisers predict
v = alpha_t eps - sigma_t x, so x_hat = alpha_t z_t - sigma_t v_hat and
eps_hat = sigma_t z_t + alpha_t v_hat. Training on ||v_hat - v||^2 is DDPM training with
Salimans & Ho's "SNR + 1" weighting. Sampling is deterministic DDIM (Song et al. 2021):
z_s = alpha_s x_hat + sigma_s eps_hat on the grid t_i = i / N.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def alpha_sigma(t: Tensor) -> tuple[Tensor, Tensor]:
    return torch.cos(0.5 * math.pi * t), torch.sin(0.5 * math.pi * t)


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def diffuse(x: Tensor, t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """(z_t, v target) for clean `x`, times `t` (N,) and noise `eps`."""
    a, s = (_bcast(u, x) for u in alpha_sigma(t))
    return a * x + s * eps, a * eps - s * x


def predict_x(model: nn.Module, z: Tensor, t: Tensor) -> Tensor:
    """x_hat = alpha_t z - sigma_t v_hat."""
    a, s = (_bcast(u, z) for u in alpha_sigma(t))
    return a * z - s * model(z, t)


def ddim_step(model: nn.Module, z: Tensor, t: Tensor, s: Tensor) -> Tensor:
    """One deterministic DDIM step from time t to time s < t."""
    a_t, s_t = (_bcast(u, z) for u in alpha_sigma(t))
    a_s, s_s = (_bcast(u, z) for u in alpha_sigma(s))
    v = model(z, t)
    x_hat = a_t * z - s_t * v
    eps_hat = s_t * z + a_t * v
    return a_s * x_hat + s_s * eps_hat


@torch.no_grad()
def sample(
    model: nn.Module,
    n: int,
    shape: Sequence[int],
    steps: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """`n` samples from pure noise with `steps` DDIM steps (t = 1 -> 0)."""
    was = model.training
    model.eval()
    z = torch.randn(n, *shape, generator=generator).to(device)
    for i in range(steps, 0, -1):
        t = torch.full((n,), i / steps, device=device)
        s = torch.full((n,), (i - 1) / steps, device=device)
        z = ddim_step(model, z, t, s)
    model.train(was)
    return z


def progressive_target(teacher: nn.Module, z: Tensor, t: Tensor, student_steps: int) -> Tensor:
    """Salimans & Ho (2022), Algorithm 2: the x-target that lets one student DDIM step from t
    to t - 1/N land where two teacher steps (t -> t - 0.5/N -> t - 1/N) land.

    x~ = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t).
    """
    half, full = t - 0.5 / student_steps, t - 1.0 / student_steps
    z_mid = ddim_step(teacher, z, t, half)
    z_end = ddim_step(teacher, z_mid, half, full)
    a_t, s_t = (_bcast(u, z) for u in alpha_sigma(t))
    a_e, s_e = (_bcast(u, z) for u in alpha_sigma(full))
    ratio = s_e / s_t
    return (z_end - ratio * z) / (a_e - ratio * a_t)


class TimeEmbedding(nn.Module):
    """Sinusoidal features of t (scaled to [0, 1000]) followed by an MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device) / half)
        angles = 1000.0 * t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=1))


class _ResBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)
        self.time = nn.Linear(width, width)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.fc2(torch.nn.functional.silu(self.fc1(self.norm(h)) + self.time(emb)))


class MLPDenoiser(nn.Module):
    """v-prediction on flattened inputs: residual MLP blocks conditioned on t."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int = 0,
        *,
        width: int = 256,
        depth: int = 3,
    ):
        super().__init__()
        del num_classes  # unconditional
        self.shape = tuple(input_shape)
        features = math.prod(self.shape)
        self.time = TimeEmbedding(width)
        self.inp = nn.Linear(features, width)
        self.blocks = nn.ModuleList(_ResBlock(width) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, features))

    def forward(self, z: Tensor, t: Tensor | None = None) -> Tensor:
        if t is None:  # (a dry run through the model, e.g. shape checks)
            t = torch.full((z.shape[0],), 0.5, device=z.device)
        emb = self.time(t)
        h = self.inp(z.flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h).view(z.shape)


class ConvDenoiser(nn.Module):
    """v-prediction for small images: 3x3 conv blocks with a time bias, no downsampling
    (8x8 inputs), and a skip from input to output."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int = 0,
        *,
        channels: int = 32,
        depth: int = 3,
    ):
        super().__init__()
        del num_classes
        if len(input_shape) != 3:
            raise ValueError(f"ConvDenoiser takes (C, H, W) images, got {tuple(input_shape)}")
        c = input_shape[0]
        self.time = TimeEmbedding(channels)
        self.inp = nn.Conv2d(c + 2, channels, 3, padding=1)  # + 2 coordinate channels
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1) for _ in range(depth)
        )
        self.norms = nn.ModuleList(nn.GroupNorm(8, channels) for _ in range(depth))
        self.times = nn.ModuleList(nn.Linear(channels, channels) for _ in range(depth))
        self.out = nn.Conv2d(channels, c, 3, padding=1)

    def forward(self, z: Tensor, t: Tensor | None = None) -> Tensor:
        if t is None:
            t = torch.full((z.shape[0],), 0.5, device=z.device)
        n, _, h, w = z.shape
        ys = torch.linspace(-1, 1, h, device=z.device).view(1, 1, h, 1).expand(n, 1, h, w)
        xs = torch.linspace(-1, 1, w, device=z.device).view(1, 1, 1, w).expand(n, 1, h, w)
        emb = self.time(t)
        x = self.inp(torch.cat([z, ys, xs], dim=1))
        for conv, norm, time in zip(self.convs, self.norms, self.times):
            x = x + conv(torch.nn.functional.silu(norm(x) + time(emb)[:, :, None, None]))
        return self.out(x)
