"""Feature-based losses: the student matches the teacher's intermediate activations.

Inputs are tapped tensors (N, C, *positions) — positions being L for signals, H x W for
images, tokens for transformers — or (N, D). Losses that need equal shapes say so and
suggest an adapter; the teacher side is detached inside. Losses that own parameters
(FT's paraphraser and translator, VID's regressor) are `nn.Module`s built from the two
tensor shapes, so their weights join the optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.losses.divergences import at_least_float32


def _same_positions(student: Tensor, teacher: Tensor, name: str) -> None:
    if student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
        raise ValueError(
            f"{name}: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ in shape "
            f"beyond the channel dim; tap layers with the same spatial size, or add an adapter with "
            f"resize: pool|interpolate"
        )


def attention_map(features: Tensor, p: float = 2.0) -> Tensor:
    """Activation-based attention (Zagoruyko & Komodakis 2017): mean_c |A_c|^p, flattened, L2-normalised."""
    return F.normalize(
        at_least_float32(features).abs().pow(p).mean(1).reshape(features.shape[0], -1), dim=1
    )


def at_loss(student: Tensor, teacher: Tensor, *, p: float = 2.0) -> Tensor:
    """Attention transfer, activation-based (Zagoruyko & Komodakis 2017).

    Mean over batch and positions of (Q_s - Q_t)^2, with Q the normalised spatial attention
    map of each layer (`attention_map`). Channel counts may differ; positions must match.
    This is the mean form used by the CRD benchmark, where its weight is 1000.
    """
    _same_positions(student, teacher, "at")
    return (attention_map(student, p) - attention_map(teacher.detach(), p)).pow(2).mean()


def grad_at_loss(student_grad: Tensor, teacher_grad: Tensor) -> Tensor:
    """Gradient-based attention transfer (Zagoruyko & Komodakis 2017, sec. 3.2).

    The attention is J = d CE / d input; the loss is the mean over samples of
    ||J_s / ||J_s|| - J_t / ||J_t|| ||_2 (the paper scales it by beta / 2 via the weight).
    Read it with `student: input_grad, teacher: input_grad`: the offline scheme then
    computes both input gradients, the student's with double backprop.
    """
    if student_grad.shape != teacher_grad.shape:
        raise ValueError(
            f"grad_at: input gradients differ in shape {tuple(student_grad.shape)} vs {tuple(teacher_grad.shape)}"
        )
    n = student_grad.shape[0]
    s = F.normalize(at_least_float32(student_grad).reshape(n, -1), dim=1)
    t = F.normalize(at_least_float32(teacher_grad.detach()).reshape(n, -1), dim=1)
    return (s - t).norm(dim=1).mean()


def _poly_kernel(a: Tensor, b: Tensor) -> Tensor:
    """(N, Ca, Cb) matrix of (a_i . b_j)^2 between the channel vectors of a and b."""
    return (a @ b.transpose(1, 2)).pow(2)


def nst_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Neuron selectivity transfer (Huang & Wang 2017): MMD between channel distributions.

    Each channel's activation over positions is one sample of a distribution (L2-normalised);
    the squared MMD with the polynomial kernel k(x, y) = (x . y)^2 is
    mean k(t, t') + mean k(s, s') - 2 mean k(s, t), averaged over the batch. Channel counts
    may differ; positions must match. CRD benchmark weight: 50.
    """
    _same_positions(student, teacher, "nst")
    s = F.normalize(at_least_float32(student).flatten(2), dim=2)
    t = F.normalize(at_least_float32(teacher.detach()).flatten(2), dim=2)
    return _poly_kernel(t, t).mean() + _poly_kernel(s, s).mean() - 2 * _poly_kernel(s, t).mean()


