"""Quantization-aware training with fake quantization, for quantized distillation.

Every Conv and Linear layer is wrapped (`QuantLayer`): its input activation goes through an
affine per-tensor quantizer whose range is an exponential moving average of the batch
min/max (Jacob et al. 2018), and its weight through a symmetric per-output-channel
quantizer (scale = max|w| / (2^(b-1) - 1)). Both use PyTorch's fake-quantize kernels, whose
gradient is the straight-through estimator (identity inside the range, zero outside), so a
student trains at `bits` precision while a full-precision teacher distils into it
(Polino et al. 2018, quantized distillation; Kim et al. 2019, QKD). Bit-widths below 8
train the same way; they export as int8 tensors holding the narrower grid.

SPEQ (Boo et al. 2021) needs a teacher that is the student with some activations at full
precision: `stochastic_precision` switches each activation quantizer off at random.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.compress.structure import CONV, record
from distill.core.settings import QuantSettings


def _qrange(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def weight_scale(weight: Tensor, bits: int) -> Tensor:
    """Per-output-channel symmetric scale: max|w_c| / (2^(b-1) - 1)."""
    qmax = 2 ** (bits - 1) - 1
    return (weight.detach().abs().flatten(1).amax(1) / qmax).clamp_min(1e-12).float()


def fake_quant_weight(weight: Tensor, bits: int, scale: Tensor | None = None) -> Tensor:
    """Weights on the b-bit grid. With a frozen `scale` (export) the int8 range is named,
    which ONNX requires; |w| / scale <= 2^(b-1) - 1 keeps the values on the b-bit grid."""
    lo, hi = _qrange(bits) if scale is None else (-128, 127)
    scale = weight_scale(weight, bits) if scale is None else scale
    zero = torch.zeros(scale.numel(), dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, lo, hi)


class ActQuant(nn.Module):
    """Unsigned affine per-tensor fake quantizer with an EMA range (buffers `lo`, `hi`)."""

    def __init__(self, bits: int, momentum: float):
        super().__init__()
        self.bits, self.momentum = bits, momentum
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))
        self.full_precision = False  # SPEQ's teacher passes switch quantizers off
        self.observe = True

    def qparams(self) -> tuple[Tensor, Tensor]:
        """(scale, zero point) of the current range; zero is always exactly representable."""
        levels = 2**self.bits - 1
        lo, hi = self.lo.clamp(max=0.0), self.hi.clamp(min=0.0)
        scale = ((hi - lo) / levels).clamp_min(1e-8).float()
        zero = (-lo / scale).round().clamp(0, levels).to(torch.int32)
        return scale.reshape(1), zero.reshape(1)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.observe and not self.full_precision:
            with torch.no_grad():
                lo, hi = x.detach().min().float(), x.detach().max().float()
                if not bool(self.seen):
                    self.lo.copy_(lo)
                    self.hi.copy_(hi)
                    self.seen.fill_(True)
                else:
                    self.lo.lerp_(lo, self.momentum)
                    self.hi.lerp_(hi, self.momentum)
        frozen = getattr(self, "frozen", None)
        if frozen is not None:  # exporting: constants, so the graph holds only Q/DQ nodes
            scale, zero = frozen
        elif self.full_precision or not bool(self.seen):
            return x
        else:
            scale, zero = self.qparams()
        levels = 2**self.bits - 1
        if frozen is not None and self.bits < 8:
            # ONNX QuantizeLinear knows only 8-bit ranges: clamp to the narrow grid first
            lo = (0 - zero.float()) * scale
            hi = (levels - zero.float()) * scale
            x = torch.maximum(torch.minimum(x, hi), lo)
            return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, levels)


class QuantLayer(nn.Module):
    """A Conv or Linear layer (`layer`) run on fake-quantized input and weights."""

    def __init__(self, layer: nn.Module, settings: QuantSettings):
        super().__init__()
        self.layer, self.bits = layer, settings.bits
        self.act = ActQuant(settings.act_bits, settings.momentum) if settings.act_bits else None
        self.frozen_scale: Tensor | None = None  # set while exporting

    def forward(self, x: Tensor) -> Tensor:
        if self.act is not None:
            x = self.act(x)
        w = fake_quant_weight(self.layer.weight, self.bits, self.frozen_scale)
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, self.layer.bias)
        return self.layer._conv_forward(x, w, self.layer.bias)


def prepare_qat(model: nn.Module, settings: QuantSettings, *, fresh: bool = True) -> nn.Module:
    """Wrap every Conv/Linear of `model` (in place) for quantization-aware training.
    `fresh=False` replays the wrapping on a model about to receive quantized weights."""
    del fresh  # the same wrapping either way; kept for the call sites' clarity
    targets = [
        name
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, *CONV))
        and name
        and not any(name == s or name.startswith(s + ".") for s in settings.skip)
        and not isinstance(_parent(model, name), QuantLayer)
    ]
    if not targets:
        raise ValueError("the model has no Conv or Linear layer to quantize")
    for name in targets:
        layer = model.get_submodule(name)
        model.set_submodule(name, QuantLayer(layer, settings).train(layer.training))
    record(model, {"op": "quantize", "settings": settings.model_dump()})
    return model


def _parent(model: nn.Module, name: str) -> nn.Module | None:
    parent = name.rpartition(".")[0]
    return model.get_submodule(parent) if parent else model


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QuantLayer) for m in model.modules())


def act_quantizers(model: nn.Module) -> list[ActQuant]:
    return [m for m in model.modules() if isinstance(m, ActQuant)]


@contextlib.contextmanager
def stochastic_precision(
    model: nn.Module, prob: float, generator: torch.Generator | None = None
) -> Iterator[None]:
    """Within the block each activation quantizer runs at full precision with probability
    `prob`, observers stay still and BatchNorm running statistics are restored after, so a
    forward pass is SPEQ's teacher (the student's own weights, less quantization noise)."""
    quants = act_quantizers(model)
    draws = torch.rand(len(quants), generator=generator)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [{k: b.clone() for k, b in m.named_buffers() if b is not None} for m in norms]
    for q, d in zip(quants, draws):
        q.full_precision, q.observe = bool(d < prob), False
    try:
        yield
    finally:
        for q in quants:
            q.full_precision, q.observe = False, True
        with torch.no_grad():
            for m, s in zip(norms, saved):
                for k, b in m.named_buffers():
                    b.copy_(s[k])


@contextlib.contextmanager
def export_mode(model: nn.Module) -> Iterator[None]:
    """Freeze weight scales into constants and keep activation quantizers on 8-bit ONNX
    ranges, for tracing to ONNX."""
    layers = [m for m in model.modules() if isinstance(m, QuantLayer)]
    for m in layers:
        m.frozen_scale = weight_scale(m.layer.weight, m.bits)
        if m.act is not None and bool(m.act.seen):
            m.act.frozen = m.act.qparams()
    try:
        yield
    finally:
        for m in layers:
            m.frozen_scale = None
            if m.act is not None:
                m.act.frozen = None


def quantized_layers(model: nn.Module) -> Sequence[str]:
    return [name for name, m in model.named_modules() if isinstance(m, QuantLayer)]
