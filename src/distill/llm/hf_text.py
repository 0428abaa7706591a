"""Hugging Face text datasets for `lm_kd`: plain text, prompt/completion and chat messages.

`data.name: hf_text` reads what `data.name: hf` reads offline (a `save_to_disk` folder,
Parquet / JSON(L) / CSV files, a folder of them; never the Hub) and recognises the shape by
its columns, as TRL's trainers do (`distill.llm.chat`):

- `text`: every token carries loss;
- `prompt` + `completion`: only the completion's tokens and the end-of-sequence token;
- `messages` (lists of `{role, content}`): rendered with the tokenizer's chat template,
  only the assistant turns' tokens carry loss.

`tokenizer` is a local Hugging Face tokenizer folder (any shape; chat messages need one with
a chat template), or distill's own `bpe` / `bytes` / a `tokenizer.json` (text and
prompt/completion). Rows become `distill.llm.text.TokenDataset` rows of `length` + 1 tokens,
right-padded; longer rows are cut. The splits the files name are used (`train`, then
`validation` / `val` / `dev`, then `test`); missing ones are carved from train by
`val_fraction` / `test_fraction`, by row, seeded by `split_seed`.

Streaming is not offered here: the token rows of a split are held as one tensor (8 bytes a
token), which for the sizes `lm_kd` trains on is small next to the models.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from distill.data.core import DataSplits
from distill.errors import ConfigError, DataError
from distill.llm.chat import ENCODERS, shape_of
from distill.llm.text import TokenDataset, load_tokenizer

VAL_NAMES = ("validation", "val", "valid", "dev")


class TransformersTokenizer:
    """A `transformers` tokenizer seen through distill's `Tokenizer` protocol (and kept as
    `.hf` for chat templates and for saving with an exported student)."""

    def __init__(self, hf: Any, name: str):
        self.hf, self.name = hf, name
        self.vocab_size = len(hf)
        eos = hf.eos_token_id
        if eos is None:
            raise ConfigError(
                f"tokenizer {name!r} has no end-of-sequence token; set eos_token in its "
                f"tokenizer_config.json"
            )
        bos = hf.bos_token_id
        self.eos_id, self.bos_id = eos, bos if bos is not None else eos
        self.pad_id = hf.pad_token_id if hf.pad_token_id is not None else eos

    def encode(self, text: str) -> list[int]:
        return self.hf(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)


class _AsTransformers:
    """distill's own tokenizer (bytes, BPE) offered the calls `distill.llm.chat` makes of a
    `transformers` tokenizer; it has no chat template."""

    chat_template = None

    def __init__(self, tok: Any):
        self.tok = tok
        self.eos_token_id = tok.eos_id

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = self.tok.encode(text)
        return {"input_ids": [self.tok.bos_id, *ids] if add_special_tokens else ids}


def open_tokenizer(spec: str, train_texts: list[str], vocab_size: int) -> Any:
    """A local `transformers` tokenizer folder, or what `load_tokenizer` takes."""
    path = Path(spec).expanduser()
    if path.is_dir():
        from transformers import AutoTokenizer

        try:
            hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise ConfigError(f"tokenizer folder {spec!r} cannot be loaded: {e}") from None
        return TransformersTokenizer(hf, str(path))
    return load_tokenizer(spec, train_texts, vocab_size)


def _caller(tok: Any) -> Any:
    return tok.hf if isinstance(tok, TransformersTokenizer) else _AsTransformers(tok)


def rows_of(dataset: Any, tok: Any, length: int, where: str) -> TokenDataset:
    """Each example of `dataset` encoded by its shape, as a padded `TokenDataset`."""
    columns = list(dataset.column_names)
    try:
        shape = shape_of(columns)
    except ValueError as e:
        raise DataError(f"{where}: {e}") from None
    if shape is None:
        raise DataError(
            f"{where}: the data is already tokenised (input_ids); give text, prompt + "
            f"completion or messages, so the loss mask is known"
        )
    encode, caller = ENCODERS[shape], _caller(tok)
    rows, sups = [], []
    for i, example in enumerate(dataset):
        try:
            ids, labels = encode(example, caller)
        except (ValueError, TypeError, KeyError) as e:
            raise DataError(f"{where}, row {i}: {e}") from None
        ids, labels = ids[: length + 1], labels[: length + 1]
        pad = length + 1 - len(ids)
        rows.append(ids + [tok.pad_id] * pad)
        sups.append([label != -100 for label in labels] + [False] * pad)
    if not rows:
        raise DataError(f"{where} has no rows")
    supervised = torch.tensor(sups)
    if not supervised[:, 1:].any():
        raise DataError(
            f"{where}: no token carries loss within length {length}; raise data.options.length "
            f"or check that the completions / assistant turns are not empty"
        )
    return TokenDataset(torch.tensor(rows), supervised, tok.pad_id)


def _texts(dataset: Any, limit: int = 2000) -> list[str]:
    """Plain text of the first rows, to train a BPE tokenizer on."""
    out = []
    for example in dataset.select(range(min(limit, len(dataset)))):
        if "messages" in example:
            out += [str(m.get("content", "")) for m in example["messages"]]
        else:
            out += [str(example[k]) for k in ("text", "prompt", "completion") if k in example]
    return out


def load_hf_text(
    *,
    path: str,
    tokenizer: str,
    length: int = 128,
    format: str | None = None,
    data_files: Any = None,
    train_split: str | None = None,
    val_split: str | None = None,
    test_split: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    vocab_size: int = 2048,
    max_train_rows: int | None = None,
) -> DataSplits:
    """Token rows of a local Hugging Face text dataset (see the module docstring)."""
    from distill.data.hub import _open, _pick_split

    if length < 2:
        raise ConfigError(f"data.options.length must be >= 2, got {length}")
    splits = _open(path, format, data_files, None, streaming=False)
    train_name = _pick_split(splits, train_split, ("train",), "train")
    if train_name is None:
        raise DataError(
            f"dataset 'hf_text': {path!r} has splits {list(splits.keys())} and none is called "
            f"train; set data.options.train_split"
        )
    train = splits[train_name]
    val_name = _pick_split(splits, val_split, VAL_NAMES, "validation")
    test_name = _pick_split(splits, test_split, ("test",), "test")
    order = list(range(len(train)))
    random.Random(split_seed).shuffle(order)
    carve_val = 0 if val_name else max(1, int(len(order) * val_fraction))
    carve_test = 0 if test_name else max(1, int(len(order) * test_fraction))
    if len(order) - carve_val - carve_test < 1:
        raise DataError(
            f"dataset 'hf_text': {path!r} has {len(order)} training rows, too few to carve "
            f"validation and test splits from; give more rows or val/test splits"
        )
    parts = {
        "val": splits[val_name] if val_name else train.select(order[:carve_val]),
        "test": splits[test_name]
        if test_name
        else train.select(order[carve_val : carve_val + carve_test]),
    }
    kept = sorted(order[carve_val + carve_test :])
    parts["train"] = train.select(kept[:max_train_rows] if max_train_rows else kept)
    tok = open_tokenizer(tokenizer, _texts(parts["train"]), vocab_size)
    name = Path(path).name or path
    data = {k: rows_of(v, tok, length, f"dataset 'hf_text' {name}/{k}") for k, v in parts.items()}
    return DataSplits(
        name=f"hf_text:{name}",
        train=data["train"],
        val=data["val"],
        test=data["test"],
        input_shape=(length,),
        num_classes=tok.vocab_size,
        tokenizer=tok,
    )
