"""Feature losses from the peers' catalogues (torchdistill, mdistiller) that need more than
two feature maps: the teacher's classifier or BatchNorm, several stages, a variance head.

They read a model's own tensors through taps ('head.weight', 'bn.bias': see
`distill.taps.Tap`), so no model is rewritten. Feature maps are (N, C, *positions): 1-D
signals and 2-D images alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.losses.divergences import at_least_float32, kl_rows


def _f32(x: Tensor) -> Tensor:
    return at_least_float32(x)


def _parts(value: object, names: Sequence[str], loss: str) -> tuple[Tensor, ...]:
    """`value` as the tuple of tensors a loss reads, or an error saying what to tap."""
    if not isinstance(value, (tuple, list)) or len(value) != len(names):
        raise ValueError(f"{loss} reads a list [{', '.join(names)}] on this side")
    return tuple(value)


# ----------------------------------------------------------------------------- OFD
def ofd_margin(bn_weight: Tensor, bn_bias: Tensor) -> Tensor:
    """Per-channel margin of OFD (Heo et al. 2019): E[x | x < 0] for the pre-ReLU response
    x ~ N(beta, gamma^2) that a BatchNorm with weight gamma and bias beta gives, i.e.
    beta - |gamma| phi(beta/|gamma|) / Phi(-beta/|gamma|); -3|gamma| where Phi(-beta/|gamma|)
    <= 0.001 (a channel that is almost never negative), as in the authors' code."""
    std, mean = _f32(bn_weight.detach()).abs(), _f32(bn_bias.detach())
    z = mean / std.clamp_min(1e-12)
    cdf = 0.5 * torch.erfc(z / math.sqrt(2.0))  # Phi(-z)
    pdf = torch.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)
    margin = mean - std * pdf / cdf.clamp_min(1e-12)
    return torch.where(cdf > 1e-3, margin, -3.0 * std)


def ofd_loss(student: Tensor, teacher: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """A Comprehensive Overhaul of Feature Distillation (Heo et al. 2019, ICCV).

    Both sides are pre-ReLU features (tap the BatchNorm before the ReLU; the student side
    through an adapter to the teacher's channels). The teacher's negative responses are
    raised to the margin m (`ofd_margin`, from its BatchNorm: teacher: [bn, bn.weight,
    bn.bias]): t' = max(t, m). The partial L2 skips positions where both are already
    "off" (s <= t' <= 0), since the ReLU makes them equal:

        L = sum over elements of (s - t')^2 [s > t' or t' > 0],  / N

    The authors' code also divides by 1000 (docs/conventions.md)."""
    feat, weight, bias = _parts(teacher, ("feature", "bn.weight", "bn.bias"), "ofd (teacher)")
    if student.shape != feat.shape:
        raise ValueError(
            f"ofd: student {tuple(student.shape)} and teacher {tuple(feat.shape)} differ; add "
            f"an adapter (adapter: conv1x1)"
        )
    margin = ofd_margin(weight, bias).reshape(1, -1, *([1] * (feat.dim() - 2)))
    s, t = _f32(student), torch.maximum(_f32(feat.detach()), margin)
    keep = (s > t) | (t > 0)
    return ((s - t).pow(2) * keep).sum() / s.shape[0]


# ----------------------------------------------------------------------------- SRD
def srd_loss(
    student: Tensor,
    teacher: tuple[Tensor, Tensor, Tensor],
    *,
    feature_weight: float = 1.0,
    regression_weight: float = 1.0,
    temperature: float = 1.0,
) -> Tensor:
    """Softmax regression representation learning (Yang et al. 2021, ICLR).

    The student's penultimate feature, mapped to the teacher's width by the term's adapter
    (h_s), is matched to the teacher's (h_t) directly and through the teacher's own frozen
    classifier (W, b): teacher: [head:input, head.weight, head.bias].

        L = feature_weight * mean (h_s - h_t)^2
            + regression_weight * T^2 * KL(softmax((W h_t + b) / T) || softmax((W h_s + b) / T))
    """
    feat, weight, bias = _parts(teacher, ("head:input", "head.weight", "head.bias"), "srd")
    if student.shape != feat.shape:
        raise ValueError(
            f"srd: student feature {tuple(student.shape)} and teacher {tuple(feat.shape)} "
            f"differ; add an adapter (adapter: linear)"
        )
    h_s, h_t = _f32(student).flatten(1), _f32(feat.detach()).flatten(1)
    w, b = _f32(weight.detach()), _f32(bias.detach())
    log_s = F.log_softmax(F.linear(h_s, w, b) / temperature, -1)
    log_t = F.log_softmax(F.linear(h_t, w, b) / temperature, -1)
    regression = kl_rows(log_t, log_s).mean() * temperature**2
    return feature_weight * (h_s - h_t).pow(2).mean() + regression_weight * regression


# ----------------------------------------------------------------------------- PAD
class PADLoss(nn.Module):
    """Prime-aware adaptive distillation (Zhang et al. 2020, ECCV), L2 form.

    A variance head on the student's embedding (linear + BatchNorm, as in the authors'
    code) predicts a log-variance per dimension; samples the student finds hard get a large
    variance and so less weight, the log-variance term keeps it from growing without cause:

        L = mean over rows and dims of (t - s)^2 / (eps + exp(v)) + v,   v = head(s)

    Student and teacher embeddings need the same width (an adapter maps them)."""

    def __init__(
        self, student_shape: Sequence[int], teacher_shape: Sequence[int], *, eps: float = 1e-6
    ):
        super().__init__()
        if tuple(student_shape) != tuple(teacher_shape):
            raise ValueError(
                f"pad: student {tuple(student_shape)} and teacher {tuple(teacher_shape)} "
                f"embeddings differ; add an adapter (adapter: linear)"
            )
        width = math.prod(student_shape[1:])
        self.variance = nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width))
        self.eps = eps

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        s, t = _f32(student).flatten(1), _f32(teacher.detach()).flatten(1)
        log_var = self.variance(s)
        return ((t - s).pow(2) / (self.eps + log_var.exp()) + log_var).mean()


