"""Distillation across tokenizers in `DistillationTrainer`: the text tokenised by both models,
their tokens aligned by character offsets, and a loss at the aligned positions.

**Data.** Each example's text (`text`, `prompt` + `completion`, or chat `messages` rendered
with the student's chat template, which the teacher reads too) is tokenised by both
tokenizers with character offsets (fast tokenizers). A token carries loss when its
characters lie in the supervised part (the completion, the assistant turns, all of a
`text`), and an end-of-sequence token closes each side. Position j of the student
(predicting its token j+1) is aligned with position i of the teacher when their next
tokens cover exactly the same characters: both models are then predicting the same piece of
text. Rows hold the pairs as `align_student` / `align_teacher`.

**Loss at the aligned pairs** (`cross_tokenizer=`):

- `"uld"`: universal logit distillation (Boizard et al. 2024): the L1 distance between the
  two distributions sorted in decreasing order, token identities ignored;
- `"spans"`: the forward KL over the tokens both vocabularies spell the same way (each
  token's decoded text, end-of-sequence tokens mapped to each other), both distributions
  renormalised over those tokens. Where the aligned next tokens are one string, this is the
  token-level KD of a shared vocabulary; the vocabulary map by string is the exact-match
  case of the cross-tokenizer mappings in the literature (e.g. Wan et al. 2024, FuseLLM,
  which also matches near strings).

Either is summed over pairs and divided by the student's supervised tokens of the step, like
every loss of the trainer; with `chunk_size` the pairs' logits are built a chunk at a time
from the final hidden states (`distill.llm.chunked`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.llm.vocab import uld_sum
from distill.losses.divergences import kl_rows

TEACHER_COLUMNS = (
    "teacher_input_ids",
    "teacher_attention_mask",
    "align_student",
    "align_teacher",
)


def _text_and_spans(example: dict, shape: str, tok: Any) -> tuple[str, list[tuple[int, int]]]:
    """The example as one string and its supervised character ranges."""
    if shape == "text":
        return example["text"], [(0, len(example["text"]))]
    if shape == "prompt":
        text = example["prompt"] + example["completion"]
        return text, [(len(example["prompt"]), len(text))]
    if shape == "messages":
        turns = example["messages"]

        def render(part: list, prompt: bool) -> str:
            return tok.apply_chat_template(part, tokenize=False, add_generation_prompt=prompt)

        text, spans = render(turns, False), []
        for k, turn in enumerate(turns):
            if turn.get("role") == "assistant":
                spans.append((len(render(turns[:k], True)), len(render(turns[: k + 1], False))))
        return text, spans
    raise ValueError(
        "cross_tokenizer needs the completions in the data (text, prompt + completion or "
        "messages); prompts alone would be completed on-policy, which cannot be aligned "
        "across tokenizers here"
    )


def _tokens(tok: Any, text: str, spans: list, max_length: int) -> tuple[list, list, list]:
    """(ids, character spans, labels) of `text` by `tok`, an end-of-sequence token added."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    if tok.eos_token_id is not None:
        ids.append(tok.eos_token_id)
        offsets.append((len(text), len(text)))
    inside = [any(a <= s and e <= b for a, b in spans) for s, e in offsets]
    if tok.eos_token_id is not None:
        inside[-1] = bool(spans) and spans[-1][1] == len(text)
    labels = [i if keep else -100 for i, keep in zip(ids, inside)]
    return ids[:max_length], offsets[:max_length], labels[:max_length]


