"""Edge cases found by fuzzing (issue 27): batch size 1, low precision, constants' dtype."""

import math

import pytest
import torch

from distill.losses import InfoNCELoss, dist_loss, js_loss, pairwise_affinity, pkt_loss


def test_losses_that_compare_rows_refuse_a_batch_of_one():
    one_s, one_t = torch.randn(1, 5), torch.randn(1, 5)
    with pytest.raises(ValueError, match="dist: .* 2 or\\s+more rows"):
        dist_loss(one_s, one_t)
    with pytest.raises(ValueError, match="pkt: .* 2 or more rows"):
        pkt_loss(one_s, one_t)
    with pytest.raises(ValueError, match="infonce: .* 2 or\\s+more rows"):
        InfoNCELoss((1, 5), (1, 5))(one_s, one_t)
    # two rows are enough, and give a loss that depends on the student
    two_s = torch.randn(2, 5, requires_grad=True)
    dist_loss(two_s, torch.randn(2, 5)).backward()
    assert two_s.grad.abs().sum() > 0


def test_js_keeps_float64_precision():
    s = torch.tensor([[100.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[0.0, 100.0]], dtype=torch.float64)
    got = js_loss(s.float().double(), t)
    assert abs(got.item() - math.log(2)) < 1e-12  # float32's log 2 would be off by ~2e-8


def test_pairwise_affinity_gradient_is_finite_at_an_empty_region_in_float16():
    torch.manual_seed(0)  # (unseeded, a node of tiny norm made the cosine check flaky)
    x = torch.zeros(2, 4, 8, 8, dtype=torch.float16)
    x[:, :, :4] = torch.randn(2, 4, 4, 8).half()  # the bottom half pools to exactly zero
    x.requires_grad_()
    loss = pairwise_affinity(x, torch.randn(2, 4, 8, 8).half(), grid=2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    # away from zero it is still the cosine affinity of the pooled nodes
    y = torch.randn(2, 4, 8, 8)
    nodes = torch.nn.functional.adaptive_avg_pool2d(y, 2).flatten(2)
    nodes = torch.nn.functional.normalize(nodes, dim=1)
    want = nodes.transpose(1, 2) @ nodes
    got_zero = pairwise_affinity(y, y, grid=2)
    assert got_zero.item() == pytest.approx(0.0, abs=1e-10)
    from distill.losses.dense import _affinity

    torch.testing.assert_close(_affinity(y, 2), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel", ["rbf", "distance", "linear"])
def test_lsp_gradient_is_finite_for_large_float16_embeddings(kernel):
    from distill.losses import lsp_loss

    gen = torch.Generator().manual_seed(0)
    s = (torch.randn(4, 5, 16, generator=gen) * 1e4).half().requires_grad_()
    t = (torch.randn(4, 5, 16, generator=gen) * 1e4).half()
    loss = lsp_loss(s, t, kernel=kernel)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def _pure_losses():
    """(name, loss(student, teacher)) for losses without learned parts, on fixed shapes."""
    from distill.losses import dense, feature, relation, response

    def g(*shape, seed=0):
        return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))

    logits = (g(6, 5), g(6, 5, seed=1))
    maps = (g(6, 4, 3, 3), g(6, 4, 3, 3, seed=1))
    vecs = (g(6, 8), g(6, 8, seed=1))
    tokens = (g(2, 5, 6), g(2, 5, 6, seed=1))
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    return [
        ("mse", logits, response.mse_loss),
        ("dkd", logits, lambda s, t: response.dkd_loss(s, t, targets=y)),
        ("dist", logits, response.dist_loss),
        ("at", maps, feature.at_loss),
        ("grad_at", maps, feature.grad_at_loss),
        ("nst", maps, feature.nst_loss),
        ("pkt", vecs, feature.pkt_loss),
        ("ab", maps, feature.ab_loss),
        ("cosine", vecs, feature.cosine_loss),
        ("attention_kl", (vecs[0].softmax(-1), vecs[1].softmax(-1)), feature.attention_kl_loss),
        ("minilm", tokens, lambda s, t: relation.minilm_relation_loss(s, t, heads=2)),
        ("rkd_distance", vecs, relation.rkd_distance_loss),
        ("rkd_angle", vecs, relation.rkd_angle_loss),
        ("sp", vecs, relation.sp_loss),
        ("cc", vecs, relation.cc_loss),
        ("fsp", (maps, (maps[1], maps[0])), relation.fsp_loss),
        ("cwd", maps, dense.cwd_loss),
        ("pixel_kd", maps, dense.pixel_kd),
        ("pairwise_affinity", maps, lambda s, t: dense.pairwise_affinity(s, t, grid=2)),
    ]


@pytest.mark.parametrize("case", _pure_losses(), ids=lambda c: c[0])
def test_losses_compute_in_at_least_the_inputs_precision(case):
    """float64 inputs give a float64 loss (equal to the float32 one within float32's
    precision); float16 inputs are computed in float32."""
    _name, (s, t), fn = case

    def cast(x, dtype):
        return tuple(cast(v, dtype) for v in x) if isinstance(x, tuple) else x.to(dtype)

    wide = fn(cast(s, torch.float64), cast(t, torch.float64))
    assert wide.dtype == torch.float64
    narrow = fn(cast(s, torch.float32), cast(t, torch.float32))
    assert float(wide) == pytest.approx(float(narrow), rel=1e-4, abs=1e-6)
    half = fn(cast(s, torch.float16), cast(t, torch.float16))
    assert half.dtype == torch.float32 and torch.isfinite(half)
