"""Modalities: other views of the same samples, for cross-modal distillation.

`data.view` turns every input into the student's modality (what it trains and is evaluated
on); `data.paired` keeps a second modality of the same samples beside it, which the
teacher reads (`batch['paired']`). A teacher trained on signals can so teach a student
that sees spectrograms, or the other way round (Gupta et al. 2016, cross-modal
distillation; the survey's cross-modal section).

Views are computed once per dataset from the raw arrays. Where a view is standardised, the
mean and scale come from the training split and are applied to the test split alike.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from distill.core.errors import ConfigError


def _spectrogram(x: np.ndarray) -> np.ndarray:
    """(N, C, L) signals -> (N, C, F, T) log-magnitude short-time Fourier transforms
    (a 16-point Hann window, hop 2: 9 frequencies)."""
    if x.ndim != 3:
        raise ConfigError(
            f"data view 'spectrogram' needs 1-D signals (channels, length), got samples of "
            f"shape {x.shape[1:]}"
        )
    n, c, length = x.shape
    n_fft = min(16, length)
    t = torch.as_tensor(x, dtype=torch.float32).reshape(n * c, length)
    window = torch.hann_window(n_fft)
    spec = torch.stft(t, n_fft, hop_length=2, window=window, return_complex=True).abs()
    out = torch.log1p(spec)
    return out.reshape(n, c, *out.shape[1:]).numpy()


def _flatten(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) images -> (N, C, H*W) signals read row by row."""
    if x.ndim != 4:
        raise ConfigError(f"data view 'flatten' needs images (C, H, W), got {x.shape[1:]}")
    return x.reshape(x.shape[0], x.shape[1], -1)


def _profiles(x: np.ndarray) -> np.ndarray:
    """(N, 1, H, W) images -> (N, 2, max(H, W)) signals: the mean of each row and of each
    column (zero-padded), a lossy second view of the same image."""
    if x.ndim != 4:
        raise ConfigError(f"data view 'profiles' needs images (C, H, W), got {x.shape[1:]}")
    rows, cols = x.mean(axis=(1, 3)), x.mean(axis=(1, 2))
    size = max(rows.shape[1], cols.shape[1])
    out = np.zeros((x.shape[0], 2, size), dtype=np.float32)
    out[:, 0, : rows.shape[1]] = rows
    out[:, 1, : cols.shape[1]] = cols
    return out


VIEWS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "raw": lambda x: x,
    "spectrogram": _spectrogram,
    "flatten": _flatten,
    "profiles": _profiles,
}
STANDARDISED = {"spectrogram", "profiles"}


def make_view(
    name: str, train: np.ndarray, test: np.ndarray
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """(train, test, per-sample shape) of view `name` of shaped raw arrays (N, *shape)."""
    if name not in VIEWS:
        raise ConfigError(f"unknown data view {name!r}; choose one of {sorted(VIEWS)}")
    a, b = VIEWS[name](train).astype(np.float32), VIEWS[name](test).astype(np.float32)
    if name in STANDARDISED:
        mean, std = a.mean(), a.std() + 1e-6
        a, b = (a - mean) / std, (b - mean) / std
    return a, b, tuple(a.shape[1:])
