"""SKD and DIST+ against their formulas (shared/reference/skd-and-dist-plus.md), written
again here in numpy in float64: values, gradients (central differences of the numpy
formula), the published variants and the peers' conventions, and the edge cases."""

import numpy as np
import pytest
import torch

from distill.losses import (
    LOSSES,
    dist_loss,
    dist_plus_channel_relation,
    dist_plus_loss,
    dist_plus_relation_loss,
    dist_plus_spatial_relation,
    skd_direction_loss,
    skd_instance_loss,
    skd_loss,
)


def np_softmax(z, t=1.0):
    e = np.exp(z / t - (z / t).max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_skd(zs, zt, *, t=4.0, lam=0.1, variant="paper"):
    """SKD from the note's formulas; S inverted directly (the code uses Cholesky)."""
    ps, pt = np_softmax(zs, t), np_softmax(zt, t)
    instance = np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), 1))
    scale = zs.shape[1] if variant == "authors" else 1.0
    ns = zs / np.linalg.norm(zs, axis=1, keepdims=True)
    nt = zt / np.linalg.norm(zt, axis=1, keepdims=True)
    d = (ns @ ns.T - nt @ nt.T) / scale
    cov = np.cov(d, rowvar=False)  # columns are the variables, rows the observations
    inv = np.linalg.inv(cov + lam * np.eye(len(d)))
    direction = np.mean([np.sqrt(row @ inv @ row) for row in d])
    if variant == "paper":
        return instance + direction
    p1 = np_softmax(zt)
    conf, mass = p1.max(1), p1.sum(0)
    rho_s = np.mean(conf <= np.percentile(conf, 50))
    rho_c = np.mean(mass <= np.percentile(mass, 50))
    return rho_s * t**2 * instance + rho_c * direction


def numeric_grad(fn, x, h=1e-6):
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        grad[idx] = (fn(up) - fn(down)) / (2 * h)
    return grad


RNG = np.random.default_rng(0)
ZS = RNG.normal(size=(6, 5)) * 2
ZT = RNG.normal(size=(6, 5)) * 2


@pytest.mark.parametrize("variant", ["paper", "authors"])
def test_skd_value_and_gradient_match_the_formula(variant):
    s = torch.tensor(ZS, requires_grad=True)
    got = skd_loss(s, torch.tensor(ZT), temperature=4.0, tikhonov=0.1, variant=variant)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(np_skd(ZS, ZT, variant=variant), rel=1e-10)
    got.backward()
    want = numeric_grad(lambda z: np_skd(z, ZT, variant=variant), ZS)
    np.testing.assert_allclose(s.grad.numpy(), want, rtol=1e-5, atol=1e-8)


def test_skd_terms_recover_the_two_published_forms():
    s, t = torch.tensor(ZS), torch.tensor(ZT)
    instance = skd_instance_loss(s, t, temperature=4.0)
    # torchdistill's paper form: plain sum of the instance and direction losses, s = 1
    paper = instance + skd_direction_loss(s, t, tikhonov=0.1, gram_scale=1.0)
    assert skd_loss(s, t).item() == pytest.approx(paper.item(), rel=1e-12)
    # the authors' code: masks scale the averaged terms by the fraction at or below the median
    p1 = torch.softmax(t, -1)
    rho_s = (p1.amax(1) <= p1.amax(1).median()).double().mean()  # 6 rows: torch's lower median
    rho_s_np = np.mean(p1.amax(1).numpy() <= np.percentile(p1.amax(1).numpy(), 50))
    assert rho_s_np == pytest.approx(0.5)  # even count, distinct values: numpy's midpoint
    assert rho_s.item() == pytest.approx(0.5)
    direction_c = skd_direction_loss(s, t, tikhonov=0.1, gram_scale=5.0)
    rho_c = np.mean(p1.sum(0).numpy() <= np.percentile(p1.sum(0).numpy(), 50))
    authors = rho_s_np * 16 * instance + rho_c * direction_c
    assert skd_loss(s, t, variant="authors").item() == pytest.approx(authors.item(), rel=1e-12)
    # with s = C and many classes the whitening is nearly inert: mean ||D_i|| / sqrt(lambda)
    s, t = torch.randn(8, 100, dtype=torch.float64), torch.randn(8, 100, dtype=torch.float64)
    ns, nt = torch.nn.functional.normalize(s, dim=1), torch.nn.functional.normalize(t, dim=1)
    d = (ns @ ns.T - nt @ nt.T) / 100
    inert = (d.norm(dim=1) / 0.1**0.5).mean().item()
    assert skd_direction_loss(s, t, gram_scale=100.0).item() == pytest.approx(inert, rel=0.01)


