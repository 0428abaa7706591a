"""Generation for distillation: a model's continuations of prompts (sampled or greedy,
with its key-value cache), the teacher's sequences for sequence-level KD (also through
another tokenizer), and how diverse they are."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from distill.llm.scheme import SequenceArgs


@torch.no_grad()
def sample_continuations(
    model: nn.Module,
    prompt: Tensor,
    new_tokens: int,
    temperature: float = 1.0,
    vocab: int | None = None,
    greedy: bool = False,
) -> Tensor:
    """`prompt` (N, P) extended by `new_tokens` sampled (or greedy) tokens: (N, P + new)."""
    was = model.training
    model.eval()
    home = prompt.device  # results go back where the prompt came from
    ids = prompt.to(next(model.parameters()).device)
    past = None
    step_input = ids
    cache_kw = _cache_keyword(model)
    for _ in range(new_tokens):
        kwargs = {cache_kw: past} if past is not None else {}
        out = model(input_ids=step_input, use_cache=True, **kwargs)
        past = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        logits = out.logits[:, -1].float()
        if vocab is not None:
            logits = logits[:, :vocab]
        if greedy:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            nxt = torch.multinomial(F.softmax(logits / temperature, -1), 1)
        ids = torch.cat([ids, nxt], 1)
        step_input = nxt if past is not None else ids
    model.train(was)
    return ids.to(home)


def _cache_keyword(model: nn.Module) -> str:
    """The keyword a causal LM takes its key/value cache by: `cache` from transformers 5.24
    on (which deprecates `past_key_values`, to be removed in 5.40), else `past_key_values`."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def teacher_sequences(teacher: nn.Module, train, args: SequenceArgs, seed: int) -> Tensor:
    """Sequence-level KD (Kim & Rush 2016): each training row's prompt continued by the
    teacher to the row's length. Returns (N, L + 1) token ids."""
    return continue_rows(teacher, train.ids, args, seed)


def continue_rows(teacher: nn.Module, ids: Tensor, args: SequenceArgs, seed: int) -> Tensor:
    """Each row's first `prompt_tokens` continued by `teacher` to the row's length, in
    batches of 256, with the generator seeded by `seed`: (N, L) token ids."""
    p = min(args.prompt_tokens, ids.shape[1] - 1)
    out = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for start in range(0, len(ids), 256):
            prompt = ids[start : start + 256, :p]
            out.append(sample_continuations(teacher, prompt, ids.shape[1] - p, greedy=args.greedy))
    return torch.cat(out)


def report_diversity(generated: Tensor, pad: int | None = None) -> float:
    """The distinct-token ratio of generated tokens (distinct / total), printed; a warning
    when the teacher's generations collapse (ratio under 0.05, or a single token), which
    would train the student on degenerate text."""

    tokens = (
        generated[generated >= 0]
        if pad is None
        else generated[(generated >= 0) & (generated != pad)]
    )
    distinct = int(tokens.unique().numel()) if tokens.numel() else 0
    ratio = distinct / max(int(tokens.numel()), 1)
    line = f"sequence-level KD: the teacher generated {tokens.numel()} tokens, {distinct} distinct (ratio {ratio:.3f})"
    if distinct <= 1 or ratio < 0.05:
        line = (
            f"warning: {line}; its generations have collapsed (e.g. all newlines): the "
            f"student would learn degenerate text. Check the teacher, or sample (greedy: false)"
        )
    print(line, file=sys.stderr)
    return ratio


def retokenized_teacher_sequences(
    teacher: nn.Module, train, teacher_tok, student_tok, args: SequenceArgs, seed: int
) -> tuple[Tensor, Tensor]:
    """The teacher continues each row's first `prompt_tokens` teacher tokens to its row
    length; the text (prompt + continuation) is re-tokenized by the student's tokenizer into
    rows of the student's length + 1 (-1 where padded). Returns (ids, start of the
    continuation in each row, in student tokens)."""
    t_ids = train.teacher_ids
    p = min(args.prompt_tokens, t_ids.shape[1] - 1)
    generated = continue_rows(teacher, t_ids, args, seed)
    report_diversity(generated[:, p:], teacher_tok.pad_id)
    length = train.ids.shape[1]
    rows, starts = [], []
    for row in generated.tolist():
        prompt_text = teacher_tok.decode(row[:p])
        ids = student_tok.encode(teacher_tok.decode(row))[:length]
        starts.append(min(len(student_tok.encode(prompt_text)), len(ids)))
        rows.append(ids + [-1] * (length - len(ids)))
    return torch.tensor(rows), torch.tensor(starts)


__all__ = [
    "continue_rows",
    "report_diversity",
    "retokenized_teacher_sequences",
    "sample_continuations",
    "teacher_sequences",
]