def encode_both(example: dict, shape: str, s_tok: Any, t_tok: Any, max_length: int) -> dict:
    """One example tokenised by both tokenizers, with its aligned positions."""
    for name, tok in (("processing_class", s_tok), ("teacher_processing_class", t_tok)):
        if not getattr(tok, "is_fast", False):
            raise ValueError(
                f"cross_tokenizer needs character offsets: {name} must be a fast tokenizer"
            )
    text, spans = _text_and_spans(example, shape, s_tok)
    s_ids, s_off, s_lab = _tokens(s_tok, text, spans, max_length)
    t_ids, t_off, t_lab = _tokens(t_tok, text, spans, max_length)
    teacher_next = {t_off[i + 1]: i for i in range(len(t_ids) - 1) if t_lab[i + 1] != -100}
    pairs = [
        (j, teacher_next[s_off[j + 1]])
        for j in range(len(s_ids) - 1)
        if s_lab[j + 1] != -100 and s_off[j + 1] in teacher_next
    ]
    return {
        "input_ids": s_ids,
        "attention_mask": [1] * len(s_ids),
        "labels": s_lab,
        "teacher_input_ids": t_ids,
        "teacher_attention_mask": [1] * len(t_ids),
        "align_student": [j for j, _ in pairs],
        "align_teacher": [i for _, i in pairs],
    }


def pad_teacher_columns(rows: list[dict], pad: int) -> dict[str, Tensor]:
    """The teacher's columns of a batch, right-padded (alignments with -1)."""
    out = {}
    for key, fill in zip(TEACHER_COLUMNS, (pad, 0, -1, -1)):
        width = max(1, max(len(r[key]) for r in rows))
        out[key] = torch.tensor([list(r[key]) + [fill] * (width - len(r[key])) for r in rows])
    return out


def vocabulary_map(s_tok: Any, t_tok: Any) -> tuple[Tensor, Tensor]:
    """(student ids, teacher ids) of the tokens both spell the same (each token's decoded
    text; undecodable pieces left out), end-of-sequence tokens paired."""

    def spelled(tok: Any) -> dict[str, int]:
        out: dict[str, int] = {}
        for i in range(len(tok)):
            text = tok.decode([i])
            if text and "\ufffd" not in text and i not in tok.all_special_ids:
                out.setdefault(text, i)
        return out

    s, t = spelled(s_tok), spelled(t_tok)
    shared = sorted(set(s) & set(t))
    pairs = [(s[x], t[x]) for x in shared]
    if s_tok.eos_token_id is not None and t_tok.eos_token_id is not None:
        pairs.append((s_tok.eos_token_id, t_tok.eos_token_id))
    if len(pairs) < 2:
        raise ValueError(
            "cross_tokenizer='spans': the two vocabularies share no token spelled the same; "
            "use cross_tokenizer='uld', which ignores token identities"
        )
    return torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])


def pair_loss(z_s: Tensor, z_t: Tensor, mode: str, vocab_map: Any, temperature: float) -> Tensor:
    """The summed loss of aligned pairs from their logits (P, V_s) and (P, V_t)."""
    if mode == "uld":
        return uld_sum(z_s, z_t, temperature)
    z_t = z_t.detach().float() / temperature
    z_s = z_s.float() / temperature
    s_ids, t_ids = (m.to(z_s.device) for m in vocab_map)
    log_q = F.log_softmax(z_s[:, s_ids], -1)
    log_p = F.log_softmax(z_t[:, t_ids], -1)
    return kl_rows(log_p, log_q).sum()


def aligned(hidden: Tensor, align: Tensor) -> Tensor:
    """The rows of `hidden` (B, L, d) at the aligned positions (B, P; -1 = none), flat."""
    rows, cols = (align >= 0).nonzero(as_tuple=True)
    return hidden[rows, align[rows, cols]]


