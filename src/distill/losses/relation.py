"""Relation-based losses: the student matches how the teacher relates samples to each other.

Inputs are feature tensors of shape (N, ...) for a batch of N samples; each is flattened
to (N, D). Student and teacher widths may differ (the relations are N x N or N x N x N),
so no adapter is needed. The teacher side is detached inside.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.losses.divergences import at_least_float32, kl_rows


def _flat(x: Tensor) -> Tensor:
    return at_least_float32(x).reshape(x.shape[0], -1)


def _same_batch(student: Tensor, teacher: Tensor, name: str) -> None:
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"{name}: student and teacher batches differ in shape ({student.shape[0]} vs "
            f"{teacher.shape[0]} samples); relations compare the same samples"
        )
    if student.shape[0] < 2:
        raise ValueError(
            f"{name}: a relation needs at least 2 samples in the batch, got {student.shape[0]}"
        )


def _normalized_distances(x: Tensor) -> Tensor:
    """Pairwise Euclidean distances divided by their mean over distinct pairs (RKD's mu)."""
    d = torch.cdist(x, x)
    off = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
    return d / d[off].mean().clamp_min(1e-12)


def rkd_distance_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD distance (Park et al. 2019): Huber loss between mean-normalised pairwise distances.

    psi(x_i, x_j) = ||x_i - x_j|| / mu, mu the mean distance over the batch's distinct pairs;
    the loss averages smooth-L1 (delta 1) over the ordered distinct pairs. Invariant to a
    global scale of either embedding. The paper weights it 25 (with angle 50).
    """
    _same_batch(student, teacher, "rkd_distance")
    s, t = _flat(student), _flat(teacher.detach())
    off = ~torch.eye(len(s), dtype=torch.bool, device=s.device)
    return F.smooth_l1_loss(_normalized_distances(s)[off], _normalized_distances(t)[off])


def _angles(x: Tensor) -> Tensor:
    """(N, N, N) cosines: [j, i, k] = <unit(x_i - x_j), unit(x_k - x_j)> (angle at x_j)."""
    diff = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2))


def rkd_angle_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD angle (Park et al. 2019): Huber loss between the cosines of all triplet angles.

    Averaged over all N^3 (j, i, k) entries as in the authors' code; degenerate triplets
    (i = j or k = j) are 0 on both sides. Invariant to scale and translation.
    """
    _same_batch(student, teacher, "rkd_angle")
    return F.smooth_l1_loss(_angles(_flat(student)), _angles(_flat(teacher.detach())))


def _sp_gram(x: Tensor) -> Tensor:
    return F.normalize(x @ x.t(), p=2, dim=1)


def sp_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Similarity-preserving KD (Tung & Mori 2019): ||G_s - G_t||_F^2 / N^2.

    G = row-L2-normalised F F^T (N x N). Independent of the feature widths, so any
    student layer can match any teacher layer. The paper weights it 3000.
    """
    _same_batch(student, teacher, "sp")
    s, t = _flat(student), _flat(teacher.detach())
    n = len(s)
    return (_sp_gram(s) - _sp_gram(t)).pow(2).sum() / (n * n)


def _cc_kernel(x: Tensor, gamma: float, order: int) -> Tensor:
    """Gaussian RBF kernel exp(-gamma ||x_i - x_j||^2) on unit vectors, Taylor-expanded.

    For unit vectors ||x_i - x_j||^2 = 2 - 2 x_i.x_j, so the kernel is
    exp(-2 gamma) * sum_p (2 gamma)^p / p! (x_i.x_j)^p, truncated at `order` (Peng et al. 2019).
    """
    x = F.normalize(x, p=2, dim=1)
    dot = x @ x.t()
    return math.exp(-2 * gamma) * sum(
        (2 * gamma) ** p / math.factorial(p) * dot**p for p in range(order + 1)
    )


def cc_loss(student: Tensor, teacher: Tensor, *, gamma: float = 0.4, order: int = 2) -> Tensor:
    """Correlation congruence (Peng et al. 2019): ||C_s - C_t||_F^2 / N^2.

    C is the N x N correlation of the batch's embeddings under a Gaussian RBF kernel in its
    Taylor approximation (`_cc_kernel`; the paper uses order 2, gamma 0.4). The paper
    weights it 0.02 next to CE and KD.
    """
    _same_batch(student, teacher, "cc")
    s, t = _flat(student), _flat(teacher.detach())
    n = len(s)
    return (_cc_kernel(s, gamma, order) - _cc_kernel(t, gamma, order)).pow(2).sum() / (n * n)


def _fsp_matrix(first: Tensor, second: Tensor) -> Tensor:
    """(N, C1, C2) flow matrix: G_ij = sum over positions of F1_i * F2_j / positions."""
    if first.shape[2:] != second.shape[2:]:
        raise ValueError(
            f"fsp: the two layers of a pair must have the same spatial size, got "
            f"{tuple(first.shape)} and {tuple(second.shape)}; pick two layers of one stage"
        )
    a, b = at_least_float32(first).flatten(2), at_least_float32(second).flatten(2)
    return a @ b.transpose(1, 2) / a.shape[-1]


def fsp_loss(student: tuple[Tensor, Tensor], teacher: tuple[Tensor, Tensor]) -> Tensor:
    """FSP / flow of solution procedure (Yim et al. 2017): match Gram matrices between two layers.

    Each side gives two tapped layers (N, C1, *pos) and (N, C2, *pos); the FSP matrix is
    G = F1 F2^T / positions (N, C1, C2); the loss is the mean over the batch of
    ||G_s - G_t||_F^2 (a sum over C1 x C2). Channel counts must match between student and
    teacher (the paper pairs same-width stages), and the two layers of a pair must share
    their spatial size.
    """
    if not (
        isinstance(student, (tuple, list))
        and isinstance(teacher, (tuple, list))
        and len(student) == len(teacher) == 2
    ):
        raise ValueError(
            "fsp reads two layers on each side: set student: [a, b] and teacher: [c, d]"
        )
    g_s = _fsp_matrix(*student)
    g_t = _fsp_matrix(*(x.detach() for x in teacher))
    if g_s.shape != g_t.shape:
        raise ValueError(
            f"fsp: student FSP matrix {tuple(g_s.shape)} and teacher {tuple(g_t.shape)} differ in shape; "
            f"pick layers with the same channel counts"
        )
    return (g_s - g_t).pow(2).sum((1, 2)).mean()


def _adjacency(x: Tensor, kernel: str, gamma: float) -> Tensor:
    if kernel == "cosine":
        x = F.normalize(x, p=2, dim=1)
        return x @ x.t()
    if kernel == "rbf":
        return torch.exp(-gamma * torch.cdist(x, x).pow(2))
    raise ValueError(f"graph kernel must be 'cosine' or 'rbf', got {kernel!r}")


def graph_loss(
    student: Tensor, teacher: Tensor, *, kernel: str = "cosine", gamma: float = 1.0
) -> Tensor:
    """Graph / adjacency relation loss: (1/N^2) sum_ij (A_t(i,j) - A_s(i,j))^2.

    The batch is a graph whose edge weights A(i, j) are the cosine similarities of the
    samples' features (or an RBF kernel exp(-gamma ||x_i - x_j||^2)); the student matches
    the teacher's adjacency (the surveys' L_graph, Liu et al. 2023).
    """
    _same_batch(student, teacher, "graph")
    s, t = _flat(student), _flat(teacher.detach())
    return (_adjacency(s, kernel, gamma) - _adjacency(t, kernel, gamma)).pow(2).mean()


def _local_structure(x: Tensor, kernel: str, sigma: float) -> Tensor:
    """log LS_i: each node's softmax over its neighbours of SIM(z_i, z_j). (B, 1+k, H) -> (B, k).

    Row 0 is the node, rows 1..k its graph neighbours (distill.paradigms.graph's layout)."""
    centre, nbrs = at_least_float32(x[:, :1]), at_least_float32(x[:, 1:])
    if kernel == "rbf":
        sim = torch.exp(-(centre - nbrs).pow(2).sum(-1) / (2 * sigma**2))
    elif kernel == "distance":
        sim = -(centre - nbrs).pow(2).sum(-1) / (2 * sigma**2)
    elif kernel == "linear":
        sim = (centre * nbrs).sum(-1)
    else:
        raise ValueError(f"lsp kernel must be 'rbf', 'distance' or 'linear', got {kernel!r}")
    return F.log_softmax(sim, dim=-1)


def lsp_loss(
    student: Tensor, teacher: Tensor, *, kernel: str = "distance", sigma: float = 1.0
) -> Tensor:
    """Local structure preserving loss (Yang et al. 2020, Distilling Knowledge from GCNs).

    For node i with neighbours N(i), LS_ij = exp(SIM(z_i, z_j)) / sum_{l in N(i)} exp(SIM(z_i, z_l));
    the loss is (1/N) sum_i KL(LS^s_i || LS^t_i), the paper's direction. Inputs are
    (B, 1 + k, H): each node's embedding in row 0 and its k neighbours' in rows 1..k, so the
    student and teacher may have different widths. SIM is an RBF kernel
    exp(-||z_i - z_j||^2 / 2 sigma^2), its log ('distance'), or the dot product ('linear').
    """
    if student.dim() != 3 or teacher.dim() != 3:
        raise ValueError(
            f"lsp reads (batch, 1 + neighbours, features) node embeddings; got student "
            f"{tuple(student.shape)}, teacher {tuple(teacher.shape)} (tap a layer of a graph "
            f"model that keeps the neighbour rows, e.g. 'embed')"
        )
    if student.shape[:2] != teacher.shape[:2] or student.shape[1] < 3:
        raise ValueError(
            f"lsp: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must cover "
            f"the same nodes and at least two neighbours"
        )
    log_s = _local_structure(student, kernel, sigma)
    log_t = _local_structure(teacher.detach(), kernel, sigma)
    return kl_rows(log_s, log_t).mean()


def self_attention_relation(x: Tensor, *, heads: int, mask: Tensor | None = None) -> Tensor:
    """Scaled dot-product relation softmax(x_a x_a^T / sqrt(d_r)) of `heads` relation heads.

    x is (N, L, D) (a layer's queries, keys or values before the model splits them into its
    attention heads); D is cut into `heads` slices of d_r = D / heads. `mask` (N, L), 1 at
    real tokens, keeps padded keys out of every row. Returns (N, heads, L, L) probabilities.
    """
    n, length, dim = x.shape
    if dim % heads:
        raise ValueError(f"self_attention_relation: width {dim} is not divisible by {heads} heads")
    parts = at_least_float32(x).reshape(n, length, heads, dim // heads).transpose(1, 2)
    scores = parts @ parts.transpose(-1, -2) / math.sqrt(dim // heads)
    if mask is not None:
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
    return scores.softmax(-1)


def minilm_relation_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    heads: int = 12,
    mask: Tensor | None = None,
    fused: str | None = None,
) -> Tensor:
    """Self-attention relation transfer (Wang et al. 2020 MiniLM; 2021 MiniLMv2).

    For one pair of vectors (queries, keys or values) of a student and a teacher layer,
    (N, L, D_s) and (N, L, D_t), each is split into the same number of relation heads and
    the relation R = softmax(x x^T / sqrt(d_r)) is formed per head; the loss is
    KL(R_t || R_s) summed over keys, averaged over heads and (real) queries. MiniLM's
    value-relation transfer is the V-V case with the models' own head count; MiniLMv2 uses
    Q-Q, K-K and V-V with a chosen number of relation heads, so student and teacher may
    differ in width, head count and depth. `mask` (N, L) excludes padded tokens. `fused`
    ('q', 'k' or 'v') reads that third of a fused query|key|value projection's output.
    """
    if fused is not None:
        if fused not in ("q", "k", "v"):
            raise ValueError(f"minilm_relation: fused must be 'q', 'k' or 'v', got {fused!r}")
        part = "qkv".index(fused)
        student, teacher = (x.chunk(3, dim=-1)[part] for x in (student, teacher))
    if student.shape[:2] != teacher.shape[:2]:
        raise ValueError(
            f"minilm_relation: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} "
            "must agree in batch and sequence length"
        )
    r_s = self_attention_relation(student, heads=heads, mask=mask)
    r_t = self_attention_relation(teacher.detach(), heads=heads, mask=mask)
    log_s = r_s.clamp_min(1e-12).log()
    kl = (r_t * (r_t.clamp_min(1e-12).log() - log_s)).sum(-1)  # (N, heads, L)
    if mask is None:
        return kl.mean()
    real = mask.bool()[:, None, :].expand_as(kl)
    return kl[real].mean()
