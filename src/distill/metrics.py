"""Metrics for a classifier and its teacher: task quality, fidelity, calibration, per class.

All functions take logits (N, C) and integer targets (N,) as tensors and return floats or
small dicts, so they can be tested on cases with known answers and reused by reports.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.losses.divergences import kl_rows


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation of two 1-D tensors (ties broken by order)."""
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / (ra.norm() * rb.norm()).clamp_min(1e-12))


def topk_accuracy(logits: Tensor, targets: Tensor, k: int = 1) -> float:
    """Fraction of samples whose target is among the k highest logits."""
    return _topk_hit_rate(logits, targets, k).item()


def nll(logits: Tensor, targets: Tensor) -> float:
    """Mean negative log-likelihood of the targets (cross-entropy)."""
    return _nll(logits, targets).item()


def accuracy_and_nll(logits: Tensor, targets: Tensor) -> tuple[float, float]:
    """(`topk_accuracy` at k=1, `nll`), read back with one host sync (the loop computes
    both at the end of every epoch)."""
    acc, loss = torch.stack([_topk_hit_rate(logits, targets, 1), _nll(logits, targets)]).tolist()
    return acc, loss


def _topk_hit_rate(logits: Tensor, targets: Tensor, k: int) -> Tensor:
    top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
    return (top == targets.unsqueeze(-1)).any(-1).float().mean()


def _nll(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits.float(), targets)


def brier_score(logits: Tensor, targets: Tensor) -> float:
    """Brier 1950: mean over samples of sum_c (p_c - 1[c = y])^2; 0 is perfect, 2 is worst."""
    probs = logits.float().softmax(-1)
    onehot = F.one_hot(targets, probs.shape[-1]).float()
    return (probs - onehot).pow(2).sum(-1).mean().item()


def teacher_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> float:
    """Mean KL(p_teacher || p_student) at `temperature` (no T^2 factor): fidelity to the teacher."""
    log_s = F.log_softmax(student_logits.float() / temperature, -1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, -1)
    return kl_rows(log_t, log_s).mean().item()


def agreement(student_logits: Tensor, teacher_logits: Tensor) -> float:
    """Fraction of samples where student and teacher predict the same top-1 class."""
    return (student_logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean().item()


def reliability(logits: Tensor, targets: Tensor, bins: int = 15) -> dict[str, list[float]]:
    """Per confidence bin (equal width on [0, 1]): count, mean confidence, accuracy."""
    probs = logits.float().softmax(-1)
    confidence, predicted = probs.max(-1)
    correct = (predicted == targets).float()
    # bin b holds confidences in (b/bins, (b+1)/bins]; confidence 0 cannot occur for a max prob.
    index = (confidence * bins).ceil().long().clamp(1, bins) - 1
    count = torch.bincount(index, minlength=bins).float()
    conf_sum = torch.zeros(bins).index_add_(0, index, confidence)
    acc_sum = torch.zeros(bins).index_add_(0, index, correct)
    safe = count.clamp_min(1)
    return {
        "count": count.tolist(),
        "confidence": (conf_sum / safe).tolist(),
        "accuracy": (acc_sum / safe).tolist(),
    }


def expected_calibration_error(logits: Tensor, targets: Tensor, bins: int = 15) -> float:
    """ECE (Naeini et al. 2015; Guo et al. 2017): sum_b |B_b|/N * |acc(B_b) - conf(B_b)|."""
    r = reliability(logits, targets, bins)
    n = sum(r["count"])
    return sum(c / n * abs(a - f) for c, a, f in zip(r["count"], r["accuracy"], r["confidence"]))


def per_class_accuracy(
    logits: Tensor, targets: Tensor, num_classes: int | None = None
) -> list[float]:
    """Accuracy within each true class (NaN for a class absent from `targets`)."""
    num_classes = num_classes or logits.shape[-1]
    correct = (logits.argmax(-1) == targets).float()
    totals = torch.bincount(targets, minlength=num_classes).float()
    hits = torch.zeros(num_classes).index_add_(0, targets, correct)
    return torch.where(
        totals > 0, hits / totals.clamp_min(1), torch.full_like(totals, float("nan"))
    ).tolist()


def negative_transfer(
    distilled: list[float], scratch: list[float], margin: float = 0.0
) -> list[dict[str, float]]:
    """Classes where the distilled student is worse than the scratch student by more than `margin`."""
    return [
        {"class": c, "distilled": d, "scratch": s, "change": d - s}
        for c, (d, s) in enumerate(zip(distilled, scratch))
        if d == d and s == s and d < s - margin  # d == d skips NaN
    ]


def significant_drops(
    student_correct: Tensor,
    scratch_correct: Tensor,
    targets: Tensor,
    *,
    alpha: float = 0.05,
    margin: float = 0.0,
) -> list[dict[str, float]]:
    """Classes where the distilled student is significantly worse than the scratch student.

    Both models are scored on the same test samples, so each class is a paired comparison:
    an exact one-sided McNemar test on the samples where they disagree (b: only scratch
    right, c: only the student right; p = P(Binomial(b + c, 1/2) >= b)), with Holm's
    correction over the classes at family-wise level `alpha` (McNemar 1947; Holm 1979).
    A class is flagged only when its drop is also larger than `margin` (accuracy, 0..1):
    one or two samples of a hundred are noise, not negative transfer."""
    from scipy.stats import binomtest

    rows = []
    for c in torch.unique(targets).tolist():
        mask = targets == c
        s, r = student_correct[mask].bool(), scratch_correct[mask].bool()
        only_scratch, only_student = int((r & ~s).sum()), int((s & ~r).sum())
        n = only_scratch + only_student
        p = binomtest(only_scratch, n, 0.5, alternative="greater").pvalue if n else 1.0
        d, sc = float(s.float().mean()), float(r.float().mean())
        rows.append(
            {
                "class": int(c),
                "distilled": d,
                "scratch": sc,
                "change": d - sc,
                "samples": int(mask.sum()),
                "p_value": float(p),
            }
        )
    flagged, m = [], len(rows)
    for rank, row in enumerate(sorted(rows, key=lambda r: r["p_value"])):
        if row["p_value"] > alpha / (m - rank):  # Holm: stop at the first non-rejection
            break
        if row["change"] < -margin:
            flagged.append(row)
    return sorted(flagged, key=lambda r: r["class"])


def classification_report(
    logits: Tensor, targets: Tensor, teacher_logits: Tensor | None = None, *, bins: int = 15
) -> dict:
    """Every task, calibration and (with a teacher) fidelity metric in one dict."""
    out = {
        "top1": topk_accuracy(logits, targets, 1),
        "top5": topk_accuracy(logits, targets, 5),
        "nll": nll(logits, targets),
        "brier": brier_score(logits, targets),
        "ece": expected_calibration_error(logits, targets, bins),
        "reliability": reliability(logits, targets, bins),
        "per_class": per_class_accuracy(logits, targets),
    }
    if teacher_logits is not None:
        out["agreement"] = agreement(logits, teacher_logits)
        out["teacher_kl"] = teacher_kl(logits, teacher_logits)
    return out