class CrossCollator:
    """Pads the student's columns as `PadCollator` does, and the teacher's and the
    alignments (`pad_teacher_columns`)."""

    def __init__(self, s_tok: Any, t_tok: Any):
        from distill.llm.chat import PadCollator

        self.student = PadCollator(s_tok)
        pad = t_tok.pad_token_id if t_tok.pad_token_id is not None else t_tok.eos_token_id
        self.teacher_pad = pad or 0

    def __call__(self, rows: list[dict]) -> dict[str, Tensor]:
        own = [{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in rows]
        return {**self.student(own), **pad_teacher_columns(rows, self.teacher_pad)}


def check_cross(mode: str, t_tok: Any, served: Any, lmbda: float, seq_kd: bool) -> None:
    if mode not in ("uld", "spans", "dskd"):
        raise ValueError(f"cross_tokenizer must be 'uld', 'spans' or 'dskd', got {mode!r}")
    if t_tok is None:
        raise ValueError("cross_tokenizer needs the teacher's tokenizer: teacher_processing_class=")
    if served is not None:
        raise ValueError("cross_tokenizer needs the teacher's full logits: give teacher_model")
    if lmbda or seq_kd:
        raise ValueError(
            "cross_tokenizer aligns the data's own text: on-policy (lmbda) and seq_kd batches "
            "are written by a model in one tokenizer only; set lmbda=0 and seq_kd=False"
        )


def prepare_cross_text(kwargs: dict[str, Any], t_tok: Any, max_length: int) -> dict[str, str]:
    """The text datasets tokenised by both tokenizers (`encode_both`), and `CrossCollator`
    as the collator when none is given. Returns the shapes found, by dataset key."""
    from distill.llm.chat import shape_of

    s_tok, shapes = kwargs.get("processing_class"), {}
    if s_tok is None:
        raise ValueError("cross_tokenizer tokenises the text itself: pass processing_class=")
    for key in ("train_dataset", "eval_dataset"):
        data = kwargs.get(key)
        if data is None or isinstance(data, dict):
            continue
        columns = list(getattr(data, "column_names", None) or (data[0].keys() if len(data) else []))
        shape = shape_of(columns)
        if shape is None:
            raise ValueError(
                f"cross_tokenizer: {key} is already tokenised; give it as text, prompt + "
                f"completion or messages, so both tokenizers can read it"
            )
        shapes[key] = shape

        def row(example: dict, shape: str = shape) -> dict:
            return encode_both(example, shape, s_tok, t_tok, max_length)

        kwargs[key] = (
            data.map(row, remove_columns=columns)
            if hasattr(data, "map")
            else [row(example) for example in data]
        )
    if kwargs.get("data_collator") is None:
        kwargs["data_collator"] = CrossCollator(s_tok, t_tok)
    return shapes


def cross_losses(trainer: Any, model: Any, inputs: dict, targets: Tensor, mask: Tensor, n: Any):
    """(kd, ce, outputs, extra loss) of a batch across tokenizers; `inputs` holds the
    student's columns after the teacher's are popped here."""
    from distill.llm.chunked import chunked_cross_entropy, chunked_loss, decoder_and_head

    if trainer.cross_tokenizer == "dskd":
        from distill.llm.cross_dskd import dskd_losses

        return dskd_losses(trainer, model, inputs, targets, n)

    t_in = {"input_ids": inputs.pop("teacher_input_ids"),
            "attention_mask": inputs.pop("teacher_attention_mask")}  # fmt: skip
    a_s, a_t = inputs.pop("align_student"), inputs.pop("align_teacher")
    mode, vmap, temp = trainer.cross_tokenizer, trainer.vocab_map, trainer.div_args["temperature"]
    if trainer.chunk_size:
        h_s, head = trainer._final_hidden(model, inputs)
        t_decoder, t_head = decoder_and_head(trainer.teacher)
        with torch.no_grad():
            h_t = aligned(t_decoder(**t_in).last_hidden_state, a_t)
        w_s, w_t = head.weight, t_head.weight

        def of_chunk(z: Tensor, start: int, end: int) -> Tensor:
            return pair_loss(z, h_t[start:end].float() @ w_t.float().t(), mode, vmap, temp)

        kd = chunked_loss(aligned(h_s, a_s), w_s, of_chunk, trainer.chunk_size)
        ce = chunked_cross_entropy(h_s[:, :-1][mask], w_s, targets[mask], trainer.chunk_size)
        return kd / n, ce / n, None, 0.0
    outputs = model(**inputs)
    with torch.no_grad():
        z_t = aligned(trainer.teacher(**t_in).logits, a_t)
    kd = pair_loss(aligned(outputs.logits, a_s), z_t, mode, vmap, temp)
    ce = F.cross_entropy(outputs.logits[:, :-1].float()[mask], targets[mask], reduction="sum")
    return kd / n, ce / n, outputs, 0.0
