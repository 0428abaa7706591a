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

Map-style splits are held as one tensor of token rows (8 bytes a token). With
`streaming: true` the training split is read and encoded as the loop goes (`TokenStream`:
nothing is held; `train.max_steps` plans a stream of unknown length), while validation and
test, which are small, are read whole: from their own splits, or from the head of the
training stream (`val_samples`, `test_samples`, which training then skips). Named splits
take precedence over those counts.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from distill.core.errors import ConfigError, DataError
from distill.data.core import DataSplits
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


def encode_row(example: dict, shape: str, tok: Any, length: int) -> tuple[list, list]:
    """One example as `length` + 1 token ids (right-padded, cut when longer) and which of
    them carry loss."""
    ids, labels = ENCODERS[shape](example, _caller(tok))
    ids, labels = ids[: length + 1], labels[: length + 1]
    pad = length + 1 - len(ids)
    return ids + [tok.pad_id] * pad, [label != -100 for label in labels] + [False] * pad


def _shape(columns: list[str], where: str) -> str:
    try:
        shape = shape_of(columns)
    except ValueError as e:
        raise DataError(f"{where}: {e}") from None
    if shape is None:
        raise DataError(
            f"{where}: the data is already tokenised (input_ids); give text, prompt + "
            f"completion or messages, so the loss mask is known"
        )
    return shape


def rows_of(
    examples: Any, tok: Any, length: int, where: str, route_column: str | None = None
) -> TokenDataset:
    """Each example (a Hugging Face split, or any iterable of dicts) encoded by its shape,
    as a padded `TokenDataset`; with `route_column`, each row's value of it names its
    teacher (multi-teacher routing, `distill.llm.routing`)."""
    rows, sups, shape, routes = [], [], None, []
    for i, example in enumerate(examples):
        shape = shape or _shape(list(example), where)
        try:
            ids, sup = encode_row(example, shape, tok, length)
        except (ValueError, TypeError, KeyError) as e:
            raise DataError(f"{where}, row {i}: {e}") from None
        if route_column is not None:
            if example.get(route_column) in (None, ""):
                raise DataError(
                    f"{where}, row {i}: no value in the route column {route_column!r} (it "
                    f"names the row's teacher); the row has columns {sorted(example)}"
                )
            routes.append(str(example[route_column]))
        rows.append(ids)
        sups.append(sup)
    if not rows:
        raise DataError(f"{where} has no rows")
    supervised = torch.tensor(sups)
    if not supervised[:, 1:].any():
        raise DataError(
            f"{where}: no token carries loss within length {length}; raise data.options.length "
            f"or check that the completions / assistant turns are not empty"
        )
    out = TokenDataset(torch.tensor(rows), supervised, tok.pad_id)
    if route_column is not None:
        out.route_names = tuple(sorted(set(routes)))
        out.route = torch.tensor([out.route_names.index(r) for r in routes])
    return out


class TokenStream(torch.utils.data.IterableDataset):
    """A streamed training split: rows encoded as they are read, each yielded as the loop's
    token sample (`input`, `target` = -1 where no loss, `attention_mask`). Rows are read in
    file order (shuffled in a buffer when `shuffle_buffer` is set, seeded by seed and
    epoch), shared out by rank and by DataLoader worker."""

    def __init__(self, stream: Any, tok: Any, length: int, origin: str, **rows: Any):
        self.stream, self.tok, self.length, self.origin = stream, tok, length, origin
        self.skip, self.shuffle_buffer = rows.get("skip", 0), rows.get("shuffle_buffer")
        self.epoch, self.seed = 0, 0

    def set_epoch(self, epoch: int, seed: int) -> None:
        self.epoch, self.seed = int(epoch), int(seed)

    def __iter__(self):
        from distill.data.hub import stream_rows

        shape = None
        rows = stream_rows(self.stream, self.skip, None, self.shuffle_buffer, self.seed, self.epoch)
        for pos, example in enumerate(rows):
            where = f"streamed row {pos} of {self.origin}"
            shape = shape or _shape(list(example), where)
            try:
                ids, sup = encode_row(example, shape, self.tok, self.length)
            except (ValueError, TypeError, KeyError) as e:
                raise DataError(f"{where}: {e}") from None
            ids, sup = torch.tensor(ids), torch.tensor(sup)
            yield {
                "input": ids[:-1],
                "target": torch.where(sup[1:], ids[1:], -1),
                "attention_mask": (ids[:-1] != self.tok.pad_id).long(),
            }


