"""Distillation losses for dense prediction: detectors and segmentation networks.

A detector's output is not one probability vector but, per location, class scores, a box
and an objectness (centerness) score (distill.dense.detection packs them as (B, A, C + 5)),
and most locations are background, so *where* to distil matters. Detection losses here read
that packed output, or pyramid features; segmentation losses read (B, C, H, W) logits or
features. A loss with a `targets` keyword receives the batch's ground truth (boxes or masks).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.dense.detection import box_iou, distances, ltrb_giou, split_output
from distill.losses.divergences import at_least_float32, kl_rows


def _binary_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Elementwise KL between Bernoulli(sigmoid(t / T)) and Bernoulli(sigmoid(s / T))."""
    t = at_least_float32(teacher_logits.detach()) / temperature
    s = at_least_float32(student_logits) / temperature
    p = torch.sigmoid(t)
    return p * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p) * (F.logsigmoid(-t) - F.logsigmoid(-s))


def _check_packed(student: Tensor, teacher: Tensor, name: str) -> None:
    if student.dim() != 3 or student.shape != teacher.shape or student.shape[-1] < 6:
        raise ValueError(
            f"{name} reads packed detector outputs (batch, points, classes + 5) of the same "
            f"shape for student and teacher; got {tuple(student.shape)} and {tuple(teacher.shape)}"
        )


def teacher_objectness(teacher: Tensor) -> Tensor:
    """sqrt(max_c sigmoid(class) * sigmoid(centerness)) per location: the teacher's belief
    that an object is there (its detection score)."""
    cls, _, ctr = split_output(at_least_float32(teacher.detach()))
    return torch.sqrt(torch.sigmoid(cls).max(-1).values * torch.sigmoid(ctr))


def det_cls_kd(
    student: Tensor, teacher: Tensor, *, temperature: float = 2.0, weighting: str = "teacher"
) -> Tensor:
    """Classification-head KD for sigmoid detectors: T^2 * sum over classes of the binary KL
    between the teacher's and the student's per-class probabilities at temperature T.
    Averaged over locations, each weighted by the teacher's objectness (`weighting: teacher`,
    so the many background locations count little) or equally (`none`)."""
    _check_packed(student, teacher, "det_cls_kd")
    kl = _binary_kl(split_output(student)[0], split_output(teacher)[0], temperature).sum(-1)
    if weighting == "none":
        return temperature**2 * kl.mean()
    if weighting != "teacher":
        raise ValueError(f"det_cls_kd weighting must be 'teacher' or 'none', got {weighting!r}")
    w = teacher_objectness(teacher)
    return temperature**2 * (w * kl).sum() / w.sum().clamp_min(1e-6)


def det_box_kd(
    student: Tensor, teacher: Tensor, *, kind: str = "giou", threshold: float = 0.2
) -> Tensor:
    """Box-regression distillation: the student's (l, t, r, b) towards the teacher's at
    locations where the teacher sees an object (objectness > `threshold`), weighted by that
    objectness; GIoU loss (1 - GIoU) or L1 on the distances (in strides)."""
    _check_packed(student, teacher, "det_box_kd")
    w = teacher_objectness(teacher)
    w = torch.where(w > threshold, w, torch.zeros_like(w))
    if not bool(w.any()):
        return student.sum() * 0.0
    d_s = distances(split_output(student)[1])
    d_t = distances(split_output(teacher.detach())[1])
    if kind == "giou":
        per = 1 - ltrb_giou(d_s, d_t)
    elif kind == "l1":
        per = (d_s - d_t).abs().sum(-1)
    else:
        raise ValueError(f"det_box_kd kind must be 'giou' or 'l1', got {kind!r}")
    return (w * per).sum() / w.sum()


