"""Text data as people hold it, turned into `input_ids` / `labels` for token-level KD.

Three shapes, recognised by their columns (as TRL's trainers recognise them):

- language modelling: `text`; every token is supervised;
- prompt / completion: `prompt` and `completion`; only the completion's tokens (and the
  end-of-sequence token after it) carry loss;
- conversational: `messages`, a list of `{"role", "content"}` rendered with the tokenizer's
  chat template; only the assistant turns' tokens carry loss;
- prompt only: `prompt` alone, a string or a conversation (rendered with the chat
  template and the generation prompt); no token carries loss until a completion is
  generated for it (on-policy KD: the student writes, the teacher scores).

The assistant mask is found by rendering the conversation up to each turn: the tokens of
`template(messages[:k+1])` past those of `template(messages[:k], add_generation_prompt)`
are turn k's answer. It relies on the rendered text of a shorter conversation being a
prefix of the longer one, which chat templates keep at turn boundaries; when a template
does not, the turn is refused with its index rather than masked wrongly.
"""

from __future__ import annotations

from typing import Any

import torch

SHAPES = {
    "text": ("text",),
    "prompt": ("prompt", "completion"),
    "messages": ("messages",),
    "prompt_only": ("prompt",),
}


def shape_of(columns: list[str]) -> str | None:
    """'text', 'prompt' or 'messages' from a dataset's columns; None when already tokenised."""
    if "input_ids" in columns:
        return None
    for shape, needed in (
        ("messages", ("messages",)),
        ("prompt", SHAPES["prompt"]),
        ("prompt_only", SHAPES["prompt_only"]),
        ("text", ("text",)),
    ):
        if all(c in columns for c in needed):
            return shape
    raise ValueError(
        f"the dataset has columns {columns}; give input_ids (tokenised), text, prompt + "
        f"completion, prompt alone (completed on-policy), or messages (a list of "
        f"{{role, content}}); other columns need a data_collator of yours that reads them"
    )


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def encode_text(example: dict, tokenizer: Any) -> tuple[list[int], list[int]]:
    ids = _ids(tokenizer, example["text"], True)
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return ids, list(ids)


def encode_prompt(example: dict, tokenizer: Any) -> tuple[list[int], list[int]]:
    prompt = _ids(tokenizer, example["prompt"], True)
    completion = _ids(tokenizer, example["completion"], False)
    if tokenizer.eos_token_id is not None:
        completion = completion + [tokenizer.eos_token_id]
    return prompt + completion, [-100] * len(prompt) + completion


def _need_template(tokenizer: Any, what: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"the dataset holds {what}, but the tokenizer has no chat template; set "
            f"tokenizer.chat_template (a Jinja template) or render the conversations to text "
            f"yourself"
        )


def encode_messages(example: dict, tokenizer: Any) -> tuple[list[int], list[int]]:
    _need_template(tokenizer, "conversations (messages)")
    messages = example["messages"]

    ids = _render(tokenizer, messages, False)
    labels = [-100] * len(ids)
    for k, turn in enumerate(messages):
        if turn.get("role") != "assistant":
            continue
        before, upto = (
            _render(tokenizer, messages[:k], True),
            _render(tokenizer, messages[: k + 1], False),
        )
        if ids[: len(upto)] != upto or upto[: len(before)] != before:
            raise ValueError(
                f"messages turn {k}: the chat template does not render a shorter conversation "
                f"as a prefix of the longer one, so its assistant tokens cannot be found"
            )
        labels[len(before) : len(upto)] = ids[len(before) : len(upto)]
    return ids, labels


def _render(tokenizer: Any, turns: list[dict], prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=prompt)
    return _ids(tokenizer, text, False)


def encode_prompt_only(example: dict, tokenizer: Any) -> tuple[list[int], list[int]]:
    """A prompt to be completed by a model: no label yet. A conversation is rendered with
    the generation prompt, so the completion starts as the assistant's turn."""
    prompt = example["prompt"]
    if isinstance(prompt, list):
        _need_template(tokenizer, "prompts as conversations")
        ids = _render(tokenizer, prompt, True)
    else:
        ids = _ids(tokenizer, prompt, True)
    return ids, [-100] * len(ids)


ENCODERS = {
    "text": encode_text,
    "prompt": encode_prompt,
    "messages": encode_messages,
    "prompt_only": encode_prompt_only,
}


def tokenize_dataset(dataset: Any, tokenizer: Any, max_length: int = 1024) -> Any:
    """`dataset` (a Hugging Face Dataset or IterableDataset, or a list of dicts) with
    input_ids, attention_mask and labels (-100 where no loss), truncated to `max_length`;
    a stream is tokenised as it is read. Tokenised data is returned as it is."""
    columns = getattr(dataset, "column_names", None)
    if columns is None:  # a list of dicts, or a stream whose features are not declared
        first = (
            next(iter(dataset), None)
            if not hasattr(dataset, "__len__")
            else (dataset[0] if len(dataset) else None)
        )
        columns = list(first.keys()) if first is not None else []
    columns = list(columns)
    shape = shape_of(columns)
    if shape is None:
        return dataset
    encode = ENCODERS[shape]

    def row(example: dict) -> dict:
        ids, labels = encode(example, tokenizer)
        ids, labels = ids[:max_length], labels[:max_length]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

    if hasattr(dataset, "map"):  # Hugging Face: mapped lazily onto its Arrow cache
        return dataset.map(row, remove_columns=columns)
    return [row(example) for example in dataset]


class PadCollator:
    """Right-pads input_ids (with the tokenizer's pad id), attention_mask (0) and labels
    (-100) to the longest row of the batch."""

    def __init__(self, tokenizer: Any):
        pad = tokenizer.pad_token_id
        self.pad = pad if pad is not None else (tokenizer.eos_token_id or 0)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        out = {"input_ids": [], "attention_mask": [], "labels": []}
        for r in rows:
            gap = width - len(r["input_ids"])
            out["input_ids"].append(list(r["input_ids"]) + [self.pad] * gap)
            out["attention_mask"].append(list(r["attention_mask"]) + [0] * gap)
            out["labels"].append(list(r["labels"]) + [-100] * gap)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}
