"""Segmentation metrics: per-class IoU from a confusion matrix, its mean, pixel accuracy."""

from __future__ import annotations

import torch
from torch import Tensor


def confusion(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """(C, C) counts: row = true class, column = predicted; pixels with target < 0 ignored."""
    keep = target >= 0
    idx = target[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def segmentation_metrics(conf: Tensor) -> dict[str, float]:
    """{'miou': mean over classes present in the data or the predictions of
    TP / (TP + FP + FN), 'pixel_acc'}."""
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    iou = tp[present] / union[present]
    return {
        "miou": float(iou.mean()) if len(iou) else 0.0,
        "pixel_acc": float(tp.sum() / conf.sum().clamp_min(1)),
    }


__all__ = ["confusion", "segmentation_metrics"]
