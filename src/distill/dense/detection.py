"""Anchor-free detection: FCOS-style targets and loss, decoding, NMS and COCO-style mAP.

Tian et al. 2019 (FCOS): every feature-map location (a *point*) predicts class scores, the
distances (l, t, r, b) from the point to the box's sides, and a centerness logit. Here:

- a ground-truth box goes to pyramid level 0 (stride 4) when its longer side is at most
  `split` pixels, else to level 1 (stride 8); on its level, the points inside the box and
  within `radius` strides of its centre are positives (centre sampling); a point claimed by
  two boxes takes the smaller;
- loss = sigmoid focal loss (Lin et al. 2017) over classes / #positives
  + GIoU loss (Rezatofighi et al. 2019) on positives weighted by their centerness target
  + BCE of the centerness logit on positives;
- a detection's score is sqrt(sigmoid(class) * sigmoid(centerness)).

The detector's output is one tensor (B, points, C + 5): C class logits, 4 raw distances
(distance = softplus(raw) * stride) and 1 centerness logit, so distillation terms read it as
the model's logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def split_output(out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(class logits (B, A, C), raw distances (B, A, 4), centerness logit (B, A))."""
    return out[..., :-5], out[..., -5:-1], out[..., -1]


def distances(raw: Tensor) -> Tensor:
    """Raw regression outputs -> (l, t, r, b) in units of the level's stride."""
    return F.softplus(raw.float())


def decode(out: Tensor, points: Tensor, strides: Tensor) -> tuple[Tensor, Tensor]:
    """(boxes (B, A, 4) as x1, y1, x2, y2 in pixels, scores (B, A, C))."""
    cls, raw, ctr = split_output(out.float())
    d = distances(raw) * strides[:, None]
    boxes = torch.cat([points - d[..., :2], points + d[..., 2:]], -1)
    scores = torch.sqrt(torch.sigmoid(cls) * torch.sigmoid(ctr)[..., None])
    return boxes, scores


def giou(a: Tensor, b: Tensor) -> Tensor:
    """Generalised IoU of paired boxes (..., 4) as x1, y1, x2, y2."""
    area_a = (a[..., 2] - a[..., 0]).clamp_min(0) * (a[..., 3] - a[..., 1]).clamp_min(0)
    area_b = (b[..., 2] - b[..., 0]).clamp_min(0) * (b[..., 3] - b[..., 1]).clamp_min(0)
    lt, rb = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    union = area_a + area_b - inter
    iou = inter / union.clamp_min(1e-7)
    hull = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).prod(-1)
    return iou - (hull - union) / hull.clamp_min(1e-7)