def det_obj_kd(student: Tensor, teacher: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Objectness (centerness) KD: binary KL between the teacher's and the student's
    centerness probabilities, averaged over every location."""
    _check_packed(student, teacher, "det_obj_kd")
    kl = _binary_kl(split_output(student)[2], split_output(teacher)[2], temperature)
    return temperature**2 * kl.mean()


def imitation_mask(
    targets: Tensor,
    size: tuple[int, int],
    image_size: int,
    *,
    anchor: float = 4.0,
    psi: float = 0.5,
) -> Tensor:
    """Fine-grained feature imitation mask (Wang et al. 2019, Distilling Object Detectors with
    Fine-grained Feature Imitation). At each location of an (h, w) map sits a square anchor of
    side `anchor` strides; for each ground-truth box, locations whose anchor IoU exceeds
    `psi` times that box's best IoU are near the object. (B, h, w) bool."""
    h, w = size
    stride = image_size / h
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    cx = (xs.flatten().float() + 0.5) * stride
    cy = (ys.flatten().float() + 0.5) * stride
    half = anchor * stride / 2
    anchors = torch.stack([cx - half, cy - half, cx + half, cy + half], -1).to(targets.device)
    mask = torch.zeros(len(targets), h * w, dtype=torch.bool, device=targets.device)
    for b, tgt in enumerate(targets):
        gt = tgt[tgt[:, 0] >= 0][:, 1:].float()
        if len(gt) == 0:
            continue
        iou = box_iou(anchors, gt)  # (h*w, M)
        best = iou.max(0).values.clamp_min(1e-6)
        mask[b] = (iou > psi * best).any(-1)
    return mask.reshape(-1, h, w)


def fg_imitation(
    student: Tensor,
    teacher: Tensor,
    *,
    targets: Tensor,
    image_size: int = 64,
    anchor: float = 4.0,
    psi: float = 0.5,
) -> Tensor:
    """Feature imitation near objects only: sum over masked locations and channels of
    (s - t)^2 / (2 N_p), N_p the number of masked locations (Wang et al. 2019). Give the
    term an adapter (conv1x1) when the widths differ."""
    if student.shape != teacher.shape or student.dim() != 4:
        raise ValueError(
            f"fg_imitation compares (B, C, H, W) maps of one shape (add adapter: conv1x1); "
            f"got {tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    mask = imitation_mask(targets, tuple(student.shape[-2:]), image_size, anchor=anchor, psi=psi)
    n = mask.sum()
    if n == 0:
        return student.sum() * 0.0
    diff = (
        (at_least_float32(student) - at_least_float32(teacher.detach())).pow(2).sum(1)
    )  # (B, H, W)
    return (diff * mask).sum() / (2 * n)


def cwd_loss(student: Tensor, teacher: Tensor, *, temperature: float = 4.0) -> Tensor:
    """Channel-wise distillation (Shu et al. 2021): each channel's activations become a
    distribution over spatial locations, softmax(x / T); KL(teacher || student) * T^2,
    averaged over channels and images. Channels must match (adapter: conv1x1)."""
    if student.shape[:2] != teacher.shape[:2] or student.dim() < 3:
        raise ValueError(
            f"cwd compares (B, C, ...) maps with the same channels (add adapter: conv1x1); got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    s = at_least_float32(student).flatten(2) / temperature
    t = at_least_float32(teacher.detach()).flatten(2) / temperature
    p_t = F.softmax(t, -1)
    kl = (p_t * (F.log_softmax(t, -1) - F.log_softmax(s, -1))).sum(-1)
    return temperature**2 * kl.mean()


class AdaptiveLevelImitation(nn.Module):
    """Multi-level feature distillation with learnt level weights (in the spirit of MSFAD's
    adaptive multi-scale weighting). Each pyramid level l has a 1x1 adapter and an imitation
    loss L_l (foreground-masked, `fg_imitation`, or `cwd`); levels are combined with learnt
    uncertainty weights (Kendall et al. 2018): sum_l exp(-s_l) L_l + s_l, so a level whose
    loss stays large is down-weighted instead of dominating. Reads lists of layers."""

    def __init__(
        self,
        student_shape: Sequence[Sequence[int]],
        teacher_shape: Sequence[Sequence[int]],
        *,
        kind: str = "fg",
        image_size: int = 64,
        temperature: float = 4.0,
    ):
        super().__init__()
        if not isinstance(student_shape[0], (tuple, list)) or len(student_shape) != len(
            teacher_shape
        ):
            raise ValueError("adaptive_levels reads the same number of student and teacher layers")
        if kind not in ("fg", "cwd"):
            raise ValueError(f"adaptive_levels kind must be 'fg' or 'cwd', got {kind!r}")
        self.adapters = nn.ModuleList(
            nn.Conv2d(s[1], t[1], 1) for s, t in zip(student_shape, teacher_shape)
        )
        self.log_var = nn.Parameter(torch.zeros(len(student_shape)))
        self.kind, self.image_size, self.temperature = kind, image_size, temperature

    def level_losses(
        self, student: Sequence[Tensor], teacher: Sequence[Tensor], targets: Tensor
    ) -> list[Tensor]:
        out = []
        for adapter, s, t in zip(self.adapters, student, teacher):
            s = adapter(s.float())
            if self.kind == "fg":
                out.append(fg_imitation(s, t, targets=targets, image_size=self.image_size))
            else:
                out.append(cwd_loss(s, t, temperature=self.temperature))
        return out

    def forward(
        self, student: Sequence[Tensor], teacher: Sequence[Tensor], *, targets: Tensor
    ) -> Tensor:
        losses = self.level_losses(student, teacher, targets)
        total = self.log_var.sum() * 0.0
        for s_l, loss in zip(self.log_var, losses):
            total = total + torch.exp(-s_l) * loss + s_l
        return total


# ---------------------------------------------------------------------- segmentation
def pixel_kd(student: Tensor, teacher: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Pixel-wise KD: T^2 KL(softmax(t / T) || softmax(s / T)) over classes at every pixel,
    averaged over pixels. Logits (B, C, H, W)."""
    if student.shape != teacher.shape or student.dim() != 4:
        raise ValueError(
            f"pixel_kd compares (B, C, H, W) logits of one shape; got {tuple(student.shape)} and "
            f"{tuple(teacher.shape)}"
        )
    s = F.log_softmax(at_least_float32(student) / temperature, 1)
    t = F.log_softmax(at_least_float32(teacher.detach()) / temperature, 1)
    return temperature**2 * kl_rows(t, s, dim=1).mean()


def _affinity(x: Tensor, grid: int, rel_eps: float = 1e-3) -> Tensor:
    nodes = F.adaptive_avg_pool2d(at_least_float32(x), grid).flatten(2)  # (B, C, g*g)
    # unit length through v / sqrt(|v|^2 + eps^2), eps a thousandth of the image's typical
    # node norm: F.normalize away from 0, but a node that pools to exactly zero (an empty
    # region) gets a bounded gradient instead of 1/1e-12, which overflows in float16
    sq = nodes.pow(2).sum(1, keepdim=True)
    eps = rel_eps * sq.detach().mean(-1, keepdim=True).sqrt() + 1e-12
    nodes = nodes * torch.rsqrt(sq + eps**2)
    return nodes.transpose(1, 2) @ nodes  # (B, g*g, g*g)


def pairwise_affinity(student: Tensor, teacher: Tensor, *, grid: int = 8) -> Tensor:
    """Pair-wise (pixel-to-pixel) distillation (Liu et al. 2019, Structured Knowledge
    Distillation for Semantic Segmentation): features pooled to a grid x grid set of nodes,
    cosine affinity between every pair of nodes, MSE between the two affinity maps. Widths
    may differ (the affinity is C-free)."""
    if student.dim() != 4 or teacher.dim() != 4 or student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"pairwise_affinity reads (B, C, H, W) features; got {tuple(student.shape)} and "
            f"{tuple(teacher.shape)}"
        )
    return (_affinity(student, grid) - _affinity(teacher.detach(), grid)).pow(2).mean()


class CIRKDLoss(nn.Module):
    """Cross-image relational KD (Yang et al. 2022, CIRKD). Pixel embeddings (a 1x1
    projection of the student's feature to the teacher's width, L2-normalised) are compared
    not only within an image but against a memory bank filled from other images:

    - pixel-to-pixel: for sampled pixels i, p(i, k) = softmax_k(z_i . m_k / tau) over teacher
      pixel embeddings m_k in the memory (plus this batch's); KL(p_teacher || p_student);
    - pixel-to-region: the same against region embeddings, the teacher's mean embedding of
      each class present in an image (classes from the ground-truth mask).

    The memory is a FIFO queue updated with the teacher's embeddings after each training call.
    """

    def __init__(
        self,
        student_shape: Sequence[int],
        teacher_shape: Sequence[int],
        *,
        memory: int = 2048,
        regions: int = 512,
        pixels: int = 256,
        tau: float = 0.1,
        region_tau: float = 0.1,
        region_weight: float = 1.0,
    ):
        super().__init__()
        if len(student_shape) != 4 or len(teacher_shape) != 4:
            raise ValueError("cirkd reads (B, C, H, W) features of student and teacher")
        c_t = int(teacher_shape[1])
        self.project = nn.Conv2d(int(student_shape[1]), c_t, 1)
        self.register_buffer("pixel_bank", torch.zeros(memory, c_t))
        self.register_buffer("region_bank", torch.zeros(regions, c_t))
        self.register_buffer("counts", torch.zeros(2, dtype=torch.long))  # items ever written
        self.pixels, self.tau, self.region_tau = pixels, tau, region_tau
        self.region_weight = region_weight

    @staticmethod
    def _push(bank: Tensor, count: Tensor, items: Tensor) -> None:
        n = len(bank)
        items = items[-n:]
        idx = (count + torch.arange(len(items), device=bank.device)) % n
        bank[idx] = items
        count += len(items)

    def _relation(self, s: Tensor, t: Tensor, contrast: Tensor, tau: float) -> Tensor:
        log_s = F.log_softmax(s @ contrast.t() / tau, -1)
        log_t = F.log_softmax(t @ contrast.t() / tau, -1)
        return kl_rows(log_t, log_s).mean()

    def forward(self, student: Tensor, teacher: Tensor, *, targets: Tensor) -> Tensor:
        s = F.normalize(self.project(student.float()), dim=1)
        t = F.normalize(teacher.detach().float(), dim=1)
        if s.shape[-2:] != t.shape[-2:]:
            s = F.interpolate(s, size=t.shape[-2:], mode="bilinear")
        b, c, h, w = t.shape
        s_pix = s.permute(0, 2, 3, 1).reshape(-1, c)
        t_pix = t.permute(0, 2, 3, 1).reshape(-1, c)
        g = torch.Generator().manual_seed(int(self.counts[0]))
        pick = torch.randperm(len(t_pix), generator=g)[: self.pixels].to(t.device)
        s_i, t_i = s_pix[pick], t_pix[pick]
        filled = int(min(self.counts[0], len(self.pixel_bank)))
        contrast = torch.cat([self.pixel_bank[:filled], t_i])
        loss = self._relation(s_i, t_i, contrast, self.tau)
        labels = F.interpolate(targets[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
        regions = []
        for img in range(b):
            for cls in labels[img].unique():
                if cls < 0:
                    continue
                sel = labels[img] == cls
                regions.append(F.normalize(t[img][:, sel].mean(1), dim=0))
        regions_t = torch.stack(regions) if regions else t_i[:0]
        filled_r = int(min(self.counts[1], len(self.region_bank)))
        region_contrast = torch.cat([self.region_bank[:filled_r], regions_t])
        if len(region_contrast) > 1:
            loss = loss + self.region_weight * self._relation(
                s_i, t_i, region_contrast, self.region_tau
            )
        if self.training:
            with torch.no_grad():
                self._push(self.pixel_bank, self.counts[0], t_i)
                if len(regions_t):
                    self._push(self.region_bank, self.counts[1], regions_t)
        return loss


__all__ = [
    "AdaptiveLevelImitation",
    "CIRKDLoss",
    "cwd_loss",
    "det_box_kd",
    "det_cls_kd",
    "det_obj_kd",
    "fg_imitation",
    "imitation_mask",
    "pairwise_affinity",
    "pixel_kd",
    "teacher_objectness",
]
