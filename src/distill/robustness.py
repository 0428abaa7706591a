"""Robustness: accuracy under adversarial perturbations and under input corruptions.

FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018) attack the model's own
cross-entropy with an L-infinity budget eps; corruptions are the natural shifts a
deployed model meets (noise, shift and scale for 1-D signals, blur and noise for images).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.taps import logits_of


def _grad_sign(
    model: nn.Module, x: Tensor, y: Tensor, loss_fn: Callable[[Tensor], Tensor] | None = None
) -> Tensor:
    """Sign of the gradient w.r.t. the input of `loss_fn(model(x))` (default: label CE)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = logits_of(model(x))
        loss = loss_fn(logits) if loss_fn is not None else F.cross_entropy(logits, y)
        (grad,) = torch.autograd.grad(loss, x)
    return grad.sign()


def fgsm(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, *, clamp: tuple[float, float] | None = None
) -> Tensor:
    """One signed-gradient step of size eps that increases the loss, kept inside `clamp` (the
    data's valid input range, e.g. (0, 1) for images) when given."""
    adv = (x + eps * _grad_sign(model, x, y)).detach()
    return adv.clamp(*clamp) if clamp is not None else adv


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    steps: int = 10,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    loss_fn: Callable[[Tensor], Tensor] | None = None,
    clamp: tuple[float, float] | None = None,
) -> Tensor:
    """Projected gradient ascent in the L-inf ball of radius eps around x, from a random start
    (Madry et al. 2018), on `loss_fn(logits)` (default: cross-entropy with labels y).

    Every iterate is projected back into the ball (and into `clamp`, the valid input range,
    when given), so the result never leaves it."""
    step_size = step_size if step_size is not None else 2.5 * eps / steps

    def project(adv: Tensor) -> Tensor:
        adv = x + (adv - x).clamp(-eps, eps)
        return adv.clamp(*clamp) if clamp is not None else adv

    noise = torch.rand(x.shape, generator=generator).to(x.device) * 2 - 1
    adv = project(x + eps * noise).detach()
    for _ in range(steps):
        adv = project(adv + step_size * _grad_sign(model, adv, y, loss_fn)).detach()
    return adv


def gaussian_noise(x: Tensor, std: float, generator: torch.Generator) -> Tensor:
    return x + std * torch.randn(x.shape, generator=generator).to(x.device)


def shift(x: Tensor, amount: int) -> Tensor:
    """Translate along the last dim by `amount` positions, zero-filled."""
    if amount == 0:
        return x
    out = torch.zeros_like(x)
    if amount > 0:
        out[..., amount:] = x[..., :-amount]
    else:
        out[..., :amount] = x[..., -amount:]
    return out


def box_blur(x: Tensor, size: int = 3) -> Tensor:
    """Mean filter over the spatial dims of (N, C, L) or (N, C, H, W); same size output."""
    pool = {3: F.avg_pool1d, 4: F.avg_pool2d}[x.dim()]
    return pool(x, size, stride=1, padding=size // 2, count_include_pad=False)


def corruptions(
    input_shape: Sequence[int],
) -> dict[str, Callable[[Tensor, torch.Generator], Tensor]]:
    """Named corruptions suited to the input kind: 1-D signals (C, L) or images (C, H, W)."""
    out: dict[str, Callable[[Tensor, torch.Generator], Tensor]] = {
        f"noise {std}": (lambda x, g, std=std: gaussian_noise(x, std, g)) for std in (0.1, 0.3)
    }
    if len(input_shape) == 2:
        out.update({f"shift {a}": (lambda x, g, a=a: shift(x, a)) for a in (2, 5)})
        out.update({f"scale {s}": (lambda x, g, s=s: x * s) for s in (0.7, 1.5)})
    if len(input_shape) == 3:
        out["blur 3x3"] = lambda x, g: box_blur(x, 3)
    return out


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return (logits_of(model(x)).argmax(-1) == y).float().mean().item()


def robustness_report(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: Sequence[float] = (0.01, 0.03, 0.1),
    pgd_steps: int = 10,
    seed: int = 0,
    clamp: tuple[float, float] | None = None,
) -> dict[str, float]:
    """Accuracy when clean, under FGSM and PGD at each eps, and under each corruption.
    Attacks stay inside `clamp`, the data's valid input range, when it has one (images in
    [0, 1]), as in the literature's robustness numbers."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    out = {"clean": _accuracy(model, x, y)}
    for e in eps:
        out[f"fgsm {e}"] = _accuracy(model, fgsm(model, x, y, e, clamp=clamp), y)
        adv = pgd(model, x, y, e, steps=pgd_steps, generator=gen, clamp=clamp)
        out[f"pgd {e}"] = _accuracy(model, adv, y)
    for name, corrupt in corruptions(tuple(x.shape[1:])).items():
        out[name] = _accuracy(model, corrupt(x, gen), y)
    model.train(was_training)
    return out
