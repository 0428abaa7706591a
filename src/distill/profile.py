"""Cost of a model: parameters, size on disk and CPU latency."""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass on one sample, from PyTorch's flop counter (a MAC = 2 FLOPs).

    Counts the operators the counter knows (matmuls, convolutions, ...); elementwise ops
    such as ReLU are not counted, as in most papers' tables.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, *input_shape))
    model.train(was_training)
    return int(counter.get_total_flops())


def file_size(path: str | Path) -> int:
    return Path(path).stat().st_size


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@torch.no_grad()
def latency_ms(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_size: int = 1,
    warmup: int = 20,
    repeats: int = 200,
    threads: int | None = 1,
    device: str | torch.device = "cpu",
    example: torch.Tensor | None = None,
) -> dict[str, float]:
    """Per-call latency in milliseconds (p50, p95) and samples per second.

    Timed inside the process after `warmup` calls, with `threads` intra-op threads
    (1 by default: batch-1 serving, and steadier numbers on a shared machine). On a CUDA
    `device` each call is timed to its end (the stream is synchronised). The input is
    random normal unless an `example` (one real input, no batch dimension) is given, which
    a model of token ids needs.
    """
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    was_training = model.training
    model.eval()
    if example is not None:
        x = example.unsqueeze(0).expand(batch_size, *example.shape).contiguous().to(device)
    else:
        x = torch.randn(batch_size, *input_shape, device=device)
    try:
        for _ in range(warmup):
            model(x)
        sync()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            sync()
            times.append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(previous)
        model.train(was_training)
    times.sort()
    p50 = statistics.median(times)
    return {
        "p50_ms": p50,
        "p95_ms": times[int(0.95 * (len(times) - 1))],
        "samples_per_s": batch_size * 1e3 / p50,
    }
