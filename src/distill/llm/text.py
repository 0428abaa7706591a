"""Text for language-model distillation, offline: corpora, tokenizers and token datasets.

Built-in corpus `python_docs`: the English prose of the Python documentation's topics that
ships with CPython (`pydoc_data.topics`, about 460k characters), split by document into
train/val/test, so no text is shared between splits. Any UTF-8 `.txt` file works too
(split by blank-line paragraphs).

Tokenizers: `bytes` (the UTF-8 bytes plus BOS/EOS/PAD, 259 tokens, no training), `bpe`
(a byte-level BPE trained on the training split with Hugging Face `tokenizers`, cached),
or a path to a `tokenizer.json` of your own.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.core.checkpoint import atomic_write_text
from distill.core.errors import ConfigError, DataError
from distill.data.core import DataSplits, load_batch
from distill.data.raw import cache_dir


class Tokenizer(Protocol):
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes are ids 0..255; 256 = BOS, 257 = EOS, 258 = PAD."""

    vocab_size, bos_id, eos_id, pad_id = 259, 256, 257, 258
    name = "bytes"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face `tokenizers` tokenizer with <bos>, <eos> and <pad> special tokens."""

    SPECIALS = {
        "bos": ("<bos>", "<s>", "<|begin_of_text|>", "<|endoftext|>"),
        "eos": ("<eos>", "</s>", "<|end_of_text|>", "<|endoftext|>"),
        "pad": ("<pad>", "<|pad|>", "<unk>"),
    }

    def __init__(self, tok: Any, name: str):
        self.tok, self.name = tok, name
        self.vocab_size = tok.get_vocab_size()
        found = {}
        for role, names in self.SPECIALS.items():
            ids = [tok.token_to_id(t) for t in names if tok.token_to_id(t) is not None]
            found[role] = ids[0] if ids else None
        if found["bos"] is None or found["eos"] is None:
            raise ConfigError(
                f"tokenizer {name!r} has no beginning/end-of-text token (looked for "
                f"{self.SPECIALS['bos']} and {self.SPECIALS['eos']}); add them as special tokens"
            )
        self.bos_id, self.eos_id = found["bos"], found["eos"]
        self.pad_id = found["pad"] if found["pad"] is not None else self.eos_id

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)


def _train_bpe(texts: list[str], vocab_size: int, path: Path) -> HFTokenizer:
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<bos>", "<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    atomic_write_text(path, tok.to_str())
    return HFTokenizer(tok, str(path))


def load_tokenizer(spec: str, train_texts: list[str], vocab_size: int) -> Tokenizer:
    """'bytes', 'bpe' (trained on `train_texts` and cached), or a tokenizer.json path."""
    if spec == "bytes":
        return ByteTokenizer()
    try:
        from tokenizers import Tokenizer as HFTok
    except ImportError:
        raise ConfigError(
            f"tokenizer {spec!r} needs the `tokenizers` package: pip install 'distill[llm]', "
            f"or use tokenizer: bytes"
        ) from None
    if spec == "bpe":
        key = hashlib.sha256(("\x00".join(train_texts) + str(vocab_size)).encode()).hexdigest()
        path = cache_dir() / f"bpe-{vocab_size}-{key[:16]}.json"
        if path.is_file():
            return HFTokenizer(HFTok.from_file(str(path)), str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        return _train_bpe(train_texts, vocab_size, path)
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(
            f"tokenizer {spec!r}: not 'bytes', 'bpe' or an existing tokenizer.json file"
        )
    return HFTokenizer(HFTok.from_file(str(path)), str(path))


def python_docs() -> list[str]:
    """The Python documentation topics bundled with CPython, one document per topic."""
    from pydoc_data.topics import topics

    return [topics[k].strip() for k in sorted(topics) if len(topics[k].strip()) > 200]


# Standard-library modules whose docstrings form the `python_docstrings` corpus
DOCSTRING_MODULES = [
    "argparse",
    "ast",
    "asyncio",
    "bisect",
    "calendar",
    "collections",
    "configparser",
    "contextlib",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email.message",
    "enum",
    "fractions",
    "functools",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "http.client",
    "imaplib",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "locale",
    "logging",
    "mailbox",
    "mimetypes",
    "multiprocessing",
    "numbers",
    "operator",
    "optparse",
    "os",
    "pathlib",
    "pdb",
    "pickle",
    "pprint",
    "queue",
    "random",
    "re",
    "sched",
    "secrets",
    "selectors",
    "shlex",
    "shutil",
    "signal",
    "smtplib",
    "socket",
    "sqlite3",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "trace",
    "traceback",
    "typing",
    "unittest",
    "urllib.request",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "xml.etree.ElementTree",
    "zipfile",
    "zoneinfo",
]


def python_docstrings() -> list[str]:
    """Docstrings (over 200 characters) of the standard library's modules, classes and
    functions: about 1.5M characters of English prose for this Python version."""
    import importlib
    import inspect
    import warnings

    docs: list[str] = []
    for name in DOCSTRING_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        with warnings.catch_warnings():  # typing.io / typing.re warn when touched
            warnings.simplefilter("ignore", DeprecationWarning)
            objects = [module] + [o for _, o in inspect.getmembers(module)]
            for obj in list(objects):
                if inspect.isclass(obj) and getattr(obj, "__module__", "") == module.__name__:
                    objects += [o for _, o in inspect.getmembers(obj) if callable(o)]
            for obj in objects:
                if isinstance(obj, (int, float, str, bytes, tuple, list, dict, set)):
                    continue
                doc = inspect.getdoc(obj)
                if doc and len(doc) > 200:
                    docs.append(doc)
    return list(dict.fromkeys(docs))


def read_corpus(spec: str) -> list[str]:
    if spec == "python_docs":
        return python_docs()
    if spec == "python_docstrings":
        return python_docstrings()
    if spec == "python_english":  # both
        return python_docs() + python_docstrings()
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(
            f"corpus {spec!r}: not python_docs, python_docstrings, python_english or an existing "
            f"UTF-8 text file"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"corpus {spec!r} is not UTF-8 text ({e})") from None
    docs = [p.strip() for p in text.split("\n\n") if p.strip()]
    if len(docs) < 10:
        raise DataError(f"corpus {spec!r} has {len(docs)} paragraphs; need 10 or more to split")
    return docs


@dataclass
class TokenDataset:
    """Token rows of length L+1: inputs are ids[:, :-1], targets ids[:, 1:] where `supervised`
    (else -1: prompt or padding). `attention` marks real (non-pad) input tokens."""

    ids: Tensor  # (N, L + 1) long
    supervised: Tensor  # (N, L + 1) bool: is this position a training target
    pad_id: int
    # the same text in the teacher's tokens, when its tokenizer differs (cross-tokenizer KD)
    teacher_ids: Tensor | None = None
    teacher_supervised: Tensor | None = None
    teacher_pad_id: int = 0
    # each row's teacher (multi-teacher routing): an index into route_names
    route: Tensor | None = None
    route_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def targets(self) -> Tensor:
        return torch.where(self.supervised[:, 1:], self.ids[:, 1:], -1)

    def batch(self, index: Tensor) -> dict[str, Tensor]:
        ids, sup = self.ids[index], self.supervised[index]
        out = {
            "input": ids[:, :-1],
            "target": torch.where(sup[:, 1:], ids[:, 1:], -1),
            "attention_mask": (ids[:, :-1] != self.pad_id).long(),
            "index": index,
        }
        if self.teacher_ids is not None:
            t, ts = self.teacher_ids[index], self.teacher_supervised[index]
            out["teacher_input"] = t[:, :-1]
            out["teacher_target"] = torch.where(ts[:, 1:], t[:, 1:], -1)
            out["teacher_attention_mask"] = (t[:, :-1] != self.teacher_pad_id).long()
        if self.route is not None:
            out["route"] = self.route[index]
        return out

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        b = self.batch(torch.tensor([i]))
        return b["input"][0], b["target"][0]

    def model_metrics(self, model: torch.nn.Module, *, batch_size: int, device: Any) -> dict:
        """How `distill.evaluate.evaluate` scores a model on this data: per supervised
        token (`lm_metrics`), not per row."""
        return lm_metrics(model, self, batch_size=min(batch_size, 64), device=device)


def _blocks(docs: list[str], tok: Tokenizer, block: int) -> TokenDataset:
    """Documents joined with EOS and cut into rows of block+1 tokens (every token supervised)."""
    stream: list[int] = []
    for d in docs:
        stream += [tok.bos_id, *tok.encode(d), tok.eos_id]
    n = len(stream) // (block + 1)
    if n < 1:
        raise DataError(f"the split has {len(stream)} tokens, fewer than one block of {block + 1}")
    ids = torch.tensor(stream[: n * (block + 1)]).view(n, block + 1)
    return TokenDataset(ids, torch.ones_like(ids, dtype=torch.bool), tok.pad_id)


def with_teacher_tokens(
    data: TokenDataset, tok: Tokenizer, teacher_tok: Tokenizer, length: int
) -> TokenDataset:
    """Each row's text re-tokenized by the teacher's tokenizer, `length`+1 tokens, padded."""
    rows, sups = [], []
    for row in data.ids.tolist():
        ids = teacher_tok.encode(tok.decode(row))[: length + 1]
        pad = length + 1 - len(ids)
        rows.append(ids + [teacher_tok.pad_id] * pad)
        sups.append([True] * len(ids) + [False] * pad)
    return TokenDataset(
        data.ids,
        data.supervised,
        data.pad_id,
        torch.tensor(rows),
        torch.tensor(sups),
        teacher_tok.pad_id,
    )


def text_dataset(
    corpus: str = "python_docs",
    tokenizer: str = "bpe",
    vocab_size: int = 2048,
    block_size: int = 64,
    split_seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    max_train_blocks: int | None = None,
    teacher_tokenizer: str | None = None,
    teacher_vocab_size: int = 2048,
    teacher_block_size: int | None = None,
) -> DataSplits:
    """Token blocks of a corpus, split by document; `num_classes` is the vocabulary size.

    `teacher_tokenizer` (for cross-tokenizer KD) adds each block's text in the teacher's
    tokens (`teacher_block_size`, default twice `block_size`)."""
    if block_size < 2:
        raise ConfigError(f"data.options.block_size must be >= 2, got {block_size}")
    docs = read_corpus(corpus)
    order = list(range(len(docs)))
    random.Random(split_seed).shuffle(order)
    n_val = max(1, int(len(docs) * val_fraction))
    n_test = max(1, int(len(docs) * test_fraction))
    val = [docs[i] for i in order[:n_val]]
    test = [docs[i] for i in order[n_val : n_val + n_test]]
    train = [docs[i] for i in order[n_val + n_test :]]
    tok = load_tokenizer(tokenizer, train, vocab_size)
    train_set = _blocks(train, tok, block_size)
    if max_train_blocks is not None:
        train_set = TokenDataset(
            train_set.ids[:max_train_blocks], train_set.supervised[:max_train_blocks], tok.pad_id
        )
    val_set, test_set = _blocks(val, tok, block_size), _blocks(test, tok, block_size)
    teacher_tok = None
    if teacher_tokenizer is not None:
        teacher_tok = load_tokenizer(teacher_tokenizer, train, teacher_vocab_size)
        length = teacher_block_size or 2 * block_size
        train_set, val_set, test_set = (
            with_teacher_tokens(d, tok, teacher_tok, length) for d in (train_set, val_set, test_set)
        )
    splits = DataSplits(
        name=f"text:{corpus}",
        train=train_set,
        val=val_set,
        test=test_set,
        input_shape=(block_size,),
        num_classes=tok.vocab_size,
        tokenizer=tok,
        teacher_tokenizer=teacher_tok,
    )
    return splits


def prompt_dataset(pairs: list[tuple[str, str]], tok: Tokenizer, length: int) -> TokenDataset:
    """(prompt, response) pairs as rows of `length`+1 tokens: only response tokens (and the
    final EOS) are supervised; rows are right-padded with PAD (masked)."""
    rows, sups = [], []
    for prompt, response in pairs:
        p = [tok.bos_id, *tok.encode(prompt)]
        r = [*tok.encode(response), tok.eos_id]
        ids = (p + r)[: length + 1]
        sup = ([False] * len(p) + [True] * len(r))[: length + 1]
        pad = length + 1 - len(ids)
        rows.append(ids + [tok.pad_id] * pad)
        sups.append(sup + [False] * pad)
    return TokenDataset(torch.tensor(rows), torch.tensor(sups), tok.pad_id)


@torch.no_grad()
def lm_metrics(
    model: nn.Module,
    dataset,
    *,
    batch_size: int = 64,
    device="cpu",
    vocab: int | None = None,
    teacher: nn.Module | None = None,
) -> dict[str, float]:
    """Next-token accuracy, NLL and perplexity over supervised tokens (and the agreement of
    top-1 predictions with a teacher, when given)."""
    was = model.training
    model.eval()
    nll_sum, correct, agree, count = 0.0, 0, 0, 0
    for start in range(0, len(dataset), batch_size):
        b = load_batch(dataset, torch.arange(start, min(start + batch_size, len(dataset))))
        x, am, y = (b[k].to(device) for k in ("input", "attention_mask", "target"))
        logits = model(input_ids=x, attention_mask=am).logits.float()
        if vocab is not None:
            logits = logits[..., :vocab]
        mask = y >= 0
        z, t = logits[mask], y[mask]
        nll_sum += float(F.cross_entropy(z, t, reduction="sum"))
        correct += int((z.argmax(-1) == t).sum())
        count += int(mask.sum())
        if teacher is not None:
            zt = teacher(input_ids=x, attention_mask=am).logits.float()[..., : z.shape[-1]]
            agree += int((zt[mask].argmax(-1) == z.argmax(-1)).sum())
    model.train(was)
    nll = nll_sum / max(count, 1)
    out = {"acc": correct / max(count, 1), "nll": nll, "ppl": math.exp(min(nll, 50.0))}
    if teacher is not None:
        out["agreement"] = agree / max(count, 1)
    return out
