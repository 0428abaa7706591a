"""Sample quality without downloads.

- `mmd`: squared maximum mean discrepancy (Gretton et al. 2012) with a sum of RBF kernels
  at several bandwidths, unbiased estimate; for low-dimensional data.
- `frechet_distance`: the Fréchet distance between Gaussians fitted to two feature sets,
  ||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)) (Heusel et al. 2017, FID), here in
  the feature space of a digits classifier trained on the spot (`digits_features`), since
  Inception weights cannot be downloaded.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
from torch import Tensor, nn


def mmd(x: Tensor, y: Tensor, bandwidths: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)) -> float:
    """Unbiased squared MMD between samples x (n, d) and y (m, d); 0 in expectation when
    they come from the same distribution."""
    x, y = x.flatten(1).double(), y.flatten(1).double()

    def k(a, b):
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)

    n, m = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(xx + yy - 2 * kxy.mean())


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature rows a (n, d) and b (m, d)."""
    from scipy import linalg

    a, b = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    c_a, c_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # near-singular products of covariances
        root = np.asarray(linalg.sqrtm(c_a @ c_b)).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(c_a + c_b - 2 * root))


class DigitsClassifier(nn.Module):
    """An MLP on 8x8 digits in [-1, 1]; `features` is its 64-wide penultimate layer."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x.flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@functools.lru_cache(maxsize=1)
def digits_classifier() -> DigitsClassifier:
    """Trained on scikit-learn's digits training split (deterministic, a few seconds);
    about 97 % on the test split. Cached for the process."""
    from distill.data.sources import load_digits

    raw = load_digits()
    x = torch.from_numpy(raw.train[0]).float() * 2 - 1
    y = torch.from_numpy(raw.train[1])
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = DigitsClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    with torch.enable_grad():  # (callers may be inside no_grad)
        _fit(model, opt, x, y, gen)
    return model.eval()


def _fit(model: nn.Module, opt, x: Tensor, y: Tensor, gen: torch.Generator) -> None:
    for _ in range(60):
        for idx in torch.randperm(len(x), generator=gen).split(128):
            noisy = x[idx] + 0.1 * torch.randn(len(idx), 64, generator=gen)  # robust features
            loss = nn.functional.cross_entropy(model(noisy), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


@torch.no_grad()
def digits_features(images: Tensor) -> Tensor:
    """Features of 8x8 images in [-1, 1] (any leading shape (N, 1, 8, 8) or (N, 64))."""
    return digits_classifier().features(images.float().reshape(len(images), 64).clamp(-1, 1))


def sample_quality(fake: Tensor, real: Tensor) -> dict[str, float]:
    """{'fd': ...} for 8x8 images (Fréchet distance in digits-classifier features), else
    {'mmd': ...} (squared MMD on as many real samples as there are fakes)."""
    if tuple(fake.shape[1:]) == (1, 8, 8):
        return {"fd": frechet_distance(digits_features(fake), digits_features(real))}
    return {"mmd": mmd(fake, real[: len(fake)])}
