"""Recent logit (response) methods: NKD, WTTM, MLKD, spherical KD, CTKD's learnable
temperature and SKD.

Same conventions as `distill.losses.response`: logits (N, C) or (N, L, C) with the classes
last, every leading position a row, the teacher detached inside, computed in float32 at
least (float64 stays float64).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.losses.response import (
    at_least_float32,
    check_logits,
    kl_rows,
    row_mean,
    targets_or_teacher_argmax,
)


def _rows(logits: Tensor) -> Tensor:
    """(rows, C) in at least float32."""
    return at_least_float32(logits.reshape(-1, logits.shape[-1]))


def nkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    targets: Tensor | None = None,
    gamma: float = 1.5,
    temperature: float = 1.0,
) -> Tensor:
    """Normalized KD (Yang et al. 2023, "From Knowledge Distillation to Self-Knowledge
    Distillation: A Unified Approach with Normalized Loss and Customized Soft Labels").

    KD splits into a target part and a non-target part; NKD normalises the non-target
    probabilities so that they sum to one, which removes the coupling DKD points out:

        L = -p_t[y] log p_s[y]  -  gamma * T^2 * sum_{i != y} N(p_t^T)_i log N(p_s^T)_i

    with p at T = 1 in the target term, p^T = softmax(z / T) in the other, and N(q) the
    non-target entries of q divided by their sum. Mean over rows. Rows without a label
    (-1) use the teacher's top-1 class. Paper defaults: gamma 1.5, T 1.
    """
    check_logits(student_logits, teacher_logits, temperature)
    s, t = _rows(student_logits), _rows(teacher_logits.detach())
    y = targets_or_teacher_argmax(targets, teacher_logits)
    target = F.one_hot(y, s.shape[-1]).bool()
    log_ps, pt = F.log_softmax(s, -1), F.softmax(t, -1)
    target_term = -(pt[target] * log_ps[target])
    # softmax over the non-target classes only is exactly the normalised N(p^T)
    log_qs = F.log_softmax((s / temperature).masked_fill(target, -torch.inf), -1)
    qt = F.softmax((t / temperature).masked_fill(target, -torch.inf), -1)
    non_target = -(qt * log_qs.masked_fill(target, 0.0)).sum(-1)
    return (target_term + gamma * temperature**2 * non_target).mean()


def wttm_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 4.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Weighted transformed teacher matching (Zheng & Yang 2024, WTTM).

    TTM matches the student at T = 1 to the power-transformed teacher
    p_t^(1/T) / U(x), with U(x) = sum_i p_t,i^(1/T) (the power sum). WTTM weights each
    sample's KL by that same U(x): a smoother teacher prediction has a larger power sum
    and says more about how classes relate, so it counts more:

        L = mean_x U(x) * KL(p_t^(1/T) / U(x) || softmax(z_s))
    """
    check_logits(student_logits, teacher_logits, temperature)
    s, t = _rows(student_logits), _rows(teacher_logits.detach())
    log_pt = F.log_softmax(t, -1)
    # log U = logsumexp(log p_t / T), and the transformed teacher is softmax(log p_t / T)
    log_power = log_pt / temperature
    weight = torch.logsumexp(log_power, -1).exp()
    log_target = F.log_softmax(log_power, -1)
    per_row = kl_rows(log_target, F.log_softmax(s, -1))
    lead = student_logits.shape[:-1]
    return row_mean((weight * per_row).reshape(lead), mask)


def mlkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperatures: Sequence[float] = (2.0, 3.0, 4.0, 5.0, 6.0),
    instance_weight: float = 1.0,
    batch_weight: float = 1.0,
    class_weight: float = 1.0,
) -> Tensor:
    """Multi-level logit distillation (Jin, Wang & Lin 2023, CVPR).

    The predictions are "augmented" with several temperatures and aligned at three levels,
    summed over the temperatures T:

    - instance: T^2 * KL(p_t^T || p_s^T), mean over rows (Hinton KD);
    - batch: ||P_s P_s^T - P_t P_t^T||_F^2 / N, the N x N similarity of the samples'
      predictions (P = softmax(z / T), N x C);
    - class: ||P_s^T P_s - P_t^T P_t||_F^2 / C, the C x C co-occurrence of the classes.

    The scales of the batch and class terms (/N, /C) are those of the authors' code. Their
    code also multiplies each already-averaged term by a 0/1 confidence mask and averages
    that, which rescales the term by the fraction of confident rows; that is left out, so
    the formula here is the paper's. Their weak/strong input views are a data choice: give
    the run an augmentation. Needs two or more rows.
    """
    check_logits(student_logits, teacher_logits, 1.0)
    if not temperatures or min(temperatures) <= 0:
        raise ValueError(f"mlkd: temperatures must be positive, got {list(temperatures)}")
    s, t = _rows(student_logits), _rows(teacher_logits.detach())
    if s.shape[0] < 2:
        raise ValueError("mlkd: the batch-level term needs a batch of 2 or more rows")
    n, c = s.shape
    total = s.new_zeros(())
    for temp in temperatures:
        log_ps, log_pt = F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1)
        ps, pt = log_ps.exp(), log_pt.exp()
        instance = kl_rows(log_pt, log_ps).mean() * temp**2
        batch = (ps @ ps.T - pt @ pt.T).pow(2).sum() / n
        classes = (ps.T @ ps - pt.T @ pt).pow(2).sum() / c
        total = total + instance_weight * instance + batch_weight * batch
        total = total + class_weight * classes
    return total


