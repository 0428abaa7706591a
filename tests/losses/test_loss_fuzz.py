"""Property-based fuzzing of the loss library: random shapes, extreme logits, low precision."""

import inspect

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distill.losses import LOSSES

NAMES = [n for n, spec in LOSSES.items() if spec.family.startswith("response")]
WITH_TEACHER = [n for n in NAMES if LOSSES[n].needs_teacher]
RELATION = [  # fsp and lsp read other shapes (tested in test_losses and test_paradigms)
    n for n, spec in LOSSES.items() if spec.family == "relation" and n not in ("fsp", "lsp")
]
DIVERGENCES = ["kd", "soft_ce", "reverse_kl", "js"]
BATCH_LOSSES = {"dist", "mlkd", "skd"}  # need 2 or more rows (issue 27: an error, not a constant)


def call(name, s, t, **kwargs):
    """Call a loss, giving it labels (random, some unlabelled) if it takes them."""
    fn = LOSSES[name].fn
    if isinstance(fn, type):  # a loss with parameters (ctkd), built for these shapes
        fn = fn(tuple(s.shape), tuple(t.shape))
    params = inspect.signature(fn).parameters
    if "targets" in params:
        gen = torch.Generator().manual_seed(0)
        targets = torch.randint(-1, s.shape[-1], s.shape[:-1], generator=gen)
        kwargs["targets"] = targets
    kwargs = {k: v for k, v in kwargs.items() if k in params}
    return fn(s, t, **kwargs)


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
    rows = s.reshape(-1, s.shape[-1]).shape[0]
    if rows < 2 and name in BATCH_LOSSES:  # they compare rows with each other: refused
        with pytest.raises(ValueError, match="2 or more rows"):
            call(name, s, t, temperature=temperature)
        return
    loss = call(name, s, t, temperature=temperature)
    assert loss.dim() == 0 and torch.isfinite(loss), (name, loss)
    loss.backward()
    assert torch.isfinite(s.grad).all()


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from(WITH_TEACHER),
    st.sampled_from([((3, 5), (3, 4)), ((3, 5), (1, 5)), ((2, 3, 5), (3, 5)), ((4, 5), (5,))]),
)
def test_no_silent_broadcast(name, shapes):
    s, t = torch.randn(shapes[0]), torch.randn(shapes[1])
    with pytest.raises(ValueError, match="shape"):
        call(name, s, t)


@settings(max_examples=30, deadline=None)
@given(logit_pairs(), st.sampled_from([*DIVERGENCES, "ls_kd", "ttm", "wttm"]))
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


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(RELATION),
    st.integers(2, 6),
    st.integers(1, 9),
    st.integers(1, 9),
    st.sampled_from([1e-3, 1.0, 1e3]),
    st.sampled_from([torch.float32, torch.bfloat16]),
)
def test_relation_losses_finite(name, n, d_s, d_t, scale, dtype):
    gen = torch.Generator().manual_seed(n * 100 + d_s * 10 + d_t)
    s = (torch.randn(n, d_s, generator=gen) * scale).to(dtype).requires_grad_()
    t = (torch.randn(n, d_t, generator=gen) * scale).to(dtype)
    loss = LOSSES[name].fn(s, t)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(s.grad).all()
