"""DKD, logit standardization, DIST, TTM and teacher-free KD against their formulas."""

import math
import statistics

import pytest
import torch

from distill.losses import dist_loss, dkd_loss, kd_loss, ls_kd_loss, ttm_loss, virtual_teacher_loss
from distill.objective import Schedule, Term
from distill.taps import Knowledge


def softmax(row, t=1.0):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


S = [[1.0, 2.0, 0.5, -1.0], [0.3, -0.2, 2.5, 1.0]]
T = [[2.0, 1.0, 0.0, -0.5], [0.0, 0.5, 1.5, 2.0]]
Y = [0, 2]


def test_dkd_golden_value():
    temp, alpha, beta = 2.0, 1.0, 8.0
    total = 0.0
    for s, t, y in zip(S, T, Y):
        ps, pt = softmax(s, temp), softmax(t, temp)
        tckd = kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
        rest_s = softmax([v for i, v in enumerate(s) if i != y], temp)
        rest_t = softmax([v for i, v in enumerate(t) if i != y], temp)
        total += alpha * tckd + beta * kl(rest_t, rest_s)
    expected = temp**2 * total / 2
    got = dkd_loss(
        torch.tensor(S),
        torch.tensor(T),
        targets=torch.tensor(Y),
        alpha=alpha,
        beta=beta,
        temperature=temp,
    )
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_dkd_decomposes_hinton_kd():
    # Zhao et al. 2022, eq. 7: KD = TCKD + (1 - p_t^target) * NCKD, row by row.
    torch.manual_seed(0)
    s, t, y = torch.randn(1, 6), torch.randn(1, 6), torch.tensor([3])
    temp = 3.0
    tckd = dkd_loss(s, t, targets=y, alpha=1.0, beta=0.0, temperature=temp)
    nckd = dkd_loss(s, t, targets=y, alpha=0.0, beta=1.0, temperature=temp)
    p_target = torch.softmax(t / temp, -1)[0, 3]
    assert kd_loss(s, t, temperature=temp).item() == pytest.approx(
        (tckd + (1 - p_target) * nckd).item(), rel=1e-5
    )


def test_dkd_unlabelled_rows_use_the_teacher_top1():
    s, t = torch.tensor(S), torch.tensor(T)
    teacher_top1 = t.argmax(-1)
    assert dkd_loss(s, t, targets=torch.tensor([-1, -1])).item() == pytest.approx(
        dkd_loss(s, t, targets=teacher_top1).item()
    )
    assert dkd_loss(s, s.clone(), targets=torch.tensor(Y)).item() == pytest.approx(0.0, abs=1e-6)


def test_ls_kd_golden_and_affine_invariance():
    temp = 2.0

    def z(row):
        m, sd = statistics.mean(row), statistics.stdev(row)
        return [(v - m) / sd for v in row]

    expected = temp**2 * sum(kl(softmax(z(t), temp), softmax(z(s), temp)) for s, t in zip(S, T)) / 2
    s, t = torch.tensor(S), torch.tensor(T)
    assert ls_kd_loss(s, t, temperature=temp).item() == pytest.approx(expected, rel=1e-4)
    # A per-row shift and positive scale of either side changes nothing.
    scale, shift = torch.tensor([[3.0], [0.5]]), torch.tensor([[10.0], [-4.0]])
    assert ls_kd_loss(s * scale + shift, t * 2.0 - 1.0).item() == pytest.approx(
        ls_kd_loss(s, t).item(), rel=1e-4
    )
    assert ls_kd_loss(s, s * 7.0).item() == pytest.approx(0.0, abs=1e-6)


def pearson(a, b):
    ma, mb = statistics.mean(a), statistics.mean(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return num / (
        math.sqrt(sum((x - ma) ** 2 for x in a)) * math.sqrt(sum((y - mb) ** 2 for y in b))
    )


def test_dist_golden_value():
    temp, beta, gamma = 2.0, 1.0, 2.0
    ps = [softmax(r, temp) for r in S]
    pt = [softmax(r, temp) for r in T]
    inter = statistics.mean(1 - pearson(a, b) for a, b in zip(ps, pt))
    cols = range(len(S[0]))
    intra = statistics.mean(1 - pearson([r[j] for r in ps], [r[j] for r in pt]) for j in cols)
    expected = temp**2 * (beta * inter + gamma * intra)
    got = dist_loss(torch.tensor(S), torch.tensor(T), beta=beta, gamma=gamma, temperature=temp)
    assert got.item() == pytest.approx(expected, rel=1e-4)
    x = torch.randn(5, 7)
    assert dist_loss(x, x.clone()).item() == pytest.approx(0.0, abs=1e-5)


def test_ttm_golden_value_and_t1_equals_kd():
    temp = 3.0
    expected = sum(kl(softmax(t, temp), softmax(s)) for s, t in zip(S, T)) / 2
    s, t = torch.tensor(S), torch.tensor(T)
    assert ttm_loss(s, t, temperature=temp).item() == pytest.approx(expected, rel=1e-5)
    assert ttm_loss(s, t, temperature=1.0).item() == pytest.approx(
        kd_loss(s, t, temperature=1.0).item(), rel=1e-6
    )


def test_virtual_teacher_golden_and_label_handling():
    a, temp, k = 0.9, 5.0, 4
    total = 0.0
    for s, y in zip(S, Y):
        virtual = [a if i == y else (1 - a) / (k - 1) for i in range(k)]
        total += kl(softmax(virtual, temp), softmax(s))
    got = virtual_teacher_loss(
        torch.tensor(S), None, targets=torch.tensor(Y), correct_prob=a, temperature=temp
    )
    assert got.item() == pytest.approx(total / 2, rel=1e-5)
    one = virtual_teacher_loss(
        torch.tensor(S), None, targets=torch.tensor([0, -1]), correct_prob=a, temperature=temp
    )
    only_first = virtual_teacher_loss(
        torch.tensor(S[:1]), None, targets=torch.tensor([0]), correct_prob=a, temperature=temp
    )
    assert one.item() == pytest.approx(only_first.item())
    with pytest.raises(ValueError, match="correct_prob"):
        virtual_teacher_loss(torch.tensor(S), None, targets=torch.tensor(Y), correct_prob=1.0)


def test_term_evaluates_a_scheduled_temperature_and_passes_labels():
    s, t = torch.tensor(S), torch.tensor(T)
    term = Term("dkd", dkd_loss, loss_args={"temperature": Schedule(2.0, steps=10, start=6.0)})
    assert term.wants_targets
    y = torch.tensor(Y)
    at0 = term(Knowledge(s), Knowledge(t), {"target": y}, step=0)
    at5 = term(Knowledge(s), Knowledge(t), {"target": y}, step=5)
    at20 = term(Knowledge(s), Knowledge(t), {"target": y}, step=20)
    assert at0.item() == pytest.approx(dkd_loss(s, t, targets=y, temperature=6.0).item())
    assert at5.item() == pytest.approx(dkd_loss(s, t, targets=y, temperature=4.0).item())
    assert at20.item() == pytest.approx(dkd_loss(s, t, targets=y, temperature=2.0).item())
