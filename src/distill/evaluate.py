"""Evaluation of a classifier on a dataset: predictions, accuracy and NLL."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from distill.data import load_batch
from distill.metrics import agreement, nll, topk_accuracy
from distill.taps import logits_of

__all__ = ["agreement", "classification_metrics", "evaluate", "predict_logits", "targets_of"]


@torch.no_grad()
def predict_logits(
    model: nn.Module, dataset: Any, *, batch_size: int = 1024, device: str | torch.device = "cpu"
) -> Tensor:
    """Logits for every sample of `dataset`, in order, computed in eval mode (model mode restored)."""
    was_training = model.training
    model.eval()
    outs = []
    for start in range(0, len(dataset), batch_size):
        index = torch.arange(start, min(start + batch_size, len(dataset)))
        batch = load_batch(dataset, index)
        out = model(batch["input"].to(device))
        outs.append(logits_of(out).float().cpu())
    model.train(was_training)
    return torch.cat(outs)


def targets_of(dataset: Any) -> Tensor:
    if hasattr(dataset, "targets"):
        return torch.as_tensor(dataset.targets)
    return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))])


def classification_metrics(logits: Tensor, targets: Tensor) -> dict[str, float]:
    return {"acc": topk_accuracy(logits, targets, 1), "nll": nll(logits, targets)}


def evaluate(
    model: nn.Module, dataset: Any, *, batch_size: int = 1024, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """acc and nll of a classifier; of a language model on token data, per supervised token
    (plus perplexity)."""
    from distill.llm.text import TokenDataset

    if isinstance(dataset, TokenDataset):
        from distill.llm.scheme import lm_metrics

        return lm_metrics(model, dataset, batch_size=min(batch_size, 64), device=device)
    logits = predict_logits(model, dataset, batch_size=batch_size, device=device)
    return classification_metrics(logits, targets_of(dataset))