def _texts(examples: Any, limit: int = 2000) -> list[str]:
    """Plain text of the first rows, to train a BPE tokenizer on."""
    out = []
    for i, example in enumerate(examples):
        if i >= limit:
            break
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
    streaming: bool = False,
    shuffle_buffer: int | None = None,
    val_samples: int = 0,
    test_samples: int = 0,
    route_column: str | None = None,
) -> DataSplits:
    """Token rows of a local Hugging Face text dataset (see the module docstring)."""
    from distill.data.hub import open_dataset

    if length < 2:
        raise ConfigError(f"data.options.length must be >= 2, got {length}")
    if streaming and route_column:
        raise ConfigError(
            "data.options.route_column is read from map-style data; set streaming: false"
        )
    if streaming:
        return _streamed(
            open_dataset(path, format, data_files, None, streaming=True),
            path,
            tokenizer,
            length,
            vocab_size,
            {"train": train_split, "val": val_split, "test": test_split},
            shuffle_buffer=shuffle_buffer,
            val_samples=val_samples,
            test_samples=test_samples,
        )
    if shuffle_buffer or val_samples or test_samples:
        raise ConfigError(
            "data.options shuffle_buffer, val_samples and test_samples are for streaming: true; "
            "map-style data is shuffled by the loop and split by val_fraction / test_fraction"
        )
    splits = open_dataset(path, format, data_files, None, streaming=False)
    names = {"train": train_split, "val": val_split, "test": test_split}
    parts = _map_parts(splits, path, names, val_fraction, test_fraction, split_seed)
    if max_train_rows:
        parts["train"] = parts["train"].select(range(min(max_train_rows, len(parts["train"]))))
    tok = open_tokenizer(tokenizer, _texts(parts["train"]), vocab_size)
    name = Path(path).name or path
    data = {
        k: rows_of(v, tok, length, f"dataset 'hf_text' {name}/{k}", route_column)
        for k, v in parts.items()
    }
    return _splits(name, data["train"], data["val"], data["test"], length, tok)


def _train_split(splits: Any, wanted: str | None, path: str) -> str:
    from distill.data.hub import pick_split

    name = pick_split(splits, wanted, ("train",), "train")
    if name is None:
        raise DataError(
            f"dataset 'hf_text': {path!r} has splits {list(splits.keys())} and none is called "
            f"train; set data.options.train_split"
        )
    return name


def _map_parts(
    splits: Any, path: str, wanted: dict, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, Any]:
    """train / val / test: the data's own splits, or rows carved from train (seeded)."""
    from distill.data.hub import pick_split

    train = splits[_train_split(splits, wanted["train"], path)]
    val_name = pick_split(splits, wanted["val"], VAL_NAMES, "validation")
    test_name = pick_split(splits, wanted["test"], ("test",), "test")
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    carve_val = 0 if val_name else max(1, int(len(order) * val_fraction))
    carve_test = 0 if test_name else max(1, int(len(order) * test_fraction))
    if len(order) - carve_val - carve_test < 1:
        raise DataError(
            f"dataset 'hf_text': {path!r} has {len(order)} training rows, too few to carve "
            f"validation and test splits from; give more rows or val/test splits"
        )
    carved_test = order[carve_val : carve_val + carve_test]
    return {
        "val": splits[val_name] if val_name else train.select(order[:carve_val]),
        "test": splits[test_name] if test_name else train.select(carved_test),
        "train": train.select(sorted(order[carve_val + carve_test :])),
    }


def _streamed(
    splits: Any,
    path: str,
    tokenizer: str,
    length: int,
    vocab_size: int,
    wanted: dict[str, str | None],
    *,
    shuffle_buffer: int | None,
    val_samples: int,
    test_samples: int,
) -> DataSplits:
    """The training split streamed; validation and test (small) read whole, from their own
    splits or from the head of the training stream (`val_samples`, `test_samples`, which
    training then skips)."""
    from distill.data.hub import pick_split

    train_name = _train_split(splits, wanted["train"], path)
    stream, name = splits[train_name], Path(path).name or path
    val_name = pick_split(splits, wanted["val"], VAL_NAMES, "validation")
    test_name = pick_split(splits, wanted["test"], ("test",), "test")
    for role, split, n in (
        ("validation", val_name, val_samples),
        ("test", test_name, test_samples),
    ):
        if split is None and n < 1:
            raise DataError(
                f"dataset 'hf_text': streaming {path!r}, which has no {role} split; name one "
                f"({role[:4] if role == 'test' else 'val'}_split) or take rows from the head of "
                f"the training stream ({'val' if role == 'validation' else 'test'}_samples: N)"
            )
    n_val = 0 if val_name else val_samples
    n_test = 0 if test_name else test_samples
    head = list(stream.take(n_val + n_test)) if n_val + n_test else []
    tok = open_tokenizer(tokenizer, _texts(head or stream), vocab_size)
    where = f"dataset 'hf_text' {name}"

    def whole(split: str | None, rows: list, role: str) -> TokenDataset:
        if split is not None:
            return rows_of(splits[split], tok, length, f"{where}/{split}")
        return rows_of(rows, tok, length, f"{where}/{role} (head of the stream)")

    val, test = whole(val_name, head[:n_val], "val"), whole(test_name, head[n_val:], "test")
    origin = f"split {train_name!r} of {path!r}"
    train = TokenStream(
        stream, tok, length, origin, skip=n_val + n_test, shuffle_buffer=shuffle_buffer
    )
    return _splits(name, train, val, test, length, tok)


def _splits(name: str, train: Any, val: Any, test: Any, length: int, tok: Any) -> DataSplits:
    return DataSplits(
        name=f"hf_text:{name}",
        train=train,
        val=val,
        test=test,
        input_shape=(length,),
        num_classes=tok.vocab_size,
        tokenizer=tok,
    )
