"""ReviewKD, OFD, SRD, PAD, ICKD, affinity, CAT-KD and SDD against their formulas, computed
independently (NumPy, SciPy, explicit loops)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import truncnorm

from distill.losses import LOSSES, PADLoss, ReviewKDLoss, kd_loss
from distill.losses.feature_peers import (
    affinity_loss,
    cat_kd_loss,
    class_contributions,
    hierarchical_context_loss,
    ickd_loss,
    ofd_loss,
    ofd_margin,
    sdd_loss,
    srd_loss,
)

G = torch.Generator().manual_seed(0)


def rand(*shape):
    return torch.randn(*shape, generator=G, dtype=torch.float64)


def test_ofd_margin_is_the_mean_of_the_negative_part_of_the_bn_gaussian():
    gamma = torch.tensor([1.0, 0.5, 2.0, 0.1], dtype=torch.float64)
    beta = torch.tensor([0.0, 1.0, -1.5, 0.5], dtype=torch.float64)  # last: P(x < 0) ~ 3e-7
    got = ofd_margin(gamma, beta)
    for i in range(3):
        mu, sd = beta[i].item(), gamma[i].item()
        want = truncnorm.mean(-np.inf, (0 - mu) / sd, loc=mu, scale=sd)  # E[x | x < 0]
        assert got[i].item() == pytest.approx(want, rel=1e-9)
    assert got[3].item() == pytest.approx(-3 * 0.1)  # almost never negative: -3 sigma


def test_ofd_partial_l2_golden_value():
    s, t = rand(2, 3, 4), rand(2, 3, 4)
    gamma, beta = torch.tensor([1.0, 0.7, 1.3]).double(), torch.tensor([0.2, -0.3, 0.0]).double()
    m = ofd_margin(gamma, beta).numpy()
    total = 0.0
    for n in range(2):
        for c in range(3):
            for p in range(4):
                target = max(t[n, c, p].item(), m[c])
                x = s[n, c, p].item()
                if x > target or target > 0:  # skip where both are "off" (x <= target <= 0)
                    total += (x - target) ** 2
    got = ofd_loss(s, (t, gamma, beta))
    assert got.item() == pytest.approx(total / 2, rel=1e-9)


def test_srd_golden_value():
    h_s, h_t = rand(3, 5), rand(3, 5)
    w, b = rand(4, 5), rand(4)
    temp = 2.0
    fm = ((h_s - h_t) ** 2).mean().item()
    kl = 0.0
    for i in range(3):
        zs = (w.numpy() @ h_s[i].numpy() + b.numpy()) / temp
        zt = (w.numpy() @ h_t[i].numpy() + b.numpy()) / temp
        ps, pt = np.exp(zs) / np.exp(zs).sum(), np.exp(zt) / np.exp(zt).sum()
        kl += float((pt * np.log(pt / ps)).sum())
    want = 0.5 * fm + 2.0 * temp**2 * kl / 3
    got = srd_loss(h_s, (h_t, w, b), feature_weight=0.5, regression_weight=2.0, temperature=temp)
    assert got.item() == pytest.approx(want, rel=1e-9)


def test_pad_weights_the_l2_by_the_predicted_variance():
    loss = PADLoss((4, 6), (4, 6), eps=1e-6).double()
    linear, norm = loss.variance
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.fill_(0.3)
    norm.eval()  # running stats (0, 1): the head outputs 0.3 * gamma + beta = 0.3
    s, t = rand(4, 6), rand(4, 6)
    v = 0.3 / math.sqrt(1 + norm.eps)
    want = (((t - s) ** 2).numpy() / (1e-6 + math.exp(v)) + v).mean()
    assert loss(s, t).item() == pytest.approx(want, rel=1e-9)


def test_ickd_golden_value():
    s, t = rand(2, 3, 5), rand(2, 3, 5)

    def icc(x):
        g = x @ x.T  # (C, C)
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    want = np.mean([((icc(s[n].numpy()) - icc(t[n].numpy())) ** 2).sum() / 9 for n in range(2)])
    assert ickd_loss(s, t).item() == pytest.approx(want, rel=1e-9)


def test_affinity_golden_value_and_channel_free():
    s, t = rand(2, 3, 4, 2), rand(2, 7, 4, 2)  # the teacher is wider: affinity is P x P

    def aff(x):
        v = x.reshape(x.shape[0], -1).T  # (P, C)
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        return v @ v.T

    want = np.mean([((aff(s[n].numpy()) - aff(t[n].numpy())) ** 2).sum() / 64 for n in range(2)])
    assert affinity_loss(s, t).item() == pytest.approx(want, rel=1e-9)


def test_class_contributions_add_up_to_the_logits():
    feat = rand(2, 3, 4)
    # a head on the flattened map: the contributions summed over positions give the logits
    w_flat, b = rand(5, 12), rand(5)
    logits = F.linear(feat.flatten(1), w_flat, b)
    contrib = class_contributions(feat, w_flat)
    torch.testing.assert_close(contrib.sum(-1) + b, logits)
    # a head on pooled features: the mean over positions gives the logits (CAMs, Zhou 2016)
    w_gap = rand(5, 3)
    logits = F.linear(feat.mean(-1), w_gap, b)
    torch.testing.assert_close(class_contributions(feat, w_gap).mean(-1) + b, logits)


def test_cat_kd_golden_value():
    f_s, f_t = rand(2, 3, 4), rand(2, 6, 4)
    w_s, w_t = rand(5, 3), rand(5, 6)

    def cams(f, w):
        out = np.einsum("qk,nkp->nqp", w.numpy(), f.numpy())  # (N, classes, 4)
        pooled = out.reshape(2, 5, 2, 2).mean(-1)  # 2 cells of 2 positions
        return pooled / np.linalg.norm(pooled, axis=2, keepdims=True)

    want = ((cams(f_s, w_s) - cams(f_t, w_t)) ** 2).mean()
    assert cat_kd_loss((f_s, w_s), (f_t, w_t), pool=2).item() == pytest.approx(want, rel=1e-9)


def test_sdd_is_kd_at_the_global_scale_and_weighs_complementary_cells():
    f_s, f_t = rand(3, 4, 4), rand(3, 6, 4)
    w_s, b_s, w_t, b_t = rand(5, 4), rand(5), rand(5, 6), rand(5)
    z_s, z_t = F.linear(f_s.mean(-1), w_s, b_s), F.linear(f_t.mean(-1), w_t, b_t)
    only_global = sdd_loss((f_s, w_s, b_s), (f_t, w_t, b_t), scales=(1,), temperature=3.0)
    assert only_global.item() == pytest.approx(kd_loss(z_s, z_t, temperature=3.0).item(), rel=1e-9)
    # two cells per sample: KD on each cell's logits, complementary cells (the teacher's local
    # top-1 differs from its global top-1) counted twice; mean over the 3 x 2 cells
    total = 0.0
    for n in range(3):
        for cell in range(2):
            ls = F.linear(f_s[n, :, 2 * cell : 2 * cell + 2].mean(-1), w_s, b_s)
            lt = F.linear(f_t[n, :, 2 * cell : 2 * cell + 2].mean(-1), w_t, b_t)
            ps, pt = torch.softmax(ls / 3.0, -1), torch.softmax(lt / 3.0, -1)
            kl = 9.0 * (pt * (pt / ps).log()).sum().item()
            total += kl * (1.0 if lt.argmax() == z_t[n].argmax() else 2.0)
    got = sdd_loss((f_s, w_s, b_s), (f_t, w_t, b_t), scales=(2,), temperature=3.0)
    assert got.item() == pytest.approx(total / 6, rel=1e-9)
    with pytest.raises(ValueError, match="globally pooled"):
        sdd_loss((f_s, rand(5, 16), b_s), (f_t, w_t, b_t))


def test_hierarchical_context_loss_golden_value():
    s, t = rand(2, 3, 8), rand(2, 3, 8)

    def pooled(x, k):
        return x.reshape(2, 3, k, 8 // k).mean(-1)

    mse = lambda a, b: ((a - b) ** 2).mean()  # noqa: E731
    want = mse(s.numpy(), t.numpy())
    want += 0.5 * mse(pooled(s.numpy(), 4), pooled(t.numpy(), 4))
    want += 0.25 * mse(pooled(s.numpy(), 2), pooled(t.numpy(), 2))
    want += 0.125 * mse(pooled(s.numpy(), 1), pooled(t.numpy(), 1))
    assert hierarchical_context_loss(s, t).item() == pytest.approx(want / 1.875, rel=1e-9)


def test_reviewkd_fuses_deep_to_shallow_and_trains_only_the_student_side():
    torch.manual_seed(0)
    s = [torch.randn(4, 3, 8, requires_grad=True), torch.randn(4, 5, 4, requires_grad=True)]
    t = [torch.randn(4, 6, 8, requires_grad=True), torch.randn(4, 7, 4, requires_grad=True)]
    loss_fn = ReviewKDLoss(tuple(x.shape for x in s), tuple(x.shape for x in t), mid_channels=4)
    loss_fn.eval()  # BatchNorm with its (0, 1) running stats: the maps are easy to rebuild
    deep, shallow = loss_fn.fusions
    with torch.no_grad():  # attention weights of exactly 1/2 each
        shallow.attention[0].weight.zero_()
        shallow.attention[0].bias.zero_()
    out_deep, res_deep = deep(s[1], None)
    mixed = 0.5 * shallow.reduce(s[0]) + 0.5 * F.interpolate(res_deep, size=8, mode="nearest")
    want = hierarchical_context_loss(shallow.out(mixed), t[0]) + hierarchical_context_loss(
        out_deep, t[1]
    )
    got = loss_fn(s, t)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    got.backward()
    assert all(x.grad is not None for x in s) and all(x.grad is None for x in t)
    assert all(p.grad is not None for p in deep.parameters())
    with pytest.raises(ValueError, match="same positions"):
        ReviewKDLoss(((4, 3, 8),), ((4, 6, 5),))


def test_new_feature_losses_are_in_the_table():
    for name in ("reviewkd", "ofd", "srd", "pad", "ickd", "affinity", "cat_kd", "sdd", "kdsvd"):
        assert LOSSES[name].family == "feature" and "20" in LOSSES[name].paper


def test_kdsvd_golden_value_with_numpys_svd():
    from distill.losses.feature_peers import kdsvd_loss

    s = [rand(2, 3, 6), rand(2, 4, 3)]
    t = [rand(2, 5, 6), rand(2, 6, 3)]
    k, extra, gamma = 2, 1, 8.0

    def top(x, n):  # right singular vectors over positions (unit columns), normalised values
        _, sv, vh = np.linalg.svd(x, full_matrices=False)
        return vh[:n].T, sv[:n] / np.linalg.norm(sv[:n])

    total = 0.0
    for n in range(2):
        prev = None
        for fs, ft in zip(s, t):
            vt, st = top(ft[n].numpy(), k)
            vs_all, _ = top(fs[n].numpy(), k + extra)
            vs = np.zeros_like(vt)
            for j in range(k):  # the student's vector closest to teacher vector j, sign-aligned
                cos = vs_all.T @ vt[:, j]
                i = int(np.argmax(np.abs(cos)))
                vs[:, j] = vs_all[:, i] * np.sign(cos[i])
            vt, vs = vt * st, vs * st
            if prev is not None:
                ps, pt = prev
                rs = np.exp(-((vs[:, None, :] - ps[None, :, :]) ** 2) / gamma)
                rt = np.exp(-((vt[:, None, :] - pt[None, :, :]) ** 2) / gamma)
                total += ((rs - rt) ** 2).sum()
            prev = vs, vt
    got = kdsvd_loss(s, t, k=k, extra=extra, gamma=gamma)
    assert got.item() == pytest.approx(total / 2, rel=1e-7)
    with pytest.raises(ValueError, match="two or more stages"):
        kdsvd_loss(s[:1], t[:1])
