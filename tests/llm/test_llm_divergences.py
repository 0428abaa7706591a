"""Token divergences against their formulas; masking; accumulation invariance; chunked = naive."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.llm import TOKEN_DIVERGENCES, chunked_token_divergence, token_kd_loss
from distill.losses.divergences import (
    forward_kl,
    generalized_jsd,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    total_variation,
)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _kl(a, b):
    return float((a * (np.log(a) - np.log(b))).sum())


S = np.array([[1.0, 0.0, -1.0, 0.5]])
T = np.array([[0.2, 1.5, -0.3, 0.0]])


def _t(x):
    return torch.tensor(x, dtype=torch.float32)


def test_golden_values_against_numpy():
    q, p = _softmax(S[0] / 2), _softmax(T[0] / 2)
    args = {"temperature": 2.0}
    assert float(forward_kl(_t(S), _t(T), **args)) == pytest.approx(_kl(p, q), rel=1e-5)
    assert float(reverse_kl(_t(S), _t(T), **args)) == pytest.approx(_kl(q, p), rel=1e-5)
    m = 0.3 * p + 0.7 * q
    jsd = 0.3 * _kl(p, m) + 0.7 * _kl(q, m)
    assert float(generalized_jsd(_t(S), _t(T), beta=0.3, **args)) == pytest.approx(jsd, rel=1e-5)
    m = 0.2 * p + 0.8 * q
    assert float(skew_forward_kl(_t(S), _t(T), alpha=0.2, **args)) == pytest.approx(
        _kl(p, m), rel=1e-5
    )
    m = 0.2 * q + 0.8 * p
    assert float(skew_reverse_kl(_t(S), _t(T), alpha=0.2, **args)) == pytest.approx(
        _kl(q, m), rel=1e-5
    )
    tv = 0.5 * np.abs(p - q).sum()
    assert float(total_variation(_t(S), _t(T), **args)) == pytest.approx(tv, rel=1e-5)


def test_jsd_endpoints_and_limits():
    s, t = _t(S), _t(T)
    fkl, rkl = float(forward_kl(s, t)), float(reverse_kl(s, t))
    assert float(generalized_jsd(s, t, beta=0.0)) == pytest.approx(fkl)
    assert float(generalized_jsd(s, t, beta=1.0)) == pytest.approx(rkl)
    eps = 1e-4
    assert float(generalized_jsd(s, t, beta=eps)) / eps == pytest.approx(fkl, rel=1e-3)
    assert float(generalized_jsd(s, t, beta=1 - eps)) / eps == pytest.approx(rkl, rel=1e-3)
    assert float(skew_forward_kl(s, t, alpha=0.0)) == pytest.approx(fkl)
    assert float(skew_reverse_kl(s, t, alpha=0.0)) == pytest.approx(rkl)
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(s, t, beta=1.5)


@pytest.mark.parametrize("name", sorted(TOKEN_DIVERGENCES))
def test_zero_at_identity_and_teacher_gets_no_gradient(name):
    s = torch.randn(2, 5, 11, requires_grad=True)
    t = torch.randn(2, 5, 11, requires_grad=True)
    zero = token_kd_loss(s.detach(), s.detach().clone(), divergence=name)
    assert float(zero) == pytest.approx(0, abs=1e-6)
    token_kd_loss(s, t, divergence=name).backward()
    assert t.grad is None and s.grad is not None


@pytest.mark.parametrize("name", sorted(TOKEN_DIVERGENCES))
def test_masked_tokens_do_not_count(name):
    torch.manual_seed(0)
    s, t = torch.randn(2, 6, 9), torch.randn(2, 6, 9)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    base = token_kd_loss(s, t, divergence=name, mask=mask)
    s2 = s.clone()
    s2[~mask] = torch.randn(int((~mask).sum()), 9) * 5  # prompt and padding positions
    assert float(token_kd_loss(s2, t, divergence=name, mask=mask)) == pytest.approx(float(base))
    per_token = TOKEN_DIVERGENCES[name][0](s[mask], t[mask])
    assert float(base) == pytest.approx(float(per_token) / int(mask.sum()), rel=1e-5)


@pytest.mark.parametrize("name", ["forward_kl", "jsd", "skew_reverse_kl"])
def test_gradient_accumulation_does_not_change_the_loss(name):
    torch.manual_seed(1)
    s = torch.randn(4, 7, 13, requires_grad=True)
    t = torch.randn(4, 7, 13)
    mask = torch.rand(4, 7) > 0.3  # micro-batches with unequal token counts
    full = token_kd_loss(s, t, divergence=name, mask=mask)
    (g_full,) = torch.autograd.grad(full, s)
    n = mask.sum()
    parts = [
        token_kd_loss(
            s[i : i + 2], t[i : i + 2], divergence=name, mask=mask[i : i + 2], num_tokens=n
        )
        for i in (0, 2)
    ]
    assert float(sum(parts).detach()) == pytest.approx(float(full.detach()), rel=1e-5)
    (g_acc,) = torch.autograd.grad(sum(parts), s)
    torch.testing.assert_close(g_acc, g_full)
    # the naive per-micro-batch mean, averaged, differs when token counts differ
    naive = (
        sum(
            token_kd_loss(s[i : i + 2], t[i : i + 2], divergence=name, mask=mask[i : i + 2])
            for i in (0, 2)
        )
        / 2
    )
    if int(mask[:2].sum()) != int(mask[2:].sum()):
        assert abs(float(naive.detach()) - float(full.detach())) > 1e-6


@pytest.mark.parametrize("name", sorted(TOKEN_DIVERGENCES))
@pytest.mark.parametrize("bias", [False, True])
def test_chunked_equals_naive(name, bias):
    torch.manual_seed(2)
    vocab, d_s, d_t = 50, 8, 12
    head_s = torch.nn.Linear(d_s, vocab, bias=bias)
    head_t = torch.nn.Linear(d_t, vocab, bias=bias)
    h_s = torch.randn(3, 9, d_s, requires_grad=True)
    h_t = torch.randn(3, 9, d_t)
    mask = torch.rand(3, 9) > 0.25
    args = {"temperature": 1.5, **({"beta": 0.3} if name == "jsd" else {})}
    naive = token_kd_loss(head_s(h_s), head_t(h_t), divergence=name, mask=mask, **args)
    grads_naive = torch.autograd.grad(naive, [h_s, *head_s.parameters()])
    chunked = chunked_token_divergence(
        h_s, head_s, h_t, head_t, divergence=name, mask=mask, chunk_size=4, **args
    )
    grads_chunked = torch.autograd.grad(chunked, [h_s, *head_s.parameters()])
    assert float(chunked.detach()) == pytest.approx(float(naive.detach()), rel=1e-5)
    for a, b in zip(grads_chunked, grads_naive):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert all(p.grad is None for p in head_t.parameters())


def test_chunked_rejects_mismatched_vocabularies():
    with pytest.raises(ValueError, match="align the vocabularies"):
        chunked_token_divergence(
            torch.randn(2, 4), torch.randn(10, 4), torch.randn(2, 4), torch.randn(11, 4)
        )