def test_skd_direction_is_zero_with_finite_gradient_when_directions_agree():
    t = torch.tensor(ZT)
    s = (3.0 * t).clone().requires_grad_(True)  # same directions, other scale
    value = skd_direction_loss(s, t)
    value.backward()
    assert value.item() == pytest.approx(1e-6, abs=1e-9)  # sqrt of the 1e-12 floor
    assert torch.isfinite(s.grad).all() and s.grad.abs().max() == 0


def test_skd_refuses_a_batch_of_one_and_is_finite_at_two_and_with_large_logits():
    with pytest.raises(ValueError, match="needs 2 or more rows"):
        skd_loss(torch.randn(1, 5), torch.randn(1, 5))
    # the instance term alone is defined for one row
    one = skd_loss(torch.randn(1, 5), torch.randn(1, 5), direction_weight=0.0)
    assert torch.isfinite(one)
    for scale, batch in ((1.0, 2), (1e4, 2), (1e4, 16)):
        for variant in ("paper", "authors"):
            s = (torch.randn(batch, 10) * scale).requires_grad_(True)
            value = skd_loss(s, torch.randn(batch, 10) * scale, variant=variant)
            value.backward()
            assert torch.isfinite(value) and torch.isfinite(s.grad).all(), (scale, batch)


def test_skd_gradient_reaches_only_the_student_and_bad_arguments_are_named():
    s, t = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    skd_loss(s, t).backward()
    assert s.grad is not None and t.grad is None
    with pytest.raises(ValueError, match="variant must be 'paper' or 'authors'"):
        skd_loss(s, t, variant="ours")
    with pytest.raises(ValueError, match="tikhonov must be > 0"):
        skd_loss(s, t, tikhonov=0.0)
    assert LOSSES["skd"].family == "response"


# DIST+ ------------------------------------------------------------------------------


def np_corr(a, b, eps=1e-8):
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b) + eps)


def np_channel(fs, ft):
    b, _, h, w = fs.shape
    rho = [
        np_corr(fs[i, :, y, x], ft[i, :, y, x])
        for i in range(b)
        for y in range(h)
        for x in range(w)
    ]
    return 1 - np.mean(rho)


def np_spatial(fs, ft):
    a_s, a_t = fs.sum(1).reshape(len(fs), -1), ft.sum(1).reshape(len(ft), -1)
    return 1 - np.mean([np_corr(a_s[:, p], a_t[:, p]) for p in range(a_s.shape[1])])


def np_dist(zs, zt, tau=1.0, beta=1.0, gamma=1.0):
    ys, yt = np_softmax(zs, tau), np_softmax(zt, tau)
    inter = 1 - np.mean([np_corr(ys[i], yt[i]) for i in range(len(ys))])
    intra = 1 - np.mean([np_corr(ys[:, c], yt[:, c]) for c in range(ys.shape[1])])
    return tau**2 * (beta * inter + gamma * intra)


FS = RNG.normal(size=(4, 3, 2, 3))
FT = FS * 0.5 + RNG.normal(size=(4, 3, 2, 3))


