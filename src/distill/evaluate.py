"""Evaluation of a classifier on a dataset: predictions, accuracy and NLL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from distill.core.errors import DataError
from distill.data import load_batch
from distill.data.core import batches_whole
from distill.data.loading import collate_items, is_stream, stream_batches, stream_loader
from distill.metrics import accuracy_and_nll, agreement
from distill.models.mode import set_training
from distill.taps import logits_of

__all__ = [
    "agreement",
    "classification_metrics",
    "evaluate",
    "iter_batches",
    "predict",
    "predict_logits",
    "targets_of",
]


def iter_batches(dataset: Any, batch_size: int, workers: int = 0) -> Iterator[dict[str, Tensor]]:
    """The dataset's batches in order: indexed, through DataLoader workers (samples decoded
    one by one, e.g. images from disk), or as a stream reads them."""
    if is_stream(dataset):
        yield from stream_batches(
            stream_loader(dataset, batch_size=batch_size, workers=workers, pin_memory=False)
        )
        return
    if workers and not batches_whole(dataset):
        loader = DataLoader(
            dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_items
        )
        yield from loader
        return
    for start in range(0, len(dataset), batch_size):
        index = torch.arange(start, min(start + batch_size, len(dataset)))
        yield load_batch(dataset, index)


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: Any,
    *,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
    workers: int = 0,
) -> tuple[Tensor, Tensor]:
    """(logits, targets) for every sample of `dataset`, in order, in eval mode (model mode
    restored). Works on streams too: the targets are read with the inputs."""
    was_training = model.training
    set_training(model, False)
    outs, targets = [], []
    for batch in iter_batches(dataset, batch_size, workers):
        out = model(batch["input"].to(device))
        outs.append(logits_of(out).float().cpu())
        targets.append(batch["target"].cpu())
    set_training(model, was_training)
    if not outs:
        raise DataError("the evaluation data is empty: it yielded no batches")
    if len(outs) == 1:  # (one batch, as a small validation set is: no copies)
        return outs[0], targets[0]
    return torch.cat(outs), torch.cat(targets)


def predict_logits(
    model: nn.Module,
    dataset: Any,
    *,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
    workers: int = 0,
) -> Tensor:
    """Logits for every sample of `dataset`, in order, computed in eval mode."""
    return predict(model, dataset, batch_size=batch_size, device=device, workers=workers)[0]


def targets_of(dataset: Any) -> Tensor:
    if hasattr(dataset, "targets"):
        return torch.as_tensor(dataset.targets)
    if is_stream(dataset):
        return torch.cat([b["target"] for b in iter_batches(dataset, 1024)])
    return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))])


def classification_metrics(logits: Tensor, targets: Tensor) -> dict[str, float]:
    acc, loss = accuracy_and_nll(logits, targets)
    return {"acc": acc, "nll": loss}


def evaluate(
    model: nn.Module,
    dataset: Any,
    *,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
    workers: int = 0,
) -> dict[str, float]:
    """acc and nll of a classifier. Data that scores a model its own way (token data: per
    supervised token, plus perplexity) says so with a `model_metrics` method."""
    own = getattr(dataset, "model_metrics", None)
    if own is not None:
        return own(model, batch_size=batch_size, device=device)
    logits, targets = predict(model, dataset, batch_size=batch_size, device=device, workers=workers)
    return classification_metrics(logits, targets)
