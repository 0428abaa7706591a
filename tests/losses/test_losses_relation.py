"""Relation losses against their papers' formulas, computed independently here."""

import itertools
import math

import pytest
import torch

from distill.losses import cc_loss, fsp_loss, graph_loss, rkd_angle_loss, rkd_distance_loss, sp_loss

S = [[1.0, 0.0, 2.0], [0.0, 1.0, 1.0], [2.0, 2.0, 0.0], [-1.0, 0.5, 0.0]]
T = [[0.5, 1.0], [2.0, -1.0], [0.0, 0.0], [1.0, 3.0]]  # a different width


def huber(a, b):
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


def dist(a, b):
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v] if n > 0 else [0.0 for _ in v]


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def test_rkd_distance_golden():
    pairs = [(i, j) for i in range(4) for j in range(4) if i != j]

    def psi(x):
        mu = sum(dist(x[i], x[j]) for i, j in pairs) / len(pairs)
        return {(i, j): dist(x[i], x[j]) / mu for i, j in pairs}

    ps, pt = psi(S), psi(T)
    expected = sum(huber(ps[p], pt[p]) for p in pairs) / len(pairs)
    assert rkd_distance_loss(torch.tensor(S), torch.tensor(T)).item() == pytest.approx(
        expected, rel=1e-5
    )


def test_rkd_angle_golden():
    def cosines(x):
        out = {}
        for j, i, k in itertools.product(range(4), repeat=3):
            e1 = unit([a - b for a, b in zip(x[i], x[j])])
            e2 = unit([a - b for a, b in zip(x[k], x[j])])
            out[j, i, k] = dot(e1, e2)
        return out

    cs, ct = cosines(S), cosines(T)
    expected = sum(huber(cs[k], ct[k]) for k in cs) / len(cs)
    assert rkd_angle_loss(torch.tensor(S), torch.tensor(T)).item() == pytest.approx(
        expected, rel=1e-5
    )


def test_rkd_invariances():
    s, t = torch.randn(6, 5), torch.randn(6, 3)
    base_d, base_a = rkd_distance_loss(s, t).item(), rkd_angle_loss(s, t).item()
    assert rkd_distance_loss(7.0 * s, t).item() == pytest.approx(
        base_d, rel=1e-5
    )  # scale-normalised
    assert rkd_angle_loss(3.0 * s + 2.0, t).item() == pytest.approx(base_a, rel=1e-4)
    assert rkd_distance_loss(s, 5.0 * s).item() == pytest.approx(0.0, abs=1e-6)


def test_sp_golden_and_width_invariance():
    def gram(x):
        g = [[dot(a, b) for b in x] for a in x]
        return [unit(row) for row in g]

    gs, gt = gram(S), gram(T)
    expected = sum((a - b) ** 2 for rs, rt in zip(gs, gt) for a, b in zip(rs, rt)) / 16
    assert sp_loss(torch.tensor(S), torch.tensor(T)).item() == pytest.approx(expected, rel=1e-5)
    # Width-invariant: appending zero features leaves G unchanged.
    padded = torch.cat([torch.tensor(S), torch.zeros(4, 9)], 1)
    assert sp_loss(padded, torch.tensor(T)).item() == pytest.approx(expected, rel=1e-5)


def test_cc_golden():
    gamma, order = 0.4, 2

    def corr(x):
        u = [unit(v) for v in x]
        return [
            [
                math.exp(-2 * gamma)
                * sum(
                    (2 * gamma) ** p / math.factorial(p) * dot(a, b) ** p for p in range(order + 1)
                )
                for b in u
            ]
            for a in u
        ]

    cs, ct = corr(S), corr(T)
    expected = sum((a - b) ** 2 for rs, rt in zip(cs, ct) for a, b in zip(rs, rt)) / 16
    assert cc_loss(
        torch.tensor(S), torch.tensor(T), gamma=gamma, order=order
    ).item() == pytest.approx(expected, rel=1e-5)


def test_cc_taylor_approaches_the_rbf_kernel():
    x = torch.nn.functional.normalize(torch.randn(5, 4), dim=1)
    exact = torch.exp(-0.4 * torch.cdist(x, x).pow(2))
    from distill.losses.relation import _cc_kernel

    assert torch.allclose(_cc_kernel(x, 0.4, 12), exact, atol=1e-5)


def test_fsp_golden():
    torch.manual_seed(0)
    s1, s2 = torch.randn(2, 2, 3), torch.randn(2, 3, 3)  # (N, C1, L), (N, C2, L)
    t1, t2 = torch.randn(2, 2, 3), torch.randn(2, 3, 3)

    def g(a, b):
        return [
            [
                [sum(a[n, i, p] * b[n, j, p] for p in range(3)) / 3 for j in range(3)]
                for i in range(2)
            ]
            for n in range(2)
        ]

    gs, gt = g(s1, s2), g(t1, t2)
    expected = (
        sum(
            float(gs[n][i][j] - gt[n][i][j]) ** 2
            for n in range(2)
            for i in range(2)
            for j in range(3)
        )
        / 2
    )
    assert fsp_loss((s1, s2), (t1, t2)).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="two layers"):
        fsp_loss(s1, t1)
    with pytest.raises(ValueError, match="same spatial size"):
        fsp_loss((s1, torch.randn(2, 3, 4)), (t1, t2))


def test_graph_golden():
    def adj(x):
        u = [unit(v) for v in x]
        return [[dot(a, b) for b in u] for a in u]

    a_s, a_t = adj(S), adj(T)
    expected = sum((a - b) ** 2 for rs, rt in zip(a_s, a_t) for a, b in zip(rs, rt)) / 16
    assert graph_loss(torch.tensor(S), torch.tensor(T)).item() == pytest.approx(expected, rel=1e-5)
    x = torch.randn(4, 3)
    rbf = graph_loss(x, x * 2, kernel="rbf", gamma=0.5)
    assert rbf.item() > 0
    assert graph_loss(x, x * 2).item() == pytest.approx(0.0, abs=1e-6)  # cosine ignores scale


@pytest.mark.parametrize("fn", [rkd_distance_loss, rkd_angle_loss, sp_loss, cc_loss, graph_loss])
def test_relation_shape_errors(fn):
    with pytest.raises(ValueError, match="batches differ"):
        fn(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="at least 2 samples"):
        fn(torch.randn(1, 3), torch.randn(1, 3))