def ltrb_giou(d_a: Tensor, d_b: Tensor) -> Tensor:
    """GIoU of two (l, t, r, b) predictions at the same point (translation- and, at one
    stride, scale-invariant, so the point and the stride drop out)."""
    return giou(
        torch.cat([-d_a[..., :2], d_a[..., 2:]], -1), torch.cat([-d_b[..., :2], d_b[..., 2:]], -1)
    )


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """(N, M) IoU matrix of boxes (N, 4) and (M, 4)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    return inter / (area_a[:, None] + area_b[None] - inter).clamp_min(1e-7)


def assign(
    targets: Tensor,
    points: Tensor,
    strides: Tensor,
    levels: Tensor,
    *,
    split: float = 18.0,
    radius: float = 1.5,
) -> tuple[Tensor, Tensor, Tensor]:
    """FCOS targets for a batch. `targets` (B, M, 5) [class, x1, y1, x2, y2], class -1 = none.

    Returns (class per point (B, A), -1 = background; box per point (B, A, 4); the index of
    the assigned ground-truth row (B, A), -1 = none)."""
    cls, boxes = targets[..., 0].long(), targets[..., 1:].float()
    valid = cls >= 0  # (B, M)
    px, py = points[:, 0], points[:, 1]  # (A,)
    x1, y1, x2, y2 = (boxes[..., i][:, None, :] for i in range(4))  # (B, 1, M)
    inside = (px[None, :, None] > x1) & (px[None, :, None] < x2)
    inside &= (py[None, :, None] > y1) & (py[None, :, None] < y2)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    r = radius * strides[None, :, None]
    near = ((px[None, :, None] - cx).abs() < r) & ((py[None, :, None] - cy).abs() < r)
    side = torch.maximum(x2 - x1, y2 - y1)  # (B, 1, M)
    box_level = (side > split).long()
    on_level = levels[None, :, None] == box_level
    ok = inside & near & on_level & valid[:, None, :]  # (B, A, M)
    area = ((x2 - x1) * (y2 - y1)).expand_as(ok)
    area = torch.where(ok, area, torch.full_like(area, float("inf")))
    best_area, best = area.min(-1)  # (B, A)
    has = torch.isfinite(best_area)
    gt_index = torch.where(has, best, torch.full_like(best, -1))
    point_cls = torch.where(has, cls.gather(1, best), torch.full_like(best, -1))
    point_box = boxes.gather(1, best[..., None].expand(-1, -1, 4))
    return point_cls, point_box, gt_index


def sigmoid_focal(
    logits: Tensor, onehot: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Summed sigmoid focal loss (Lin et al. 2017)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    p_t = p * onehot + (1 - p) * (1 - onehot)
    a_t = alpha * onehot + (1 - alpha) * (1 - onehot)
    return (a_t * (1 - p_t) ** gamma * ce).sum()


def detection_loss(
    out: Tensor,
    targets: Tensor,
    points: Tensor,
    strides: Tensor,
    levels: Tensor,
    *,
    split: float = 18.0,
    radius: float = 1.5,
) -> dict[str, Tensor]:
    """{'cls', 'box', 'ctr'} of the module docstring, for a batch of packed outputs."""
    cls_logits, raw, ctr_logit = split_output(out.float())
    point_cls, point_box, _ = assign(targets, points, strides, levels, split=split, radius=radius)
    pos = point_cls >= 0
    n_pos = pos.sum().clamp_min(1).float()
    onehot = torch.zeros_like(cls_logits)
    onehot[pos] = F.one_hot(point_cls[pos], cls_logits.shape[-1]).float()
    loss_cls = sigmoid_focal(cls_logits, onehot) / n_pos
    if not pos.any():
        zero = out.sum() * 0.0
        return {"cls": loss_cls, "box": zero, "ctr": zero}
    p = points[None].expand(len(out), -1, -1)[pos]
    s = strides[None].expand(len(out), -1)[pos][:, None]
    gt = point_box[pos]
    target_d = torch.cat([p - gt[:, :2], gt[:, 2:] - p], -1) / s  # (P, 4), in strides
    lr, tb = target_d[:, [0, 2]], target_d[:, [1, 3]]
    centerness = torch.sqrt(
        (lr.min(-1).values / lr.max(-1).values) * (tb.min(-1).values / tb.max(-1).values)
    )
    pred_d = distances(raw[pos])
    g = ltrb_giou(pred_d, target_d)
    loss_box = ((1 - g) * centerness).sum() / centerness.sum().clamp_min(1e-6)
    loss_ctr = F.binary_cross_entropy_with_logits(ctr_logit[pos], centerness)
    return {"cls": loss_cls, "box": loss_box, "ctr": loss_ctr}


def nms(boxes: Tensor, scores: Tensor, iou: float) -> Tensor:
    """Indices kept by greedy non-maximum suppression, highest score first."""
    order = scores.argsort(descending=True)
    keep = []
    while len(order):
        i = order[0]
        keep.append(int(i))
        if len(order) == 1:
            break
        overlap = box_iou(boxes[i][None], boxes[order[1:]])[0]
        order = order[1:][overlap <= iou]
    return torch.as_tensor(keep, dtype=torch.long)


def postprocess(
    boxes: Tensor,
    scores: Tensor,
    *,
    score_threshold: float = 0.05,
    iou: float = 0.6,
    max_detections: int = 50,
    pre_nms: int = 200,
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per image: (boxes (D, 4), scores (D,), classes (D,)) after class-wise NMS."""
    out = []
    n_cls = scores.shape[-1]
    for b, s in zip(boxes, scores):
        flat = s.flatten()
        keep = (flat > score_threshold).nonzero().flatten()
        keep = keep[flat[keep].argsort(descending=True)[:pre_nms]]
        point, cls = keep // n_cls, keep % n_cls
        kb, ks = b[point], flat[keep]
        chosen = []
        for c in cls.unique():
            rows = (cls == c).nonzero().flatten()
            chosen.append(rows[nms(kb[rows], ks[rows], iou)])
        idx = torch.cat(chosen) if chosen else torch.zeros(0, dtype=torch.long)
        idx = idx[ks[idx].argsort(descending=True)[:max_detections]]
        out.append((kb[idx], ks[idx], cls[idx]))
    return out