def spherical_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 4.0,
    multiplier: float = 2.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Spherical KD (Guo et al. 2020, "Reducing the Teacher-Student Gap via Spherical
    Knowledge Distillation"): only the direction of each centred logit vector is taught.

    Both rows are layer-normalised (zero mean, unit biased std) and scaled to the sphere of
    radius `multiplier` * sqrt(C), which removes the teacher's confidence (its logit norm)
    from what the student must copy; then Hinton KD, T^2 * KL at `temperature`. Close to
    `ls_kd` (logit standardization, at temperature T / multiplier, with unbiased std)."""
    check_logits(student_logits, teacher_logits, temperature)

    def sphere(z: Tensor) -> Tensor:
        z = at_least_float32(z)
        return multiplier * F.layer_norm(z, z.shape[-1:], eps=1e-7)

    log_s = F.log_softmax(sphere(student_logits) / temperature, -1)
    log_t = F.log_softmax(sphere(teacher_logits.detach()) / temperature, -1)
    per_row = kl_rows(log_t, log_s)
    return temperature**2 * row_mean(per_row, mask)


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by -scale (Ganin & Lempitsky
    2015), so what minimises the loss for everything else maximises it for the input."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # noqa: D102
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        return -ctx.scale * grad, None


class CTKDLoss(nn.Module):
    """Curriculum temperature KD (Li et al. 2023, AAAI): KD at a learnable temperature that
    is trained adversarially, to make the task harder as training goes on.

    One global temperature tau = t_min + t_span * sigmoid(theta) (bounded as in the
    authors' code, [1, 21] by default) joins the optimizer. The loss is Hinton KD at tau,
    tau^2 * KL(p_t^tau || p_s^tau); the student minimises it, and a gradient-reversal layer
    makes tau *maximise* it with strength lambda. lambda follows the paper's cosine
    curriculum from 0 up to `lambda_max` over the first `ramp_steps` training calls
    (counted in a buffer, so a resumed run continues the curriculum exactly):

        lambda_n = lambda_max * (1 - cos(pi * min(n, ramp_steps) / ramp_steps)) / 2

    The current tau is `self.temperature()`.
    """

    def __init__(
        self,
        student_shape: Sequence[int],
        teacher_shape: Sequence[int],
        *,
        init_temperature: float = 4.0,
        t_min: float = 1.0,
        t_span: float = 20.0,
        lambda_max: float = 1.0,
        ramp_steps: int = 1000,
    ):
        super().__init__()
        if tuple(student_shape) != tuple(teacher_shape):
            raise ValueError(
                f"ctkd: student logits {tuple(student_shape)} and teacher logits "
                f"{tuple(teacher_shape)} must have the same shape"
            )
        if not t_min < init_temperature < t_min + t_span:
            raise ValueError(
                f"ctkd: init_temperature {init_temperature} must lie in ({t_min}, {t_min + t_span})"
            )
        if ramp_steps < 1:
            raise ValueError(f"ctkd: ramp_steps must be >= 1, got {ramp_steps}")
        frac = (init_temperature - t_min) / t_span
        self.theta = nn.Parameter(torch.tensor(math.log(frac / (1 - frac))))
        self.t_min, self.t_span = t_min, t_span
        self.lambda_max, self.ramp_steps = lambda_max, ramp_steps
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def temperature(self) -> Tensor:
        return self.t_min + self.t_span * torch.sigmoid(self.theta)

    def strength(self) -> float:
        """lambda at the current call count."""
        progress = min(int(self.calls), self.ramp_steps) / self.ramp_steps
        return self.lambda_max * (1.0 - math.cos(math.pi * progress)) / 2.0

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        check_logits(student_logits, teacher_logits, 1.0)
        scale = self.strength()
        if self.training:
            self.calls += 1
        tau = _ReverseGradient.apply(self.temperature(), scale)
        s, t = _rows(student_logits), _rows(teacher_logits.detach())
        log_ps, log_pt = F.log_softmax(s / tau, -1), F.log_softmax(t / tau, -1)
        return tau**2 * kl_rows(log_pt, log_ps).mean()


def _median_fraction(values: Tensor) -> Tensor:
    """The fraction of `values` at or below their median (numpy's 50th percentile, linear
    interpolation between the two middle values when the count is even)."""
    return (values <= torch.quantile(values, 0.5)).to(values.dtype).mean()


def skd_instance_loss(
    student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 4.0
) -> Tensor:
    """SKD's instance term (Jeong, Lee & Choi, CVPR 2026): mean over rows of
    KL(softmax(z_t / T) || softmax(z_s / T)), with no T^2 factor.

    Shapes: (N, C) or (N, L, C).
    """
    check_logits(student_logits, teacher_logits, temperature)
    s, t = _rows(student_logits), _rows(teacher_logits.detach())
    return kl_rows(F.log_softmax(t / temperature, -1), F.log_softmax(s / temperature, -1)).mean()


def skd_direction_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    tikhonov: float = 0.1,
    gram_scale: float = 1.0,
) -> Tensor:
    """SKD's direction term (Jeong, Lee & Choi, CVPR 2026): the mean Mahalanobis length of
    the rows of D = G_s - G_t, the difference of the batch Gram matrices of the row-wise
    L2-normalised logits (each divided by `gram_scale`).

    With N the (B, C) normalised logits, G = N N^T / gram_scale is (B, B). The metric is
    S = cov(D) + tikhonov * I: the unbiased (B, B) covariance of D's columns over its rows
    (`torch.cov(D.T)`), kept in the graph, inverted through its Cholesky factor. Returns
    mean_i sqrt(D_i S^-1 D_i^T). The square root reads max(q, 1e-12), so a row with
    D_i = 0 (student and teacher agree on that sample's directions) has a finite, zero
    gradient instead of sqrt's infinite slope at 0.

    Needs a batch of 2 or more rows: with one row the covariance has no spread to estimate
    (the peers' Cholesky fails there), so that case is refused.
    """
    check_logits(student_logits, teacher_logits, 1.0)
    if tikhonov <= 0:
        raise ValueError(f"skd: tikhonov must be > 0 (it keeps S invertible), got {tikhonov}")
    s, t = _rows(student_logits), _rows(teacher_logits.detach())
    if s.shape[0] < 2:
        raise ValueError(
            "skd: the direction term compares the samples of a batch with each other and "
            f"needs 2 or more rows, got {s.shape[0]}; use a batch of at least 2 (or "
            "direction_weight: 0, which leaves the instance term alone)"
        )
    n_s, n_t = F.normalize(s, dim=-1, eps=1e-12), F.normalize(t, dim=-1, eps=1e-12)
    d = (n_s @ n_s.T - n_t @ n_t.T) / gram_scale  # (B, B)
    metric = torch.cov(d.T) + tikhonov * torch.eye(len(d), dtype=d.dtype, device=d.device)
    chol = torch.linalg.cholesky(metric)
    # D_i S^-1 D_i^T = ||L^-1 D_i^T||^2 with S = L L^T
    whitened = torch.linalg.solve_triangular(chol, d.T, upper=False)  # column i: L^-1 D_i^T
    quad = whitened.pow(2).sum(0)
    return quad.clamp_min(1e-12).sqrt().mean()


def skd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 4.0,
    tikhonov: float = 0.1,
    variant: str = "paper",
    instance_weight: float = 1.0,
    direction_weight: float = 1.0,
) -> Tensor:
    """Streamlined Knowledge Distillation (Jeong, Lee & Choi, CVPR 2026): an instance term
    (KL of the softened outputs per sample) plus a direction term (how the batch's logit
    directions relate, compared in a Mahalanobis metric; `skd_direction_loss`).

    `variant` picks one of the two published forms, which differ in scale only:

    - 'paper' (torchdistill 1.1.5's SKD losses): L_INS + L_DIR with the Gram scale 1.
    - 'authors' (the authors' StreamLined code): rho_s * T^2 * L_INS + rho_c * L_DIR with
      the Gram scale C (the class count). rho_s is the fraction of the batch whose teacher
      confidence max_c softmax(z_t)[i, c] (at T = 1) is at or below its batch median; rho_c
      the fraction of classes whose summed teacher probability is at or below its median.
      That code multiplies the already averaged terms by these fractions, so each term is
      scaled by about one half rather than restricted to the rows or classes below the
      median; this reproduces that behaviour. Its CE and KD weights are the config's
      `task_weight` and the term's `weight` (authors' defaults 0.1 and 0.9).

    `instance_weight` and `direction_weight` scale the two terms on top (1 and 1 as
    published). Shapes: (N, C) or (N, L, C); every leading position is a row. A batch of
    one row is refused when the direction term is on (see `skd_direction_loss`).
    """
    if variant not in ("paper", "authors"):
        raise ValueError(f"skd: variant must be 'paper' or 'authors', got {variant!r}")
    instance = skd_instance_loss(student_logits, teacher_logits, temperature=temperature)
    if variant == "authors":
        probs = F.softmax(_rows(teacher_logits.detach()), -1)
        instance = _median_fraction(probs.amax(-1)) * temperature**2 * instance
    total = instance_weight * instance
    if direction_weight == 0:
        return total
    scale = float(student_logits.shape[-1]) if variant == "authors" else 1.0
    direction = skd_direction_loss(
        student_logits, teacher_logits, tikhonov=tikhonov, gram_scale=scale
    )
    if variant == "authors":
        direction = _median_fraction(probs.sum(0)) * direction
    return total + direction_weight * direction


__all__ = [
    "CTKDLoss",
    "mlkd_loss",
    "nkd_loss",
    "skd_direction_loss",
    "skd_instance_loss",
    "skd_loss",
    "spherical_kd_loss",
    "wttm_loss",
]
