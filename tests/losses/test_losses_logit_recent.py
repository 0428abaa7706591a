"""NKD, WTTM, MLKD and CTKD against their formulas, computed independently in plain Python."""

import math

import pytest
import torch

from distill.losses import LOSSES, CTKDLoss, kd_loss, mlkd_loss, nkd_loss, ttm_loss, wttm_loss

S = [[1.0, 2.0, 0.5, -1.0], [0.3, -0.2, 2.5, 1.0], [-0.5, 0.1, 0.0, 0.7]]
T = [[2.0, 1.0, 0.0, -0.5], [0.0, 0.5, 1.5, 2.0], [1.0, -1.0, 0.2, 0.4]]
Y = [0, 2, -1]  # the last row is unlabelled: the teacher's top-1 (class 0) stands in


def softmax(row, t=1.0):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def test_nkd_golden_value():
    gamma, temp = 1.5, 2.0
    total = 0.0
    for s, t, y in zip(S, T, Y):
        y = y if y >= 0 else max(range(4), key=lambda i: t[i])
        ps, pt = softmax(s), softmax(t)
        target = -pt[y] * math.log(ps[y])
        ns = softmax([v for i, v in enumerate(s) if i != y], temp)  # N(p_s^T)
        nt = softmax([v for i, v in enumerate(t) if i != y], temp)
        non_target = -sum(a * math.log(b) for a, b in zip(nt, ns))
        total += target + gamma * temp**2 * non_target
    got = nkd_loss(
        torch.tensor(S), torch.tensor(T), targets=torch.tensor(Y), gamma=gamma, temperature=temp
    )
    assert got.item() == pytest.approx(total / 3, rel=1e-5)


def test_nkd_non_target_part_is_zero_gradient_when_student_matches_teacher_shape():
    # with gamma 0 only the target term is left: -p_t[y] log p_s[y]
    s, t, y = torch.randn(5, 7), torch.randn(5, 7), torch.randint(0, 7, (5,))
    got = nkd_loss(s, t, targets=y, gamma=0.0)
    want = -(
        torch.softmax(t, -1).gather(1, y[:, None]) * torch.log_softmax(s, -1).gather(1, y[:, None])
    )
    assert got.item() == pytest.approx(want.mean().item(), rel=1e-5)


def test_wttm_golden_value_and_its_relation_to_ttm():
    temp = 3.0
    total = 0.0
    for s, t in zip(S, T):
        powered = [p ** (1 / temp) for p in softmax(t)]
        u = sum(powered)
        total += u * kl([p / u for p in powered], softmax(s))
    got = wttm_loss(torch.tensor(S), torch.tensor(T), temperature=temp)
    assert got.item() == pytest.approx(total / 3, rel=1e-5)
    # with a single row, WTTM is TTM times that row's power sum
    s, t = torch.tensor(S[:1]), torch.tensor(T[:1])
    u = torch.softmax(t, -1).pow(1 / temp).sum()
    assert wttm_loss(s, t, temperature=temp).item() == pytest.approx(
        (u * ttm_loss(s, t, temperature=temp)).item(), rel=1e-5
    )


def _gram(rows_a, rows_b):
    return [[sum(x * y for x, y in zip(a, b)) for b in rows_b] for a in rows_a]


def test_mlkd_golden_value():
    temps = (2.0, 4.0)
    n, c = len(S), len(S[0])
    total = 0.0
    for temp in temps:
        ps = [softmax(r, temp) for r in S]
        pt = [softmax(r, temp) for r in T]
        instance = temp**2 * sum(kl(b, a) for a, b in zip(ps, pt)) / n
        gs, gt = _gram(ps, ps), _gram(pt, pt)  # N x N
        batch = sum((gs[i][j] - gt[i][j]) ** 2 for i in range(n) for j in range(n)) / n
        cols_s, cols_t = list(zip(*ps)), list(zip(*pt))
        ms, mt = _gram(cols_s, cols_s), _gram(cols_t, cols_t)  # C x C
        classes = sum((ms[i][j] - mt[i][j]) ** 2 for i in range(c) for j in range(c)) / c
        total += instance + batch + classes
    got = mlkd_loss(torch.tensor(S), torch.tensor(T), temperatures=temps)
    assert got.item() == pytest.approx(total, rel=1e-5)
    # only the instance level: the sum of Hinton KD over the temperatures
    only = mlkd_loss(
        torch.tensor(S), torch.tensor(T), temperatures=temps, batch_weight=0, class_weight=0
    )
    kd = sum(kd_loss(torch.tensor(S), torch.tensor(T), temperature=t) for t in temps)
    assert only.item() == pytest.approx(kd.item(), rel=1e-5)
    assert mlkd_loss(torch.tensor(T), torch.tensor(T)).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="2 or more rows"):
        mlkd_loss(torch.tensor(S[:1]), torch.tensor(T[:1]))