def test_dist_plus_relations_match_the_formula_with_gradients():
    fs = torch.tensor(FS, requires_grad=True)
    ch = dist_plus_channel_relation(fs, torch.tensor(FT))
    sp = dist_plus_spatial_relation(fs, torch.tensor(FT))
    assert ch.item() == pytest.approx(np_channel(FS, FT), rel=1e-10)
    assert sp.item() == pytest.approx(np_spatial(FS, FT), rel=1e-10)
    total = dist_plus_relation_loss(fs, torch.tensor(FT), iota=0.7, kappa=1.3)
    total.backward()
    want = numeric_grad(lambda f: 0.7 * np_channel(f, FT) + 1.3 * np_spatial(f, FT), FS)
    np.testing.assert_allclose(fs.grad.numpy(), want, rtol=1e-5, atol=1e-8)


def test_dist_plus_is_dist_plus_the_relations():
    zs, zt = torch.tensor(ZS), torch.tensor(ZT[:, :5])
    zs4, zt4 = zs[:4], zt[:4]
    got = dist_plus_loss(zs4, zt4, torch.tensor(FS), torch.tensor(FT), temperature=2.0)
    want = np_dist(ZS[:4], ZT[:4, :5], tau=2.0) + np_channel(FS, FT) + np_spatial(FS, FT)
    assert got.item() == pytest.approx(want, rel=1e-10)
    assert dist_loss(zs4, zt4, temperature=2.0).item() == pytest.approx(
        np_dist(ZS[:4], ZT[:4, :5], tau=2.0), rel=1e-10
    )


def test_dist_plus_recovers_the_peer_value_with_the_channel_sign_flipped():
    """torchdistill 1.1.5's DISTPlusLoss adds the mean channel correlation itself; written
    here as that code computes it (feature maps as (B, C, H*W), correlation over channels)."""
    zs, zt = torch.tensor(ZS[:4]), torch.tensor(ZT[:4])
    fs, ft = torch.tensor(FS), torch.tensor(FT)
    b, c = fs.shape[:2]
    a = fs.reshape(b, c, -1).transpose(1, 2).reshape(-1, c)  # every (sample, position) a row
    t = ft.reshape(b, c, -1).transpose(1, 2).reshape(-1, c)
    a, t = a - a.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    peer_channel = ((a * t).sum(1) / (a.norm(dim=1) * t.norm(dim=1) + 1e-8)).mean()
    peer = dist_loss(zs, zt) + peer_channel + dist_plus_spatial_relation(fs, ft)
    ours = dist_plus_loss(zs, zt, fs, ft)
    flipped = ours - dist_plus_channel_relation(fs, ft) + (1 - dist_plus_channel_relation(fs, ft))
    assert flipped.item() == pytest.approx(peer.item(), rel=1e-12)


def test_dist_plus_edges():
    # identical maps: both distances 0
    f = torch.randn(5, 4, 3)
    assert dist_plus_relation_loss(f, f).item() == pytest.approx(0.0, abs=1e-6)
    # B = 2 and large values: finite values and gradients, 1-d and 2-d maps and vectors
    for shape in ((2, 4, 3, 3), (2, 8, 5), (2, 6)):
        s = (torch.randn(shape) * 1e4).requires_grad_(True)
        value = dist_plus_relation_loss(s, torch.randn(shape) * 1e4)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(s.grad).all(), shape
    with pytest.raises(ValueError, match="at least 2 samples"):
        dist_plus_relation_loss(torch.randn(1, 4, 3), torch.randn(1, 4, 3))
    with pytest.raises(ValueError, match="adapter"):
        dist_plus_relation_loss(torch.randn(2, 4, 3), torch.randn(2, 8, 3))
    t = torch.randn(3, 4, 2, requires_grad=True)
    s = torch.randn(3, 4, 2, requires_grad=True)
    dist_plus_relation_loss(s, t).backward()
    assert s.grad is not None and t.grad is None
    assert LOSSES["dist_plus_relation"].family == "feature"
