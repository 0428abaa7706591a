"""A served teacher: an OpenAI-compatible completions server that returns log-probabilities.

The teacher runs elsewhere (vLLM, or `distill serve-teacher` on another machine); training
holds the student alone. For each row the client sends its tokens as the prompt with
`prompt_logprobs: k` (vLLM's extension of the completions API), and reads, at every
position, the teacher's k most likely next tokens and their log-probabilities. With the
tail mass 1 - sum(top-k) that is the same sparse teacher a top-k cache stores
(`distill.llm.cache`), so the loss is the same exact KL over k+1 outcomes.

Position t of a row (predicting token t+1) is the server's `prompt_logprobs[t + 1]`: the
row's last target is appended to the prompt so that every supervised position is scored.
A server's entry may hold k+1 tokens (the top k and the prompt's own token); the k most
likely are kept.

Requests carry `rows_per_request` rows each, at most `concurrency` in flight; transient
faults (server down or restarting, timeouts, 429, 5xx) are retried with back-off and logged
(`distill.core.http`), so training waits for a restarted server and loses nothing. The API
key comes from the environment variable named by `api_key_env`. Before training the
server's tokenizer is checked against the student's on a probe of the training text (the
server's `/tokenize`, as vLLM serves it): log-probabilities over another tokenizer's ids
would train the student on nonsense.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from distill.core.errors import ConfigError
from distill.core.http import ServerError, bearer_headers, request_json
from distill.core.settings import Strict

WHERE = "scheme.args.teacher_server"
PROBE = "The quick brown fox jumps over the lazy dog; def f(x): return x ** 2  # 3.14"


class ServedTeacherArgs(Strict):
    url: str  # the API root, e.g. http://127.0.0.1:8000/v1
    model: str | None = None  # the served model's name (default: the server's only model)
    top_k: int = Field(20, ge=1, le=4096)  # log-probabilities asked per position
    rows_per_request: int = Field(8, ge=1)
    concurrency: int = Field(4, ge=1)  # requests in flight at once
    timeout_s: float = Field(120.0, gt=0)
    retries: int = Field(8, ge=0)  # transient faults: waits of backoff_s, 2x, 4x, ...
    backoff_s: float = Field(1.0, gt=0)
    api_key_env: str | None = None  # name of the environment variable holding the key
    check_tokenizer: bool = True


def top_entries(entry: dict[str, Any] | None, k: int, where: str) -> tuple[list[int], list[float]]:
    """The k most likely (id, log-prob) of one position's `prompt_logprobs` entry, which
    maps token id (a string in JSON) to {"logprob": ...} (vLLM) or to the number itself."""
    if not entry:
        raise ServerError(f"{where}: the server returned no log-probabilities for a position")
    pairs = []
    for key, value in entry.items():
        lp = value["logprob"] if isinstance(value, dict) else value
        pairs.append((float(lp), int(key)))
    if len(pairs) < k:
        raise ServerError(
            f"{where}: the server returned {len(pairs)} log-probabilities per token where "
            f"top_k={k} were asked; lower top_k, or raise the server's limit (vLLM: "
            f"--max-logprobs)"
        )
    pairs.sort(key=lambda p: -p[0])
    return [i for _, i in pairs[:k]], [lp for lp, _ in pairs[:k]]


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` without special tokens, from distill's tokenizers (`encode`) or
    a `transformers` one (called with add_special_tokens=False)."""
    if callable(tokenizer) and hasattr(tokenizer, "convert_tokens_to_ids"):
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer.encode(text))