def pkt_loss(student: Tensor, teacher: Tensor, *, eps: float = 1e-7) -> Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas 2018).

    Cosine similarities between the batch's embeddings, mapped to [0, 1] and normalised per
    row into conditional probabilities p(j | i); the loss is KL(p_t || p_s) summed over j,
    averaged over all N^2 entries as in the authors' code. Widths may differ.
    CRD benchmark weight: 30000.
    """
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"pkt: batches differ in shape ({student.shape[0]} vs {teacher.shape[0]} samples)"
        )
    if student.shape[0] < 2:
        raise ValueError(
            "pkt: p(j | i) is a distribution over the other samples of the batch and needs 2 "
            "or more rows (with one row the loss is 0 whatever the student does)"
        )

    def conditional(x: Tensor) -> Tensor:
        x = F.normalize(at_least_float32(x).reshape(x.shape[0], -1), dim=1)
        sim = (x @ x.t() + 1.0) / 2.0
        return sim / sim.sum(1, keepdim=True)

    p_s, p_t = conditional(student), conditional(teacher.detach())
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


def ab_loss(student: Tensor, teacher: Tensor, *, margin: float = 1.0) -> Tensor:
    """Activation boundaries (Heo et al. 2019), on pre-ReLU features of equal shape.

    Where the teacher neuron is active (t > 0) the student is pushed above +margin, where it
    is inactive below -margin, with a squared hinge: (s - m)^2 [t > 0, s < m] +
    (s + m)^2 [t <= 0, s > -m], averaged over elements. Tap the layer *before* the ReLU
    (e.g. the BatchNorm) on both sides and add an adapter if channel counts differ.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"ab: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ in shape; "
            f"add an adapter (adapter: conv1x1) to map the student to the teacher"
        )
    s, active = at_least_float32(student), teacher.detach() > 0
    up = (s - margin).pow(2) * (active & (s < margin))
    down = (s + margin).pow(2) * (~active & (s > -margin))
    return (up + down).mean()


def cosine_loss(student: Tensor, teacher: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """1 - cos(student, teacher) along the last dim, averaged over rows (Sanh et al. 2019, DistilBERT).

    For hidden states (N, L, D) each token is a row; `mask` (N, L) keeps real tokens.
    Widths must match (add an adapter otherwise).
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"cosine: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ in shape; "
            f"add an adapter (adapter: linear)"
        )
    per_row = 1.0 - F.cosine_similarity(
        at_least_float32(student), at_least_float32(teacher.detach()), dim=-1, eps=1e-8
    )
    if mask is None:
        return per_row.mean()
    mask = mask.reshape(per_row.shape).to(per_row.dtype)
    return (per_row * mask).sum() / mask.sum().clamp_min(1.0)


def attention_kl_loss(student: Tensor, teacher: Tensor, *, eps: float = 1e-12) -> Tensor:
    """KL(teacher || student) between attention probabilities, per query row.

    Inputs (N, heads, L, L) with rows summing to 1 (softmax outputs, e.g. a transformer's
    attention weights; MiniLM, Wang et al. 2020, and TinyBERT distil these). Averaged over
    batch, heads and queries. Head counts and lengths must match.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"attention_kl: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ in "
            f"shape; pair layers with the same number of heads and tokens"
        )
    s, t = (
        at_least_float32(student).clamp_min(eps),
        at_least_float32(teacher.detach()).clamp_min(eps),
    )
    return (t * (t.log() - s.log())).sum(-1).mean()


