"""Contrastive losses: the student's embedding of a sample must pick out the teacher's
embedding of the same sample among others.

Each is an `nn.Module` built from the two tapped shapes: it owns the projection heads
(and memory banks or queues, kept as buffers so they are checkpointed and resumed).
Inputs (N, ...) are flattened to (N, D); the teacher side is detached.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _Embed(nn.Module):
    """Flatten, linear projection, L2 normalisation (the heads of CRD and friends)."""

    def __init__(self, shape: Sequence[int], dim: int):
        super().__init__()
        self.proj = nn.Linear(math.prod(shape[1:]), dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.proj(x.float().reshape(x.shape[0], -1)), dim=1)


class InfoNCELoss(nn.Module):
    """In-batch contrastive distillation (InfoNCE, van den Oord et al. 2018; CRD's in-batch variant).

    z_s = g_s(student), z_t = g_t(teacher), both unit-norm in `dim` dims; the loss is the
    cross-entropy of picking sample i's teacher embedding among the batch's:
    CE(z_s z_t^T / temperature, arange(N)). The other samples are the negatives, so larger
    batches give more of them; no memory is kept.
    """

    def __init__(
        self,
        student_shape: Sequence[int],
        teacher_shape: Sequence[int],
        *,
        dim: int = 128,
        temperature: float = 0.1,
    ):
        super().__init__()
        self.embed_s, self.embed_t = _Embed(student_shape, dim), _Embed(teacher_shape, dim)
        self.temperature = temperature

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        if student.shape[0] < 2:
            raise ValueError(
                "infonce: the other samples of the batch are the negatives, so it needs 2 or "
                "more rows (with one row the loss is 0 whatever the student does)"
            )
        z_s, z_t = self.embed_s(student), self.embed_t(teacher.detach())
        logits = z_s @ z_t.t() / self.temperature
        return F.cross_entropy(logits, torch.arange(len(z_s), device=logits.device))


class CRDLoss(nn.Module):
    """Contrastive representation distillation (Tian et al. 2020), with memory banks and NCE.

    Student and teacher embeddings (unit-norm, `dim` dims) of every training sample live in
    two memory banks, updated with momentum after each step. The student anchor z_s(i) is
    scored against the teacher bank: row i (the positive) and `num_negatives` random rows
    (negatives); symmetrically the teacher anchor against the student bank. Scores
    exp(z . m / T) / Z, with Z fixed from the first batch; the NCE loss with noise
    probability 1/num_samples is -[log h(pos) + sum log(1 - h(neg))],
    h(x) = x / (x + K / num_samples), summed over both anchors, averaged over the batch.
    Needs the dataset index of each sample (the trainer passes it). CRD benchmark weight 0.8.
    """

    def __init__(
        self,
        student_shape: Sequence[int],
        teacher_shape: Sequence[int],
        *,
        num_samples: int,
        dim: int = 128,
        num_negatives: int = 4096,
        temperature: float = 0.07,
        momentum: float = 0.5,
    ):
        super().__init__()
        if num_samples < 2:
            raise ValueError(f"crd needs a dataset of at least 2 samples, got {num_samples}")
        self.embed_s, self.embed_t = _Embed(student_shape, dim), _Embed(teacher_shape, dim)
        self.num_samples, self.temperature, self.momentum = num_samples, temperature, momentum
        self.num_negatives = min(num_negatives, num_samples - 1)
        # Banks start as random unit vectors, as in the paper's code (uniform, then normalised).
        gen = torch.Generator().manual_seed(0)
        bound = 1.0 / math.sqrt(dim / 3)
        self.register_buffer(
            "bank_s",
            F.normalize(torch.rand(num_samples, dim, generator=gen) * 2 * bound - bound, dim=1),
        )
        self.register_buffer(
            "bank_t",
            F.normalize(torch.rand(num_samples, dim, generator=gen) * 2 * bound - bound, dim=1),
        )
        self.register_buffer("z_s", torch.tensor(-1.0))  # normalising constants, set on first use
        self.register_buffer("z_t", torch.tensor(-1.0))

    def _scores(
        self, anchor: Tensor, bank: Tensor, positive_index: Tensor, negatives: Tensor, z: Tensor
    ) -> Tensor:
        rows = torch.cat([positive_index.unsqueeze(1), negatives], 1)  # (N, 1 + K)
        scores = torch.exp(torch.einsum("nkd,nd->nk", bank[rows], anchor) / self.temperature)
        if z.item() > 0:
            return scores / z
        # Monte-Carlo estimate of the partition function from the first training batch,
        # fixed afterwards (an evaluation call uses its own estimate and stores nothing).
        estimate = scores.detach().mean() * self.num_samples
        if self.training:
            z.fill_(estimate.item())
        return scores / estimate

    def _nce(self, scores: Tensor) -> Tensor:
        noise = self.num_negatives / self.num_samples
        pos, neg = scores[:, 0], scores[:, 1:]
        log_pos = torch.log(pos / (pos + noise + 1e-7))
        log_neg = torch.log(noise / (neg + noise + 1e-7))
        return -(log_pos + log_neg.sum(1)).mean()

    def forward(self, student: Tensor, teacher: Tensor, *, index: Tensor) -> Tensor:
        z_s, z_t = self.embed_s(student), self.embed_t(teacher.detach())
        index = index.to(z_s.device).long()
        # Negatives: random other samples; a draw that hits the anchor itself is shifted by one.
        negatives = torch.randint(
            0, self.num_samples, (len(index), self.num_negatives), device=z_s.device
        )
        negatives = torch.where(
            negatives == index.unsqueeze(1), (negatives + 1) % self.num_samples, negatives
        )
        # Each anchor is scored against the *other* model's bank: its own sample's stored
        # embedding (the positive) and K others. Banks are buffers: gradients reach the anchors.
        scores_s = self._scores(z_s, self.bank_t, index, negatives, self.z_t)
        scores_t = self._scores(z_t, self.bank_s, index, negatives, self.z_s)
        loss = self._nce(scores_s) + self._nce(scores_t)
        if self.training:
            with torch.no_grad():
                m = self.momentum
                self.bank_s[index] = F.normalize(
                    self.bank_s[index] * m + z_s.detach() * (1 - m), dim=1
                )
                self.bank_t[index] = F.normalize(
                    self.bank_t[index] * m + z_t.detach() * (1 - m), dim=1
                )
        return loss


class SEEDLoss(nn.Module):
    """SEED (Fang et al. 2021): match the teacher's similarity distribution over a queue.

    A queue holds the last `queue_size` teacher embeddings (unit-norm, the teacher's own
    width after flattening). For each sample, the teacher's distribution is
    softmax([z_t . Q, z_t . z_t] / T_t) and the student's softmax([z_s . Q, z_s . z_t] / T_s),
    z_s being the student feature projected to the teacher's width; the loss is the
    cross-entropy between them. The queue is a buffer (checkpointed), filled FIFO.
    """

    def __init__(
        self,
        student_shape: Sequence[int],
        teacher_shape: Sequence[int],
        *,
        queue_size: int = 4096,
        student_temperature: float = 0.2,
        teacher_temperature: float = 0.07,
    ):
        super().__init__()
        dim = math.prod(teacher_shape[1:])
        self.proj = nn.Linear(math.prod(student_shape[1:]), dim)
        self.t_s, self.t_t = student_temperature, teacher_temperature
        gen = torch.Generator().manual_seed(0)
        self.register_buffer(
            "queue", F.normalize(torch.randn(queue_size, dim, generator=gen), dim=1)
        )
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        z_t = F.normalize(teacher.detach().float().reshape(len(teacher), -1), dim=1)
        z_s = F.normalize(self.proj(student.float().reshape(len(student), -1)), dim=1)
        queue = self.queue.clone()
        logits_t = torch.cat([z_t @ queue.t(), (z_t * z_t).sum(1, keepdim=True)], 1) / self.t_t
        logits_s = torch.cat([z_s @ queue.t(), (z_s * z_t).sum(1, keepdim=True)], 1) / self.t_s
        loss = -(F.softmax(logits_t, 1) * F.log_softmax(logits_s, 1)).sum(1).mean()
        if self.training:
            with torch.no_grad():
                n, size = len(z_t), len(self.queue)
                rows = (self.ptr + torch.arange(n, device=z_t.device)) % size
                self.queue[rows] = z_t[-size:] if n > size else z_t
                self.ptr.fill_(int((self.ptr + n) % size))
        return loss


def sinkhorn_plan(cost: Tensor, eps: float, iters: int) -> Tensor:
    """Entropic optimal transport plan between two uniform measures (Cuturi 2013), in log space."""
    n, m = cost.shape
    log_a = torch.full((n,), -math.log(n), device=cost.device)
    log_b = torch.full((m,), -math.log(m), device=cost.device)
    f = torch.zeros(n, device=cost.device)
    g = torch.zeros(m, device=cost.device)
    for _ in range(iters):
        f = eps * (log_a - torch.logsumexp((g.unsqueeze(0) - cost) / eps, dim=1))
        g = eps * (log_b - torch.logsumexp((f.unsqueeze(1) - cost) / eps, dim=0))
    return torch.exp((f.unsqueeze(1) + g.unsqueeze(0) - cost) / eps)


class WCoRDLoss(nn.Module):
    """Wasserstein contrastive representation distillation (Chen et al. 2021): global + local.

    Global (dual form of the Wasserstein distance between the joint p(t, s) and the product
    of marginals, a Wasserstein dependency measure): a critic g(t, s) = <h_t(t), h_s(s)> /
    temperature on unit-norm embeddings scores matched pairs high and mismatched pairs low;
    the loss is -(mean_i g(t_i, s_i) - mean_{i != j} g(t_i, s_j)) plus `gp_weight` times a
    gradient penalty E[(||grad g|| - 1)^2] keeping the critic near 1-Lipschitz in its inputs.
    Local (primal form): the entropic optimal-transport cost between the batch's teacher and
    student embeddings, cost 1 - cosine, plan by Sinkhorn (treated as constant in the
    gradient), weighted by `local_weight`. This uses the direct dual estimator of the
    dependency measure with a gradient penalty (Ozair et al. 2019) for the global part;
    the authors' code may differ in how it estimates it (they relate it to CRD's NCE form).
    """

    def __init__(
        self,
        student_shape: Sequence[int],
        teacher_shape: Sequence[int],
        *,
        dim: int = 128,
        temperature: float = 0.5,
        gp_weight: float = 1.0,
        local_weight: float = 1.0,
        sinkhorn_eps: float = 0.05,
        sinkhorn_iters: int = 50,
    ):
        super().__init__()
        self.embed_s, self.embed_t = _Embed(student_shape, dim), _Embed(teacher_shape, dim)
        self.temperature, self.gp_weight, self.local_weight = temperature, gp_weight, local_weight
        self.sinkhorn_eps, self.sinkhorn_iters = sinkhorn_eps, sinkhorn_iters

    def critic(self, student: Tensor, teacher: Tensor) -> Tensor:
        """(N, N) scores g(t_i, s_j) = <z_t_i, z_s_j> / temperature."""
        return self.embed_t(teacher) @ self.embed_s(student).t() / self.temperature

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        n = len(student)
        if n < 2:
            raise ValueError("wcord needs at least 2 samples in the batch")
        scores = self.critic(student, teacher.detach())
        off = ~torch.eye(n, dtype=torch.bool, device=scores.device)
        global_term = -(scores.diagonal().mean() - scores[off].mean())
        penalty = scores.new_zeros(())
        if self.gp_weight and torch.is_grad_enabled():
            s_in = student.detach().float().requires_grad_()
            t_in = teacher.detach().float().requires_grad_()
            joint = self.critic(s_in, t_in).diagonal()
            g_s, g_t = torch.autograd.grad(joint.sum(), [s_in, t_in], create_graph=True)
            norms = torch.cat([g_s.reshape(n, -1), g_t.reshape(n, -1)], 1).norm(dim=1)
            penalty = (norms - 1.0).pow(2).mean()
        cost = 1.0 - scores * self.temperature  # 1 - cosine of the unit embeddings
        plan = sinkhorn_plan(cost.detach(), self.sinkhorn_eps, self.sinkhorn_iters)
        local_term = (plan * cost).sum()
        return global_term + self.gp_weight * penalty + self.local_weight * local_term
