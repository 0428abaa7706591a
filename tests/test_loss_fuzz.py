"""Property-based fuzzing of the loss library: random shapes, extreme logits, low precision."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distill.losses import LOSSES

NAMES = list(LOSSES)
DIVERGENCES = ["kd", "soft_ce", "reverse_kl", "js"]


@st.composite
def logit_pairs(draw):
    shape = draw(st.sampled_from([(1, 2), (3, 5), (2, 3, 7), (4, 1, 11), (1, 4, 2)]))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0, 1e4]))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(shape, generator=gen) * scale
    t = torch.randn(shape, generator=gen) * scale
    if draw(st.booleans()):  # one-hot-like extremes: +-1e4 on a single class
        t = torch.full(shape, -1e4)
        t[..., 0] = 1e4
    return s, t


@settings(max_examples=60, deadline=None)
@given(
    logit_pairs(),
    st.sampled_from(NAMES),
    st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    st.sampled_from([0.5, 1.0, 4.0, 20.0]),
)
def test_finite_values_and_gradients(pair, name, dtype, temperature):
    s, t = pair
    s = s.clamp(-6e4, 6e4).to(dtype).requires_grad_()  # stay inside fp16's range
    t = t.clamp(-6e4, 6e4).to(dtype)
    kwargs = {"temperature": temperature} if name in DIVERGENCES else {}
    loss = LOSSES[name].fn(s, t, **kwargs)
    assert loss.dim() == 0 and torch.isfinite(loss), (name, loss)
    loss.backward()
    assert torch.isfinite(s.grad).all()


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from(NAMES),
    st.sampled_from([((3, 5), (3, 4)), ((3, 5), (1, 5)), ((2, 3, 5), (3, 5)), ((4, 5), (5,))]),
)
def test_no_silent_broadcast(name, shapes):
    s, t = torch.randn(shapes[0]), torch.randn(shapes[1])
    with pytest.raises(ValueError, match="shape"):
        LOSSES[name].fn(s, t)


@settings(max_examples=30, deadline=None)
@given(logit_pairs(), st.sampled_from(DIVERGENCES))
def test_masked_rows_do_not_matter(pair, name):
    s, t = pair
    if s.dim() < 3:
        s, t = s.unsqueeze(1), t.unsqueeze(1)
    mask = torch.zeros(s.shape[:-1], dtype=torch.bool)
    mask[0, 0] = True
    garbage_s, garbage_t = s.clone(), t.clone()
    garbage_s[~mask] = 123.0
    garbage_t[~mask] = -77.0
    fn = LOSSES[name].fn
    assert torch.allclose(fn(s, t, mask=mask), fn(garbage_s, garbage_t, mask=mask))
