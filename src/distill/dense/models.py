"""A compact anchor-free detector and a small segmentation network, in plain PyTorch.

Both are in the model table (`detector`, `segnet`), sized by `widths`, so a teacher and a
smaller student are the same class with other arguments. Tap names for distillation terms:

- detector: `fpn.0` (stride 4) and `fpn.1` (stride 8) pyramid features, `backbone.*`;
- segnet: `enc.0` (1/2), `enc.1` (1/4) encoder features, `dec` (1/2, before the classifier).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.dense.detection import decode


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


def _image_shape(input_shape: Sequence[int], name: str, multiple: int) -> tuple[int, int, int]:
    if len(input_shape) != 3 or input_shape[1] % multiple or input_shape[2] % multiple:
        raise ConfigError(
            f"{name} needs (channels, height, width) inputs with sides divisible by {multiple}, "
            f"got {tuple(input_shape)}"
        )
    return int(input_shape[0]), int(input_shape[1]), int(input_shape[2])


class Detector(nn.Module):
    """FCOS-style one-stage detector: conv backbone (strides 2, 4, 8), a two-level feature
    pyramid (top-down), and a head shared by both levels. Output (B, points, C + 5): class
    logits, raw (l, t, r, b) distances and a centerness logit (distill.dense.detection)."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        widths: Sequence[int] = (16, 32, 64),
        fpn: int = 32,
        head_convs: int = 1,
    ):
        super().__init__()
        c, h, w = _image_shape(input_shape, "detector", 8)
        w0, w1, w2 = widths
        self.backbone = nn.Sequential(
            conv_bn(c, w0, 2),
            nn.Sequential(conv_bn(w0, w1, 2), conv_bn(w1, w1)),
            nn.Sequential(conv_bn(w1, w2, 2), conv_bn(w2, w2)),
        )
        self.lateral = nn.ModuleList([nn.Conv2d(w1, fpn, 1), nn.Conv2d(w2, fpn, 1)])
        self.fpn = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(fpn, fpn, 3, padding=1), nn.ReLU()) for _ in range(2)]
        )
        tower: list[nn.Module] = []
        for _ in range(head_convs):
            tower += [nn.Conv2d(fpn, fpn, 3, padding=1), nn.GroupNorm(min(8, fpn), fpn), nn.ReLU()]
        self.tower = nn.Sequential(*tower)
        self.cls = nn.Conv2d(fpn, num_classes, 3, padding=1)
        self.reg = nn.Conv2d(fpn, 4, 3, padding=1)
        self.ctr = nn.Conv2d(fpn, 1, 3, padding=1)
        nn.init.constant_(self.cls.bias, -math.log((1 - 0.01) / 0.01))  # prior 0.01 (focal)
        points, strides, levels = [], [], []
        for level, stride in enumerate((4, 8)):
            ys, xs = torch.meshgrid(
                torch.arange(h // stride), torch.arange(w // stride), indexing="ij"
            )
            pts = torch.stack([xs.flatten(), ys.flatten()], -1).float() * stride + stride / 2
            points.append(pts)
            strides.append(torch.full((len(pts),), float(stride)))
            levels.append(torch.full((len(pts),), level, dtype=torch.long))
        self.register_buffer("points", torch.cat(points), persistent=False)
        self.register_buffer("strides", torch.cat(strides), persistent=False)
        self.register_buffer("levels", torch.cat(levels), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        c1 = self.backbone[1](self.backbone[0](x))
        c2 = self.backbone[2](c1)
        p2 = self.lateral[1](c2)
        p1 = self.lateral[0](c1) + F.interpolate(p2, scale_factor=2.0, mode="nearest")
        outs = []
        for feat in (self.fpn[0](p1), self.fpn[1](p2)):
            t = self.tower(feat)
            o = torch.cat([self.cls(t), self.reg(t), self.ctr(t)], 1)
            outs.append(o.flatten(2).transpose(1, 2))
        return torch.cat(outs, 1)

    def decode(self, out: Tensor) -> tuple[Tensor, Tensor]:
        """(boxes (B, A, 4) in pixels, scores (B, A, C))."""
        return decode(out, self.points, self.strides)


class SegNet(nn.Module):
    """Encoder-decoder: two stride-2 stages, a decoder that upsamples and adds the 1/2 skip,
    a 1x1 classifier, bilinear upsampling to the input size. Output (B, classes, H, W)."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        widths: Sequence[int] = (16, 32),
    ):
        super().__init__()
        c, _, _ = _image_shape(input_shape, "segnet", 4)
        w0, w1 = widths
        self.enc = nn.ModuleList(
            [
                nn.Sequential(conv_bn(c, w0, 2), conv_bn(w0, w0)),
                nn.Sequential(conv_bn(w0, w1, 2), conv_bn(w1, w1)),
            ]
        )
        self.up = nn.Conv2d(w1, w0, 1)
        self.dec = conv_bn(w0, w0)
        self.classifier = nn.Conv2d(w0, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        e0 = self.enc[0](x)
        e1 = self.enc[1](e0)
        d = self.dec(e0 + F.interpolate(self.up(e1), scale_factor=2.0, mode="bilinear"))
        return F.interpolate(self.classifier(d), size=x.shape[-2:], mode="bilinear")


__all__ = ["Detector", "SegNet"]