# ----------------------------------------------------------------------------- ICKD
def ickd_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Inter-channel correlation (Liu et al. 2021, ICCV, ICKD; torchdistill's ChSimLoss).

    G = F F^T over positions, (N, C, C): how each pair of channels co-activates, with each
    row L2-normalised as in the authors' code; then ||G_s - G_t||_F^2 / C^2, mean over the
    batch (the paper's 1/c^2). Channel counts must match (an adapter maps the student)."""
    if student.shape[:2] != teacher.shape[:2]:
        raise ValueError(
            f"ickd: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} need the "
            f"same batch and channels; add an adapter (adapter: conv1x1)"
        )

    def correlation(x: Tensor) -> Tensor:
        x = _f32(x).flatten(2)
        return F.normalize(x @ x.transpose(1, 2), dim=2)

    c = student.shape[1]
    diff = correlation(student) - correlation(teacher.detach())
    return diff.pow(2).sum((1, 2)).mean() / c**2


# ----------------------------------------------------------------------------- KTA affinity
def affinity_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Affinity distillation of Knowledge Adaptation (He et al. 2019, CVPR).

    A_ij = cos(f_i, f_j) between the feature vectors of every pair of positions i, j, so
    the (P x P) affinity is free of the channel counts; L = ||A_s - A_t||_F^2 / P^2, mean
    over the batch. (torchdistill's AffinityLoss compares per-channel outer products
    instead: a different function; docs/conventions.md.) Positions must match."""
    if student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
        raise ValueError(
            f"affinity: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} need "
            f"the same batch and positions (resize one with an adapter's resize: pool)"
        )

    def affinity(x: Tensor) -> Tensor:
        x = F.normalize(_f32(x).flatten(2), dim=1)  # unit vectors over channels
        return x.transpose(1, 2) @ x

    positions = math.prod(student.shape[2:])
    diff = affinity(student) - affinity(teacher.detach())
    return diff.pow(2).sum((1, 2)).mean() / positions**2


# ----------------------------------------------------------------------------- CAT-KD / SDD
def class_contributions(feature: Tensor, weight: Tensor) -> Tensor:
    """(N, classes, positions): what each position adds to each class logit under a linear
    head. For a head on globally pooled features (weight (classes, C)) this is the class
    activation map W F (Zhou et al. 2016) over the positions; for a head on the flattened
    map (weight (classes, C * positions)) it is W_c,(k,p) F_k,p summed over channels k."""
    f = _f32(feature).flatten(2)  # (N, C, P)
    n, c, p = f.shape
    w = _f32(weight)
    if w.shape[1] == c:
        return torch.einsum("qk,nkp->nqp", w, f)
    if w.shape[1] == c * p:
        return torch.einsum("qkp,nkp->nqp", w.reshape(w.shape[0], c, p), f)
    raise ValueError(
        f"the classifier weight {tuple(w.shape)} does not read the feature {tuple(feature.shape)}: "
        f"tap the feature map the head reads (its input before pooling or flattening)"
    )


def _pool_positions(maps: Tensor, spatial: Sequence[int], size: int) -> Tensor:
    """(N, Q, P) maps laid out on `spatial` positions, average-pooled to size^d cells."""
    shaped = maps.reshape(*maps.shape[:2], *spatial)
    pool = F.adaptive_avg_pool1d if len(spatial) == 1 else F.adaptive_avg_pool2d
    return pool(shaped, size).flatten(2)


def cat_kd_loss(
    student: tuple[Tensor, Tensor], teacher: tuple[Tensor, Tensor], *, pool: int = 2
) -> Tensor:
    """Class attention transfer (Guo et al. 2023, CVPR, CAT-KD).

    Each model's class activation maps (`class_contributions` of its last feature map and
    its own classifier weight: [features, head.weight] on both sides; the student's weight
    is trained by this loss too) are average-pooled to `pool` cells per axis and
    L2-normalised per class; L = mean squared difference. It transfers where each class is
    recognised, not the logits. Both sides must have the same classes and spatial layout."""
    f_s, w_s = _parts(student, ("features", "head.weight"), "cat_kd (student)")
    f_t, w_t = _parts(teacher, ("features", "head.weight"), "cat_kd (teacher)")
    if f_s.shape[2:] != f_t.shape[2:] or w_s.shape[0] != w_t.shape[0]:
        raise ValueError(
            f"cat_kd: student {tuple(f_s.shape)} / {w_s.shape[0]} classes and teacher "
            f"{tuple(f_t.shape)} / {w_t.shape[0]} classes need the same positions and classes"
        )
    spatial = f_s.shape[2:]
    cam_s = _pool_positions(class_contributions(f_s, w_s), spatial, pool)
    cam_t = _pool_positions(class_contributions(f_t.detach(), w_t.detach()), spatial, pool)
    return (F.normalize(cam_s, dim=2) - F.normalize(cam_t, dim=2)).pow(2).mean()


def sdd_loss(
    student: tuple[Tensor, Tensor, Tensor],
    teacher: tuple[Tensor, Tensor, Tensor],
    *,
    scales: Sequence[int] = (1, 2, 4),
    temperature: float = 4.0,
    complementary_weight: float = 2.0,
) -> Tensor:
    """Scale decoupled distillation (Wei et al. 2024, CVPR, SDD).

    The last feature map is average-pooled at several scales (1, 2, 4 cells per axis) and
    each cell goes through the model's own classifier (a head on globally pooled features:
    [features, head.weight, head.bias] on both sides), giving global and local logits.
    Hinton KD (T^2 * KL at `temperature`) is taken on every cell; cells where the teacher's
    local top-1 differs from its global top-1 (complementary knowledge: ambiguous local
    evidence) weigh `complementary_weight`, the others 1; mean over all cells."""
    f_s, w_s, b_s = _parts(student, ("features", "head.weight", "head.bias"), "sdd (student)")
    f_t, w_t, b_t = _parts(teacher, ("features", "head.weight", "head.bias"), "sdd (teacher)")
    if w_s.shape[1] != f_s.shape[1] or w_t.shape[1] != f_t.shape[1]:
        raise ValueError(
            "sdd: the classifier must read globally pooled features (weight (classes, C)); "
            "a head on a flattened map gives no local logits"
        )
    f_t, w_t, b_t = f_t.detach(), w_t.detach(), b_t.detach()
    global_t = F.linear(_f32(f_t).flatten(2).mean(-1), _f32(w_t), _f32(b_t)).argmax(-1)
    total, count = f_s.new_zeros((), dtype=torch.float32), 0
    for size in scales:
        cells_s = _pool_positions(_f32(f_s).flatten(2), f_s.shape[2:], size).transpose(1, 2)
        cells_t = _pool_positions(_f32(f_t).flatten(2), f_t.shape[2:], size).transpose(1, 2)
        z_s = F.linear(cells_s, _f32(w_s), _f32(b_s)) / temperature  # (N, cells, classes)
        z_t = F.linear(cells_t, _f32(w_t), _f32(b_t)) / temperature
        log_s, log_t = F.log_softmax(z_s, -1), F.log_softmax(z_t, -1)
        per_cell = kl_rows(log_t, log_s) * temperature**2
        weight = torch.where(z_t.argmax(-1) == global_t[:, None], 1.0, complementary_weight)
        total = total + (weight * per_cell).sum()
        count += per_cell.numel()
    return total / count


# ----------------------------------------------------------------------------- KD-SVD
def _singular(feature: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The top-k right singular vectors of each sample's (C, positions) map, as unit columns
    (N, P, k), and its top-k singular values, L2-normalised (N, k)."""
    x = _f32(feature).flatten(2)
    if x.requires_grad:  # the SVD's backward divides by gaps between singular values
        x.register_hook(lambda g: torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0))
    _, values, vh = torch.linalg.svd(x, full_matrices=False)
    if values.shape[1] < k:
        raise ValueError(
            f"kdsvd: a map of shape {tuple(feature.shape)} has only {values.shape[1]} singular "
            f"vectors, fewer than k = {k}"
        )
    return F.normalize(vh[:, :k].transpose(1, 2), dim=1), F.normalize(values[:, :k], dim=1)


