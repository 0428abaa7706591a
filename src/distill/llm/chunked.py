"""Token divergences from hidden states, a chunk of tokens at a time.

The naive path materialises (batch, length, vocab) logits for both models and keeps the
student's for the backward pass; at a 32k vocabulary that dominates memory. Here the two
output heads are applied to `chunk_size` tokens at a time; each chunk's gradient with
respect to the student's hidden states and head weights is computed right away (the idea
of fused linear-cross-entropy kernels such as Liger's), so at most one chunk of logits
exists at any moment. Values and gradients equal the naive path's (tested).
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill.losses.divergences import TOKEN_DIVERGENCES


def _linear(h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    out = h @ weight.t()
    return out if bias is None else out + bias


class _ChunkedLoss(torch.autograd.Function):
    """sum over chunks of loss(z_chunk, start, end), z = h @ w.T + b, without keeping z."""

    @staticmethod
    def forward(ctx, h_s, w_s, b_s, chunk_loss, chunk_size):  # noqa: D102
        total = torch.zeros((), dtype=torch.float32, device=h_s.device)
        grad_h = torch.zeros_like(h_s, dtype=torch.float32)
        grad_w = torch.zeros_like(w_s, dtype=torch.float32)
        grad_b = torch.zeros_like(b_s, dtype=torch.float32) if b_s is not None else None
        for start in range(0, h_s.shape[0], chunk_size):
            end = min(start + chunk_size, h_s.shape[0])
            hs = h_s[start:end]
            with torch.enable_grad():
                z_s = _linear(hs, w_s, b_s).detach().requires_grad_(True)
                value = chunk_loss(z_s, start, end)
                (g,) = torch.autograd.grad(value, z_s)
            total += value.detach().float()
            g = g.to(hs.dtype)
            grad_h[start:end] = (g @ w_s).float()
            grad_w += (g.t() @ hs).float()
            if grad_b is not None:
                grad_b += g.float().sum(0)
        ctx.save_for_backward(grad_h, grad_w, *([grad_b] if grad_b is not None else []))
        ctx.dtypes = (h_s.dtype, w_s.dtype, b_s.dtype if b_s is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        grad_h, grad_w, *rest = ctx.saved_tensors
        h_dtype, w_dtype, b_dtype = ctx.dtypes
        gb = (rest[0] * grad_out).to(b_dtype) if rest else None
        return (grad_h * grad_out).to(h_dtype), (grad_w * grad_out).to(w_dtype), gb, None, None


def chunked_loss(
    hidden: Tensor, head: torch.nn.Module | Tensor, chunk_loss, chunk_size: int
) -> Tensor:
    """Sum of `chunk_loss(logits_chunk, start, end)` over row chunks of `hidden` (rows, d),
    with logits = head(hidden) never materialised for more than one chunk."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    w, b = _weight_bias(head)
    return _ChunkedLoss.apply(hidden, w, b, chunk_loss, chunk_size)


def chunked_cross_entropy(
    hidden: Tensor, head: torch.nn.Module | Tensor, targets: Tensor, chunk_size: int = 1024
) -> Tensor:
    """Summed cross-entropy of `targets` (rows,) from hidden states (rows, d), chunked."""

    def ce(z: Tensor, start: int, end: int) -> Tensor:
        return torch.nn.functional.cross_entropy(z.float(), targets[start:end], reduction="sum")

    return chunked_loss(hidden, head, ce, chunk_size)


def chunked_token_divergence(
    student_hidden: Tensor,
    student_head: torch.nn.Module | Tensor,
    teacher_hidden: Tensor,
    teacher_head: torch.nn.Module | Tensor,
    *,
    divergence: str = "forward_kl",
    mask: Tensor | None = None,
    num_tokens: float | Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    **args: float,
) -> Tensor:
    """Mean divergence over supervised tokens, computed chunk by chunk from hidden states.

    `*_hidden` are (..., d) final hidden states (after the final norm, i.e. what the output
    head reads); `*_head` an `nn.Linear` (e.g. `model.get_output_embeddings()`) or its weight.
    Only supervised tokens (mask True) are computed at all. Normalised like `token_kd_loss`.
    """
    if divergence not in TOKEN_DIVERGENCES:
        raise ValueError(
            f"unknown token divergence {divergence!r}; choose from {sorted(TOKEN_DIVERGENCES)}"
        )
    w_s, _ = _weight_bias(student_head)
    w_t, b_t = _weight_bias(teacher_head)
    if w_s.shape[0] != w_t.shape[0]:
        raise ValueError(
            f"student head predicts {w_s.shape[0]} tokens and the teacher's {w_t.shape[0]}; "
            f"align the vocabularies first (distill.llm.vocab)"
        )
    h_s = student_hidden.reshape(-1, student_hidden.shape[-1])
    h_t = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])
    if mask is not None:
        keep = mask.reshape(-1).bool()
        h_s, h_t = h_s[keep], h_t[keep]
    if num_tokens is None:
        num_tokens = h_s.shape[0]
    fn = TOKEN_DIVERGENCES[divergence][0]
    call_args = {"temperature": temperature, **args}
    w_t, b_t = w_t.detach(), None if b_t is None else b_t.detach()

    def divergence_of_chunk(z_s: Tensor, start: int, end: int) -> Tensor:
        with torch.no_grad():
            z_t = _linear(h_t[start:end], w_t, b_t)
        return fn(z_s, z_t, **call_args)

    total = chunked_loss(h_s, student_head, divergence_of_chunk, chunk_size)
    return total / torch.as_tensor(num_tokens, dtype=total.dtype).clamp_min(1)


def _weight_bias(head: torch.nn.Module | Tensor) -> tuple[Tensor, Tensor | None]:
    if isinstance(head, Tensor):
        return head, None
    return head.weight, getattr(head, "bias", None)


def decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the decoder that returns the final hidden states, the output head) of a causal LM,
    through wrappers: DDP's `.module`, PEFT's `get_base_model()`, then the model's own
    `get_decoder()` and `get_output_embeddings()`."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is None or head is None or decoder is model:
        raise ValueError(
            f"chunk_size: cannot find the decoder and output head of {type(model).__name__} "
            f"(get_decoder / get_output_embeddings); use chunk_size=0"
        )
    return decoder, head