def _conv(channels_in: int, channels_out: int, dims: int, kernel: int = 1) -> nn.Module:
    if dims == 0:
        return nn.Linear(channels_in, channels_out)
    conv = {1: nn.Conv1d, 2: nn.Conv2d}[dims]
    return conv(channels_in, channels_out, kernel, padding=kernel // 2)


class VIDLoss(nn.Module):
    """Variational information distillation (Ahn et al. 2019).

    A regressor mu(s) (three 1x1 convolutions with ReLUs) predicts the teacher feature from
    the student's; a learned per-channel variance sigma^2 = softplus(a) + eps makes the loss
    the Gaussian negative log-likelihood 0.5 * ((t - mu)^2 / sigma^2 + log sigma^2),
    averaged over elements. Maximising this bound on I(t; s) lets the student ignore
    teacher channels it cannot predict. CRD benchmark weight: 1.
    """

    def __init__(
        self,
        student_shape: Sequence[int],
        teacher_shape: Sequence[int],
        *,
        init_var: float = 5.0,
        eps: float = 1e-5,
    ):
        super().__init__()
        if tuple(student_shape[2:]) != tuple(teacher_shape[2:]):
            raise ValueError(
                f"vid: student {tuple(student_shape)} and teacher {tuple(teacher_shape)} need the same positions"
            )
        dims, c_s, c_t = len(student_shape) - 2, student_shape[1], teacher_shape[1]
        mid = max(c_s, c_t)
        self.regressor = nn.Sequential(
            _conv(c_s, mid, dims),
            nn.ReLU(),
            _conv(mid, mid, dims),
            nn.ReLU(),
            _conv(mid, c_t, dims),
        )
        # softplus(a) + eps = init_var at the start
        self.log_scale = nn.Parameter(
            torch.full((c_t,), float(torch.log(torch.expm1(torch.tensor(init_var - eps)))))
        )
        self.eps = eps

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        mean = self.regressor(student.float())
        var = F.softplus(self.log_scale) + self.eps
        var = var.reshape((1, -1) + (1,) * (teacher.dim() - 2))
        return (0.5 * ((mean - teacher.detach().float()).pow(2) / var + var.log())).mean()


class FactorTransferLoss(nn.Module):
    """Factor transfer (Kim et al. 2018): match compressed 'factors' of the two feature maps.

    A paraphraser (encoder + decoder, 3x3 convolutions) learns to reconstruct the teacher
    feature through a bottleneck of `rate` x teacher channels; its encoder output is the
    teacher factor. A translator (3x3 convolutions) maps the student feature to a factor of
    the same size. Loss = mean |F_t/||F_t|| - F_s/||F_s|| | (L1 as in the paper, averaged
    over elements as in the CRD benchmark, weight 200) +
    `recon_weight` * the paraphraser's reconstruction MSE. Unlike the paper, which trains
    the paraphraser first in a separate stage, it is trained jointly here on the detached
    teacher features; `recon_weight` keeps it a faithful autoencoder.
    """

    def __init__(
        self,
        student_shape: Sequence[int],
        teacher_shape: Sequence[int],
        *,
        rate: float = 0.5,
        recon_weight: float = 1.0,
    ):
        super().__init__()
        if tuple(student_shape[2:]) != tuple(teacher_shape[2:]):
            raise ValueError(
                f"ft: student {tuple(student_shape)} and teacher {tuple(teacher_shape)} need the same positions"
            )
        dims, c_s, c_t = len(student_shape) - 2, student_shape[1], teacher_shape[1]
        factor = max(1, int(round(c_t * rate)))
        k = 3 if dims else 1
        self.encoder = nn.Sequential(
            _conv(c_t, c_t, dims, k),
            nn.LeakyReLU(0.1),
            _conv(c_t, factor, dims, k),
            nn.LeakyReLU(0.1),
        )
        self.decoder = nn.Sequential(
            _conv(factor, c_t, dims, k), nn.LeakyReLU(0.1), _conv(c_t, c_t, dims, k)
        )
        self.translator = nn.Sequential(
            _conv(c_s, c_s, dims, k),
            nn.LeakyReLU(0.1),
            _conv(c_s, factor, dims, k),
            nn.LeakyReLU(0.1),
        )
        self.recon_weight = recon_weight

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        t = teacher.detach().float()
        factor_t = self.encoder(t)
        recon = F.mse_loss(self.decoder(factor_t), t)
        factor_s = self.translator(student.float())
        # The factor target is detached: the transfer term trains the translator (and student).
        f_t = F.normalize(factor_t.detach().reshape(len(t), -1), dim=1)
        f_s = F.normalize(factor_s.reshape(len(t), -1), dim=1)
        return (f_s - f_t).abs().mean() + self.recon_weight * recon


def _pool(x: Tensor) -> Tensor:
    """(N, C, *positions) -> (N, C) by averaging positions; (N, D) unchanged."""
    x = x.float()
    return x.flatten(2).mean(-1) if x.dim() > 2 else x


class LayerAttentionLoss(nn.Module):
    """Attention over all teacher layers for each student layer (ALP-KD, Passban et al. 2021).

    No hand-picked layer pairs: every student layer i (pooled over positions and projected
    by a learned linear map to the teacher width) attends over all listed teacher layers
    j with weights softmax_j(<s_i, t_j> / sqrt(d)) per sample, and is pulled by MSE toward
    the weighted sum of teacher layers. The teacher layers must share their width after
    pooling (as transformer layers do); the student's may differ. Reads lists of layers:
    `student: [a, b]`, `teacher: [c, d, e]`.
    """

    def __init__(
        self, student_shape: Sequence[Sequence[int]], teacher_shape: Sequence[Sequence[int]]
    ):
        super().__init__()
        if not (isinstance(student_shape[0], Sequence) and isinstance(teacher_shape[0], Sequence)):
            raise ValueError(
                "alp reads lists of layers: set student: [a, b] and teacher: [c, d, e]"
            )
        widths = {shape[1] for shape in teacher_shape}
        if len(widths) != 1:
            raise ValueError(
                f"alp: the teacher layers must share one width after pooling, got widths {sorted(widths)}"
            )
        self.width = widths.pop()
        self.proj = nn.ModuleList(nn.Linear(shape[1], self.width) for shape in student_shape)

    def forward(self, student: Sequence[Tensor], teacher: Sequence[Tensor]) -> Tensor:
        t = torch.stack([_pool(x.detach()) for x in teacher], 1)  # (N, n_teacher, d)
        losses = []
        for proj, feature in zip(self.proj, student):
            s = proj(_pool(feature))  # (N, d)
            weights = torch.softmax(
                (t @ s.unsqueeze(-1)).squeeze(-1) / self.width**0.5, dim=1
            )  # (N, n_teacher)
            target = (weights.unsqueeze(-1) * t).sum(1)
            losses.append((s - target).pow(2).mean())
        return torch.stack(losses).mean()


class OFALoss(nn.Module):
    """One-for-all KD (Hao et al. 2023): intermediate student features taught in logit space.

    For heterogeneous pairs (CNN, MLP, transformer) features are not comparable, logits are.
    A branch head (position pooling, LayerNorm, linear to the class count) turns a student
    layer into logits; those match the teacher's logits with the OFA loss
    -sum_c w_c log p_s,c, where w_c = (p_t,c + 1)^eps - 1 for the target class and p_t,c^eps
    for the others (eps > 1 stresses the target; eps = 1 is soft-target CE). Reads a
    student layer and the teacher's logits; needs the labels (unlabelled rows use the
    teacher's top-1). The branch is training-only and not part of the exported student.
    """

    def __init__(
        self,
        student_shape: Sequence[int],
        teacher_shape: Sequence[int],
        *,
        eps: float = 1.0,
        temperature: float = 1.0,
    ):
        super().__init__()
        if len(teacher_shape) != 2:
            raise ValueError(
                f"ofa: the teacher side must be logits (N, C), got {tuple(teacher_shape)}; set teacher: logits"
            )
        self.branch = nn.Sequential(
            nn.LayerNorm(student_shape[1]), nn.Linear(student_shape[1], teacher_shape[1])
        )
        self.eps, self.temperature = eps, temperature

    def forward(self, student: Tensor, teacher: Tensor, *, targets: Tensor) -> Tensor:
        logits_s = self.branch(_pool(student))
        t = teacher.detach().float()
        p_t = F.softmax(t / self.temperature, dim=-1)
        labels = torch.where(targets >= 0, targets, t.argmax(-1))
        mask = F.one_hot(labels, t.shape[-1]).float()
        weight = (p_t + mask).pow(self.eps) - mask
        return -(weight * F.log_softmax(logits_s / self.temperature, dim=-1)).sum(-1).mean()


class AttentionFeatureLoss(nn.Module):
    """Attention-based feature distillation, pooled form (AFD; Ji, Heo & Park 2021).

    Every teacher layer j chooses which student layers i should imitate it: a query from
    the teacher feature and a key from each student feature (learned linear maps to
    `dim`) give weights alpha_ji = softmax_i(q_j . k_i / sqrt(dim)) per sample; each
    student feature is mapped to teacher j's width by its own linear map, and the loss is
    mean_j sum_i alpha_ji * mean((unit(P_ij s_i) - unit(t_j))^2). Features are pooled over
    positions; layer widths may all differ. Reads lists of layers on both sides. (The
    paper links full feature maps with spatial resizing; this keeps the attention-based
    linking and works on pooled features.)
    """

    def __init__(
        self,
        student_shape: Sequence[Sequence[int]],
        teacher_shape: Sequence[Sequence[int]],
        *,
        dim: int = 64,
    ):
        super().__init__()
        if not (isinstance(student_shape[0], Sequence) and isinstance(teacher_shape[0], Sequence)):
            raise ValueError("afd reads lists of layers: set student: [a, b] and teacher: [c, d]")
        self.query = nn.ModuleList(nn.Linear(t[1], dim) for t in teacher_shape)
        self.key = nn.ModuleList(nn.Linear(s[1], dim) for s in student_shape)
        self.proj = nn.ModuleList(
            nn.ModuleList(nn.Linear(s[1], t[1]) for s in student_shape) for t in teacher_shape
        )
        self.dim = dim

    def forward(self, student: Sequence[Tensor], teacher: Sequence[Tensor]) -> Tensor:
        s_feats = [_pool(x) for x in student]
        keys = torch.stack([k(s) for k, s in zip(self.key, s_feats)], 1)  # (N, n_s, dim)
        losses = []
        for j, t in enumerate(teacher):
            t = F.normalize(_pool(t.detach()), dim=1)
            q = self.query[j](t)  # (N, dim)
            alpha = torch.softmax(
                (keys @ q.unsqueeze(-1)).squeeze(-1) / self.dim**0.5, dim=1
            )  # (N, n_s)
            errors = torch.stack(
                [
                    (F.normalize(p(s), dim=1) - t).pow(2).mean(1)
                    for p, s in zip(self.proj[j], s_feats)
                ],
                1,
            )  # (N, n_s)
            losses.append((alpha * errors).sum(1).mean())
        return torch.stack(losses).mean()


def _as_grid(x: Tensor, tokens: bool = False) -> Tensor:
    """Feature maps (N, C, *spatial) unchanged; with `tokens`, transformer tokens (N, L, D)
    -> (N, D, h, w) when L is a square number of patches, else (N, D, L)."""
    if not tokens or x.dim() != 3:
        return x
    n, length, d = x.shape
    side = math.isqrt(length)
    grid = x.transpose(1, 2)
    return grid.reshape(n, d, side, side) if side * side == length else grid


class MGDLoss(nn.Module):
    """Masked generative distillation (Yang et al. 2022): the student does not copy the
    teacher's feature, it regenerates it from a masked version of its own.

    Random positions of the (channel-aligned) student feature are zeroed with probability
    `ratio`; a small generator (3x3 conv, ReLU, 3x3 conv, so neighbours fill the holes)
    reconstructs the teacher's full feature, matched by MSE. Works on CNN maps (N, C, L) /
    (N, C, H, W) and, with `tokens: true`, on ViT tokens (N, L, D), laid out on their patch
    grid; the surveys' layer-specific recipe for vision transformers mimics shallow layers
    directly (`fitnet`) and regenerates deep ones with this loss.
    """

    def __init__(
        self,
        student_shape: Sequence[int],
        teacher_shape: Sequence[int],
        *,
        ratio: float = 0.5,
        tokens: bool = False,
    ):
        super().__init__()
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"mgd: ratio must be in [0, 1), got {ratio}")
        self.tokens = tokens
        s = _as_grid(torch.zeros(1, *student_shape[1:]), tokens)
        t = _as_grid(torch.zeros(1, *teacher_shape[1:]), tokens)
        if s.shape[2:] != t.shape[2:]:
            raise ValueError(
                f"mgd: student positions {tuple(s.shape[2:])} and teacher positions "
                f"{tuple(t.shape[2:])} differ; tap layers of the same resolution"
            )
        dims = t.dim() - 2
        c_s, c_t = s.shape[1], t.shape[1]
        self.align = _conv(c_s, c_t, dims) if c_s != c_t else nn.Identity()
        self.generate = nn.Sequential(_conv(c_t, c_t, dims, 3), nn.ReLU(), _conv(c_t, c_t, dims, 3))
        self.ratio = ratio

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        s = self.align(_as_grid(student, self.tokens).float())
        t = _as_grid(teacher.detach(), self.tokens).float()
        # the same positions are dropped in every channel (a vector drops single features)
        shape = (s.shape[0], 1, *s.shape[2:]) if s.dim() > 2 else s.shape
        keep = (torch.rand(shape, device=s.device) >= self.ratio).to(s.dtype)
        return F.mse_loss(self.generate(s * keep), t)