def test_ctkd_is_kd_at_its_temperature_and_the_temperature_ascends():
    s = torch.tensor(S, requires_grad=True)
    t = torch.tensor(T)
    loss_fn = CTKDLoss((3, 4), (3, 4), init_temperature=4.0, ramp_steps=10)
    assert loss_fn.temperature().item() == pytest.approx(4.0, rel=1e-5)
    loss = loss_fn(s, t)  # the first call: lambda = 0
    assert loss.item() == pytest.approx(kd_loss(s, t, temperature=4.0).item(), rel=1e-5)
    loss.backward()
    assert loss_fn.theta.grad.item() == 0.0  # no curriculum yet
    for _ in range(9):
        loss_fn(s, t)
    assert int(loss_fn.calls) == 10 and loss_fn.strength() == pytest.approx(1.0)
    # at full strength the temperature's gradient is minus the true one: it ascends the loss
    loss_fn.theta.grad = None
    loss_fn(s, t).backward()
    theta = loss_fn.theta.detach().clone().requires_grad_()
    tau = loss_fn.t_min + loss_fn.t_span * torch.sigmoid(theta)
    true = torch.autograd.grad(kd_loss(s.detach(), t, temperature=tau), theta)[0]
    assert loss_fn.theta.grad.item() == pytest.approx(-true.item(), rel=1e-4)
    # the cosine curriculum: half way, lambda is half of lambda_max
    half = CTKDLoss((3, 4), (3, 4), ramp_steps=10, lambda_max=0.8)
    half.calls.fill_(5)
    assert half.strength() == pytest.approx(0.4)
    half.eval()
    half(s, t)
    assert int(half.calls) == 5  # evaluation does not advance the curriculum


def test_new_losses_send_no_gradient_to_the_teacher():
    s = torch.randn(6, 5, requires_grad=True)
    t = torch.randn(6, 5, requires_grad=True)
    y = torch.randint(0, 5, (6,))
    for loss in (
        nkd_loss(s, t, targets=y),
        wttm_loss(s, t),
        mlkd_loss(s, t),
        CTKDLoss((6, 5), (6, 5))(s, t),
    ):
        loss.backward()
    assert t.grad is None and torch.isfinite(s.grad).all()


def test_new_losses_are_in_the_table_with_their_papers():
    for name in ("nkd", "wttm", "mlkd", "ctkd", "spherical_kd"):
        assert LOSSES[name].family == "response" and "20" in LOSSES[name].paper


def test_spherical_kd_golden_value_and_scale_invariance():
    from distill.losses import spherical_kd_loss

    temp, mult = 3.0, 2.0

    def sphere(row):
        mean = sum(row) / len(row)
        std = math.sqrt(sum((v - mean) ** 2 for v in row) / len(row))  # biased, as layer norm
        return [mult * (v - mean) / std for v in row]

    want = (
        sum(kl(softmax(sphere(t), temp), softmax(sphere(s), temp)) for s, t in zip(S, T))
        * temp**2
        / 3
    )
    got = spherical_kd_loss(torch.tensor(S), torch.tensor(T), temperature=temp, multiplier=mult)
    assert got.item() == pytest.approx(want, rel=1e-5)
    # only directions count: a more confident teacher (scaled, shifted logits) teaches the same
    scaled = spherical_kd_loss(
        torch.tensor(S), 5 * torch.tensor(T) + 3, temperature=temp, multiplier=mult
    )
    assert scaled.item() == pytest.approx(got.item(), rel=1e-5)
