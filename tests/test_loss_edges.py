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