def average_precision(tp: Tensor, scores: Tensor, n_gt: int) -> float:
    """COCO's 101-point interpolated AP of detections marked true/false positive."""
    if n_gt == 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    order = scores.argsort(descending=True, stable=True)
    hits = tp[order].float()
    tps, fps = hits.cumsum(0), (1 - hits).cumsum(0)
    recall = tps / n_gt
    precision = tps / (tps + fps)
    envelope = precision.flip(0).cummax(0).values.flip(0)  # best precision at recall >= r
    grid = torch.linspace(0, 1, 101)
    at = torch.searchsorted(recall, grid, right=False)
    sampled = torch.where(at < len(envelope), envelope[at.clamp_max(len(envelope) - 1)], 0.0)
    return float(sampled.mean())


def mean_average_precision(
    detections: list[tuple[Tensor, Tensor, Tensor]],
    targets: Tensor,
    num_classes: int,
    thresholds: tuple[float, ...] = tuple(0.5 + 0.05 * i for i in range(10)),
) -> dict[str, float]:
    """{'map' (mean over IoU 0.5:0.95), 'map50', 'map75'}: per class, detections sorted by
    score greedily match unmatched ground truth of their image at IoU >= threshold; AP is
    averaged over classes that have ground truth."""
    # per class and image: scores (sorted) and the IoU of each detection with each GT box
    pairs: dict[int, list[tuple[Tensor, Tensor]]] = {c: [] for c in range(num_classes)}
    n_gt = [0] * num_classes
    for (boxes, scores, classes), tgt in zip(detections, targets):
        for c in range(num_classes):
            gt = tgt[tgt[:, 0] == c][:, 1:]
            n_gt[c] += len(gt)
            mine = classes == c
            s = scores[mine]
            order = s.argsort(descending=True)
            b = boxes[mine][order]
            ious = box_iou(b, gt) if len(gt) and len(b) else torch.zeros(len(b), len(gt))
            pairs[c].append((s[order], ious))
    per_threshold = []
    for thr in thresholds:
        aps = []
        for c in range(num_classes):
            if n_gt[c] == 0:
                continue
            tp_all, sc_all = [], []
            for s, ious in pairs[c]:
                tp = torch.zeros(len(s), dtype=torch.bool)
                if ious.numel():
                    used = torch.zeros(ious.shape[1], dtype=torch.bool)
                    for i in range(len(s)):
                        cand = ious[i].masked_fill(used, -1.0)
                        j = int(cand.argmax())
                        if cand[j] >= thr:
                            used[j] = True
                            tp[i] = True
                tp_all.append(tp)
                sc_all.append(s)
            aps.append(average_precision(torch.cat(tp_all), torch.cat(sc_all), n_gt[c]))
        per_threshold.append(sum(aps) / max(1, len(aps)))
    out = {"map": sum(per_threshold) / len(per_threshold)}
    named = {0.5: "map50", 0.75: "map75"}
    for thr, value in zip(thresholds, per_threshold):
        for k, name in named.items():
            if abs(thr - k) < 1e-9:
                out[name] = value
    return out


__all__ = [
    "assign",
    "average_precision",
    "box_iou",
    "decode",
    "detection_loss",
    "giou",
    "ltrb_giou",
    "mean_average_precision",
    "nms",
    "postprocess",
    "split_output",
]