def _aligned(v_s: Tensor, v_t: Tensor) -> Tensor:
    """For each teacher singular vector, the student's with the largest |cosine|, its sign
    flipped to agree (singular vectors are defined up to sign and order)."""
    cosine = v_s.transpose(1, 2) @ v_t  # (N, k_s, k_t)
    best = cosine.abs().argmax(1, keepdim=True)  # (N, 1, k_t)
    picked = torch.gather(v_s, 2, best.expand(-1, v_s.shape[1], -1))
    return picked * torch.gather(cosine, 1, best).sign()


def kdsvd_loss(
    student: Sequence[Tensor],
    teacher: Sequence[Tensor],
    *,
    k: int = 1,
    extra: int = 3,
    gamma: float = 8.0,
) -> Tensor:
    """Self-supervised KD using singular value decomposition (Lee, Kim & Song 2018, ECCV).

    Each tapped stage (student: [a, b, ...], teacher the same count, with the same positions
    stage by stage; widths may differ) is compressed to its top singular vectors over the
    positions: k for the teacher, k + `extra` for the student, whose best-matching vectors
    are picked and sign-aligned to the teacher's; both are scaled by the teacher's
    normalised singular values. What is transferred is how consecutive stages relate: an
    RBF kernel exp(-(v_i - v_j)^2 / gamma) between every position of stage l and of stage
    l-1, per singular vector; L = sum of the squared kernel differences / N. Gradients
    through the SVD that are not finite (repeated singular values) are dropped, as in the
    authors' code."""
    if len(student) != len(teacher) or len(student) < 2:
        raise ValueError("kdsvd reads two or more stages on each side: student: [a, b]")
    total, previous = None, None
    for f_s, f_t in zip(student, teacher):
        if f_s.shape[0] != f_t.shape[0] or f_s.shape[2:] != f_t.shape[2:]:
            raise ValueError(
                f"kdsvd: student stage {tuple(f_s.shape)} and teacher stage {tuple(f_t.shape)} "
                f"need the same batch and positions"
            )
        v_t, s_t = _singular(f_t.detach(), k)
        v_s = _aligned(_singular(f_s, k + extra)[0], v_t)
        v_t, v_s = v_t * s_t[:, None], v_s * s_t[:, None]
        if previous is not None:
            prev_s, prev_t = previous
            rbf_s = torch.exp(-(v_s[:, :, None] - prev_s[:, None]).pow(2) / gamma)
            rbf_t = torch.exp(-(v_t[:, :, None] - prev_t[:, None]).pow(2) / gamma)
            term = (rbf_s - rbf_t).pow(2).sum() / f_s.shape[0]
            total = term if total is None else total + term
        previous = v_s, v_t
    return total