class ServedTeacher:
    """The client. `sparse(batch)` gives (ids, log-probs, log tail mass), each (B, L, k) or
    (B, L), like a top-k cache's rows; positions that are not supervised hold a harmless
    uniform filler that the loss masks out."""

    mode = "topk"
    temperature = 1.0

    def __init__(self, args: ServedTeacherArgs, vocab: int, tokenizer: Any = None):
        self.args, self.vocab, self.k = args, vocab, args.top_k
        self.url = args.url.rstrip("/")
        self.headers = bearer_headers(args.api_key_env, WHERE)
        self.model = self._model_name()
        if args.check_tokenizer:
            self.check_tokenizer(tokenizer)
        self.pool = ThreadPoolExecutor(args.concurrency, thread_name_prefix="served-teacher")

    def describe(self) -> str:
        return f"served teacher {self.model!r} at {self.url} (top-{self.k} log-probabilities)"

    def _call(self, path: str, body: dict | None = None, root: bool = False) -> Any:
        base = self.url.removesuffix("/v1") if root else self.url
        a = self.args
        return request_json(
            base + path,
            body,
            headers=self.headers,
            timeout=a.timeout_s,
            retries=a.retries,
            backoff=a.backoff_s,
        )

    def _model_name(self) -> str:
        try:
            served = [m["id"] for m in self._call("/models")["data"]]
        except (KeyError, TypeError) as e:
            raise ServerError(f"{WHERE}: {self.url}/models lists no models ({e!r})") from None
        if self.args.model is None:
            if len(served) != 1:
                raise ConfigError(
                    f"{WHERE}.model: the server serves {served}; name the teacher among them"
                )
            return served[0]
        if self.args.model not in served:
            raise ConfigError(
                f"{WHERE}.model: {self.args.model!r} is not served at {self.url}; it serves "
                f"{served}"
            )
        return self.args.model

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Refuse a server whose tokenizer splits text differently from the student's."""
        if tokenizer is None:
            return
        try:
            answer = self._call(
                "/tokenize",
                {"model": self.model, "prompt": PROBE, "add_special_tokens": False},
                root=True,
            )
        except ServerError as e:
            raise ConfigError(
                f"{WHERE}: could not ask the server for its tokenizer ({e}); vLLM and distill "
                f"serve-teacher answer POST /tokenize. Set check_tokenizer: false only if "
                f"you know the tokenizers are the same"
            ) from None
        theirs, ours = list(answer.get("tokens", [])), _encode(tokenizer, PROBE)
        if theirs != ours:
            at = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), None)
            at = min(len(theirs), len(ours)) if at is None else at
            raise ConfigError(
                f"{WHERE}: the server's tokenizer is not the student's (they split a probe "
                f"sentence into {len(theirs)} and {len(ours)} tokens, first different at "
                f"token {at}); serve the teacher with the student's tokenizer, or distil "
                f"across tokenizers from a local teacher (scheme.args.cross_tokenizer)"
            )

    # ------------------------------------------------------------------ scoring
    def _prompts(self, batch: dict[str, Tensor]) -> list[tuple[list[int], list[int]]]:
        """Per row: the tokens to send and the positions their log-probabilities score."""
        x, y = batch["input"].cpu(), batch["target"].cpu()
        am = batch.get("attention_mask")
        am = torch.ones_like(x) if am is None else am.cpu()
        out = []
        for r in range(len(x)):
            pos = am[r].nonzero().flatten().tolist()
            tokens = x[r, pos].tolist()
            if pos and int(y[r, pos[-1]]) >= 0:
                tokens.append(int(y[r, pos[-1]]))
            out.append((tokens, pos[: len(tokens) - 1]))
        return out

    def _score(self, prompts: list[list[int]]) -> list[list[Any]]:
        body = {
            "model": self.model,
            "prompt": prompts,
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": self.k,
        }
        answer = self._call("/completions", body)
        try:
            choices = sorted(answer["choices"], key=lambda c: c.get("index", 0))
            scored = [c["prompt_logprobs"] for c in choices]
        except (KeyError, TypeError) as e:
            raise ServerError(
                f"{WHERE}: {self.url}/completions returned no prompt_logprobs ({e!r}); the "
                f"server must support vLLM's prompt_logprobs option"
            ) from None
        if len(scored) != len(prompts):
            raise ServerError(f"{WHERE}: sent {len(prompts)} prompts, got {len(scored)} answers")
        return scored

    def sparse(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        rows = self._prompts(batch)
        b, length = batch["input"].shape
        ids = torch.zeros(b, length, self.k, dtype=torch.long)
        values = torch.full((b, length, self.k), -math.log(self.k))
        tail = torch.full((b, length), math.log(1e-6))
        step = self.args.rows_per_request
        groups = [rows[i : i + step] for i in range(0, b, step)]
        answers = self.pool.map(self._score, [[t for t, _ in g] for g in groups])
        for g, (group, scored) in enumerate(zip(groups, answers)):
            for j, ((_, positions), entries) in enumerate(zip(group, scored)):
                r = g * step + j
                for n, p in enumerate(positions):
                    top_ids, top_lp = top_entries(entries[n + 1], self.k, WHERE)
                    ids[r, p] = torch.tensor(top_ids)
                    values[r, p] = torch.tensor(top_lp)
        if int(ids.max()) >= self.vocab:
            raise ConfigError(
                f"{WHERE}: the server returned token id {int(ids.max())}, outside the "
                f"student's {self.vocab}-token vocabulary: it serves another tokenizer"
            )
        mass = values.exp().sum(-1).clamp(max=1 - 1e-6)
        scored = torch.zeros(b, length, dtype=torch.bool)
        for r, (_, positions) in enumerate(rows):
            scored[r, positions] = True
        tail = torch.where(scored, torch.log1p(-mass), tail)
        return ids, values, tail

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
