"""Reference models for 1-D signals (N, C, L), small images (N, C, H, W) and vectors (N, F).

Each builder takes `input_shape` (without the batch dim) and `num_classes` first, then
its own keyword arguments. Layer names are stable so configs can tap them: MLP and
ConvNet have `blocks.0`, `blocks.1`, ... and `head`; ResNet has `stem`, `layer1`..,
`pool` and `fc`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def _spatial_dims(input_shape: Sequence[int], model: str) -> int:
    """1 for (C, L) signals, 2 for (C, H, W) images."""
    dims = len(input_shape) - 1
    if dims not in (1, 2):
        raise ValueError(
            f"{model} takes (C, L) or (C, H, W) inputs, got input_shape {tuple(input_shape)}"
        )
    return dims


def _conv(dims: int) -> type[nn.Module]:
    return {1: nn.Conv1d, 2: nn.Conv2d}[dims]


def _norm(dims: int) -> type[nn.Module]:
    return {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[dims]


class MLP(nn.Module):
    """Flatten, then Linear-ReLU(-Dropout) blocks and a linear head."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        hidden: Sequence[int] = (64,),
        dropout: float = 0.0,
    ):
        super().__init__()
        width = math.prod(input_shape)
        blocks = []
        for h in hidden:
            layers: list[nn.Module] = [nn.Linear(width, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            blocks.append(nn.Sequential(*layers))
            width = h
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(x.flatten(1)))


class ConvNet(nn.Module):
    """Conv-BN-ReLU blocks (each may downsample by `stride`), flatten, optional hidden layer, head.

    Works on 1-D signals (input_shape (C, L)) and images ((C, H, W)); flattening keeps
    position information, which MNIST-1D needs.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        channels: Sequence[int] = (32, 64),
        kernel_size: int = 5,
        stride: int = 2,
        hidden: int | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        dims = _spatial_dims(input_shape, "ConvNet")
        conv, norm = _conv(dims), _norm(dims)
        blocks, c_in = [], input_shape[0]
        for c_out in channels:
            blocks.append(
                nn.Sequential(
                    conv(
                        c_in,
                        c_out,
                        kernel_size,
                        stride=stride,
                        padding=kernel_size // 2,
                        bias=False,
                    ),
                    norm(c_out),
                    nn.ReLU(),
                )
            )
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        with torch.no_grad():
            flat = self.blocks(torch.zeros(1, *input_shape)).numel()
        head: list[nn.Module] = [nn.Flatten()]
        if dropout:
            head.append(nn.Dropout(dropout))
        if hidden:
            head += [nn.Linear(flat, hidden), nn.ReLU()]
            flat = hidden
        head.append(nn.Linear(flat, num_classes))
        self.head = nn.Sequential(*head)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(x))


class BasicBlock(nn.Module):
    """Two 3-wide convolutions with a residual connection (He et al. 2016)."""

    def __init__(self, dims: int, c_in: int, c_out: int, stride: int):
        super().__init__()
        conv, norm = _conv(dims), _norm(dims)
        self.conv1 = conv(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(c_out)
        self.conv2 = conv(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = norm(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                conv(c_in, c_out, 1, stride=stride, bias=False), norm(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet for 1-D signals or small images: stem, stages `layer1..`, pool, fc."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        widths: Sequence[int] = (16, 32, 64),
        blocks_per_stage: int = 1,
    ):
        super().__init__()
        dims = _spatial_dims(input_shape, "ResNet")
        conv, norm = _conv(dims), _norm(dims)
        self.stem = nn.Sequential(
            conv(input_shape[0], widths[0], 3, padding=1, bias=False), norm(widths[0]), nn.ReLU()
        )
        c_in = widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            stage = [
                BasicBlock(dims, c_in if j == 0 else width, width, stride if j == 0 else 1)
                for j in range(blocks_per_stage)
            ]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            c_in = width
        self.num_stages = len(widths)
        self.pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}[dims](1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.pool(x).flatten(1))


class SelfAttention(nn.Module):
    """Multi-head self-attention whose probabilities pass through a named `probs` module,
    so a tap on `<block>.attn.probs` reads them (N, heads, L, L)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"transformer dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.probs = nn.Softmax(dim=-1)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, length, dim = x.shape
        q, k, v = (
            self.qkv(x).reshape(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        )
        attn = self.probs(q @ k.transpose(-2, -1) / math.sqrt(dim // self.heads))  # (N, H, L, L)
        return self.out((attn @ v).transpose(1, 2).reshape(n, length, dim))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A small pre-norm transformer over patches of a 1-D signal or an image (ViT-style).

    Patches of `patch` samples (or patch x patch pixels) become tokens; blocks are
    `blocks.0`, `blocks.1`, ... with attention probabilities at `blocks.i.attn.probs`;
    tokens are mean-pooled into `head`.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        dim: int = 32,
        depth: int = 2,
        heads: int = 2,
        patch: int = 4,
    ):
        super().__init__()
        dims = _spatial_dims(input_shape, "Transformer")
        conv = _conv(dims)
        self.embed = conv(input_shape[0], dim, patch, stride=patch)
        tokens = math.prod(s // patch for s in input_shape[1:])
        if tokens < 1:
            raise ValueError(f"patch {patch} is larger than the input {tuple(input_shape)}")
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.pos  # (N, L, dim)
        return self.head(self.norm(self.blocks(tokens)).mean(1))