# ----------------------------------------------------------------------------- ReviewKD
def _conv(dims: int) -> type[nn.Module]:
    return nn.Conv1d if dims == 1 else nn.Conv2d


def _norm(dims: int) -> type[nn.Module]:
    return nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d


class _AttentionFusion(nn.Module):
    """ReviewKD's attention based fusion (ABF): a stage's feature (1x1 conv to `mid`
    channels) is mixed with the fused feature from the deeper stage, upsampled, by two
    per-position attention weights; a 3x3 conv maps the mix to the teacher's channels."""

    def __init__(self, c_in: int, mid: int, c_out: int, dims: int, fuse: bool):
        super().__init__()
        conv, norm = _conv(dims), _norm(dims)
        self.reduce = nn.Sequential(conv(c_in, mid, 1, bias=False), norm(mid))
        self.out = nn.Sequential(conv(mid, c_out, 3, padding=1, bias=False), norm(c_out))
        self.attention = nn.Sequential(conv(2 * mid, 2, 1), nn.Sigmoid()) if fuse else None

    def forward(self, x: Tensor, deeper: Tensor | None) -> tuple[Tensor, Tensor]:
        x = self.reduce(x)
        if self.attention is not None and deeper is not None:
            deeper = F.interpolate(deeper, size=x.shape[2:], mode="nearest")
            w = self.attention(torch.cat([x, deeper], 1))
            x = x * w[:, :1] + deeper * w[:, 1:2]
        return self.out(x), x


