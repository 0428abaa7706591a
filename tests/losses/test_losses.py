import inspect
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distill.losses import LOSSES, js_loss, kd_loss, mse_loss, reverse_kl_loss, soft_cross_entropy


def softmax(row, t):
    e = [math.exp(v / t) for v in row]
    z = sum(e)
    return [v / z for v in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


S = [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]]
T = [[3.0, 2.0, 1.0], [0.0, 0.0, 1.0]]


def test_kd_golden_value_by_hand():
    temp = 2.0
    expected = temp**2 * sum(kl(softmax(t, temp), softmax(s, temp)) for s, t in zip(S, T)) / 2
    got = kd_loss(torch.tensor(S), torch.tensor(T), temperature=temp)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_soft_ce_is_kd_plus_teacher_entropy():
    temp = 3.0
    ent = sum(-sum(p * math.log(p) for p in softmax(t, temp)) for t in T) / 2
    kd = kd_loss(torch.tensor(S), torch.tensor(T), temperature=temp).item()
    ce = soft_cross_entropy(torch.tensor(S), torch.tensor(T), temperature=temp).item()
    assert ce == pytest.approx(kd + temp**2 * ent, rel=1e-5)


def test_reverse_kl_golden_value():
    temp = 1.5
    expected = temp**2 * sum(kl(softmax(s, temp), softmax(t, temp)) for s, t in zip(S, T)) / 2
    got = reverse_kl_loss(torch.tensor(S), torch.tensor(T), temperature=temp)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_js_golden_value_and_bound():
    ps, pt = softmax(S[0], 1.0), softmax(T[0], 1.0)
    m = [(a + b) / 2 for a, b in zip(ps, pt)]
    expected = 0.5 * (kl(pt, m) + kl(ps, m))
    got = js_loss(torch.tensor(S[:1]), torch.tensor(T[:1]))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    far = js_loss(torch.tensor([[100.0, 0.0]]), torch.tensor([[0.0, 100.0]]))
    assert far.item() == pytest.approx(math.log(2), rel=1e-4)


def test_mse_golden_value():
    got = mse_loss(torch.tensor(S), torch.tensor(T))
    expected = sum((a - b) ** 2 for s, t in zip(S, T) for a, b in zip(s, t)) / 6
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("fn", [kd_loss, reverse_kl_loss, js_loss, mse_loss])
def test_zero_on_identical_inputs(fn):
    x = torch.randn(5, 7)
    assert fn(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    "name",
    [
        n
        for n, spec in LOSSES.items()
        if spec.family in ("response", "relation", "response/feature") and n not in ("fsp", "lsp")
    ],
)
def test_gradient_reaches_student_only(name):
    student = torch.randn(4, 6, requires_grad=True)
    teacher = torch.randn(4, 6, requires_grad=True)
    fn = LOSSES[name].fn
    if isinstance(fn, type):  # a loss with parameters (ctkd), built for these shapes
        fn = fn(tuple(student.shape), tuple(teacher.shape))
    extra = (
        {"targets": torch.tensor([0, 1, -1, 5])}
        if "targets" in inspect.signature(fn).parameters
        else {}
    )
    fn(student, teacher, **extra).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_t_squared_keeps_gradient_scale():
    # Without T^2 the soft-target gradient shrinks ~1/T^2 at high T (Hinton et al. 2015, sec. 2.1):
    # with it, the gradient of KD tends to (z_s - z_t) / (C) for zero-mean logits, independent of T.
    torch.manual_seed(0)
    s = torch.randn(8, 10)
    s = (s - s.mean(-1, keepdim=True)).requires_grad_()
    t = torch.randn(8, 10)
    t = t - t.mean(-1, keepdim=True)
    grads = []
    for temp in (20.0, 40.0):
        s.grad = None
        kd_loss(s, t, temperature=temp).backward()
        grads.append(s.grad.clone())
    limit = (s.detach() - t) / 10 / 8  # mean over 8 rows
    for g in grads:
        assert torch.allclose(g, limit, atol=2e-3)
    assert torch.allclose(grads[0], grads[1], atol=1e-3)


def test_sequence_shape_and_mask():
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    full = kd_loss(s, t, temperature=2.0)
    flat = kd_loss(s.reshape(6, 5), t.reshape(6, 5), temperature=2.0)
    assert full.item() == pytest.approx(flat.item(), rel=1e-6)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    masked = kd_loss(s, t, temperature=2.0, mask=mask)
    kept = kd_loss(s[mask], t[mask], temperature=2.0)
    assert masked.item() == pytest.approx(kept.item(), rel=1e-6)


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="differ in shape"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="adapter"):
        mse_loss(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 3), temperature=0.0)


logits = st.lists(st.floats(-20, 20), min_size=6, max_size=6)


@settings(max_examples=50, deadline=None)
@given(logits, logits, st.floats(0.5, 8.0))
def test_divergences_non_negative(a, b, temp):
    s, t = torch.tensor([a]), torch.tensor([b])
    for fn in (kd_loss, reverse_kl_loss, js_loss):
        assert fn(s, t, temperature=temp).item() >= -1e-5
    assert js_loss(s, t, temperature=temp).item() <= temp**2 * math.log(2) + 1e-4


def test_bf16_logits_are_handled_in_float32():
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    ref = kd_loss(s, t)
    low = kd_loss(s.bfloat16(), t.bfloat16())
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(ref.item(), rel=0.05)


@pytest.mark.parametrize(
    "prepared_fn, reference",
    [("kd_from_soft_targets", kd_loss), ("soft_ce_from_soft_targets", soft_cross_entropy)],
)
@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("masked", [False, True])
def test_prepared_soft_targets_match_the_loss_on_logits(
    prepared_fn, reference, temperature, masked
):
    """KD on (p, sum p log p) stored once equals KD on the teacher's logits: value and gradient,
    on (N, C) and masked (N, L, C) logits."""
    from distill.losses import response

    g = torch.Generator().manual_seed(3)
    shape = (3, 5, 7) if masked else (6, 7)
    student = (torch.randn(shape, generator=g) * 2).requires_grad_(True)
    teacher = torch.randn(shape, generator=g) * 3
    mask = torch.rand(shape[:-1], generator=g) > 0.4 if masked else None
    prepared = response.soft_targets(teacher, temperature=temperature)
    got = getattr(response, prepared_fn)(student, prepared, temperature=temperature, mask=mask)
    want = reference(student, teacher, temperature=temperature, mask=mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    (g_got,) = torch.autograd.grad(got, student)
    (g_want,) = torch.autograd.grad(want, student)
    torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-7)


def test_prepared_soft_targets_reject_a_mismatch():
    from distill.losses.response import kd_from_soft_targets, soft_targets

    prepared = soft_targets(torch.randn(4, 5), temperature=2.0)
    with pytest.raises(ValueError, match="do not fit"):
        kd_from_soft_targets(torch.randn(4, 6), prepared, temperature=2.0)
    with pytest.raises(ValueError, match="temperature"):
        soft_targets(torch.randn(4, 5), temperature=0.0)