def hierarchical_context_loss(
    student: Tensor, teacher: Tensor, *, levels: Sequence[int] = (4, 2, 1)
) -> Tensor:
    """ReviewKD's HCL: MSE of the maps plus, for each pyramid level k smaller than the map,
    the MSE of both maps average-pooled to k cells per axis, weighted 1/2, 1/4, ...; divided
    by the sum of the weights."""
    pool = F.adaptive_avg_pool1d if student.dim() == 3 else F.adaptive_avg_pool2d
    s, t = _f32(student), _f32(teacher.detach())
    loss, weight, total = F.mse_loss(s, t), 1.0, 1.0
    for k in levels:
        if k >= s.shape[2]:
            continue
        weight /= 2.0
        loss = loss + weight * F.mse_loss(pool(s, k), pool(t, k))
        total += weight
    return loss / total


class ReviewKDLoss(nn.Module):
    """Distilling knowledge via knowledge review (Chen et al. 2021, CVPR, ReviewKD).

    Reads several stages on each side (student: [stage1, ..., stageK], teacher the same
    count, shallow to deep, with matching positions). Going from the deepest stage up, each
    student stage is fused with what the deeper stages gave (`_AttentionFusion`): a
    shallow teacher stage is reviewed by student knowledge from several levels. Each fused
    map is compared with its teacher stage by `hierarchical_context_loss`; the loss is the
    sum over stages. The fusion modules join the optimizer."""

    def __init__(
        self,
        student_shape: Sequence[Sequence[int]],
        teacher_shape: Sequence[Sequence[int]],
        *,
        mid_channels: int = 64,
        levels: Sequence[int] = (4, 2, 1),
    ):
        super().__init__()
        if not student_shape or not isinstance(student_shape[0], (tuple, list)):
            raise ValueError("reviewkd reads a list of stages: student: [a, b, c]")
        if len(student_shape) != len(teacher_shape):
            raise ValueError(
                f"reviewkd: {len(student_shape)} student stages but {len(teacher_shape)} "
                f"teacher stages; list as many on each side"
            )
        for s, t in zip(student_shape, teacher_shape):
            if tuple(s[2:]) != tuple(t[2:]) or len(s) not in (3, 4):
                raise ValueError(
                    f"reviewkd: student stage {tuple(s)} and teacher stage {tuple(t)} need the "
                    f"same positions ((N, C, L) or (N, C, H, W))"
                )
        dims = len(student_shape[0]) - 2
        deep_first = list(zip(student_shape, teacher_shape))[::-1]
        self.fusions = nn.ModuleList(
            _AttentionFusion(s[1], mid_channels, t[1], dims, fuse=i > 0)
            for i, (s, t) in enumerate(deep_first)
        )
        self.levels = tuple(levels)

    def forward(self, student: Sequence[Tensor], teacher: Sequence[Tensor]) -> Tensor:
        fused, deeper = [], None
        for fusion, x in zip(self.fusions, list(student)[::-1]):
            out, deeper = fusion(_f32(x), deeper)
            fused.append(out)
        pairs = zip(fused[::-1], teacher)
        return sum(hierarchical_context_loss(s, t, levels=self.levels) for s, t in pairs)


__all__ = [
    "PADLoss",
    "ReviewKDLoss",
    "affinity_loss",
    "cat_kd_loss",
    "class_contributions",
    "hierarchical_context_loss",
    "ickd_loss",
    "kdsvd_loss",
    "ofd_loss",
    "ofd_margin",
    "sdd_loss",
    "srd_loss",
]
