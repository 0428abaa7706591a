"""Black-box distillation data: a teacher that can only be asked for text.

A teacher is anything with `complete(prompt) -> str`: a local causal LM (`LocalTeacher`) or
an OpenAI-compatible chat endpoint (`HTTPTeacher`: POST {base_url}/chat/completions, with a
request rate limit, retries with exponential back-off on 429/5xx/timeouts, and the API key
read from an environment variable, never from the config file).

`generate_dataset` writes one JSON line per prompt ({"id", "prompt", "response"}) and is
resumable: prompts already answered in the output are skipped, a partial last line left by
a crash is discarded, duplicates (by prompt) are asked once, and responses failing the
filter (length bounds, an optional user predicate) are dropped and counted. Every line is
flushed and fsynced as it is written, so an interruption loses at most the answer in flight.
`augment_instructions` asks the teacher for new instructions from seed examples
(self-instruct style). The result trains a student with `data.name: jsonl`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from pydantic import Field

from distill.core.config import read_yaml
from distill.core.errors import ConfigError, DataError
from distill.core.http import ServerError, bearer_headers, request_json
from distill.core.settings import Strict


class TextTeacher(Protocol):
    def complete(self, prompt: str) -> str: ...


class TeacherError(DataError):
    """The teacher could not answer after every retry."""


@dataclass
class HTTPTeacher:
    """An OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp server, hosted APIs)."""

    base_url: str
    model: str
    api_key_env: str | None = None  # name of the environment variable holding the key
    max_tokens: int = 256
    temperature: float = 0.0
    system: str | None = None
    requests_per_second: float = 5.0
    max_retries: int = 5
    timeout: float = 60.0
    backoff: float = 0.5  # seconds before the first retry; doubles each time
    _last: float = field(default=0.0, repr=False)

    def _wait_for_rate_limit(self) -> None:
        if self.requests_per_second <= 0:
            return
        gap = 1.0 / self.requests_per_second - (time.monotonic() - self._last)
        if gap > 0:
            time.sleep(gap)
        self._last = time.monotonic()

    def complete(self, prompt: str) -> str:
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": prompt}
        ]
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        url = self.base_url.rstrip("/") + "/chat/completions"
        try:
            payload = request_json(
                url,
                body,
                headers=bearer_headers(self.api_key_env, "teacher"),
                timeout=self.timeout,
                retries=self.max_retries,
                backoff=self.backoff,
                pause=self._wait_for_rate_limit,
            )
            return payload["choices"][0]["message"]["content"]
        except ServerError as e:
            raise TeacherError(str(e)) from None
        except (KeyError, IndexError, TypeError) as e:
            raise TeacherError(f"{url} returned no chat completion ({e!r})") from None


class LocalTeacher:
    """A local causal LM with its tokenizer: greedy (or sampled) continuation of the prompt."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        max_new_tokens: int = 64,
        greedy: bool = True,
        temperature: float = 1.0,
        stop: str | None = "\n\n",
    ):
        self.model, self.tok = model.eval(), tokenizer
        self.max_new_tokens, self.greedy, self.temperature = max_new_tokens, greedy, temperature
        self.stop = stop

    @torch.no_grad()
    def complete(self, prompt: str) -> str:
        from distill.llm.generation import sample_continuations

        ids = torch.tensor([[self.tok.bos_id, *self.tok.encode(prompt)]])
        out = sample_continuations(
            self.model, ids, self.max_new_tokens, self.temperature, greedy=self.greedy
        )[0, ids.shape[1] :].tolist()
        if self.tok.eos_id in out:
            out = out[: out.index(self.tok.eos_id)]
        text = self.tok.decode(out)
        return text.split(self.stop)[0] if self.stop else text


def _key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()[:16]


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The complete lines of a JSONL file (a partial last line is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # the tail a crash cut short
    return rows


def _repair(path: Path) -> None:
    """Truncate a crashed write back to its last complete JSON line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    keep = 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            json.loads(line)
        except json.JSONDecodeError:
            break
        keep += len(line)
    if keep != len(data):
        with open(path, "r+b") as f:
            f.truncate(keep)


@dataclass
class GenerationReport:
    written: int = 0
    skipped_existing: int = 0
    duplicates: int = 0
    filtered: int = 0
    failed: int = 0
    seconds: float = 0.0


def generate_dataset(
    teacher: TextTeacher,
    prompts: Iterable[str],
    out: str | Path,
    *,
    min_chars: int = 1,
    max_chars: int = 10_000,
    keep: Callable[[str, str], bool] | None = None,
    on_error: str = "raise",
) -> GenerationReport:
    """Ask `teacher` every prompt not yet answered in `out` and append the answers."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _repair(out)
    done = {row["id"] for row in read_jsonl(out)}
    report, seen, start = GenerationReport(), set(), time.perf_counter()
    with open(out, "a", encoding="utf-8") as f:
        for prompt in prompts:
            key = _key(prompt)
            if key in seen:
                report.duplicates += 1
                continue
            seen.add(key)
            if key in done:
                report.skipped_existing += 1
                continue
            try:
                response = teacher.complete(prompt)
            except TeacherError:
                if on_error == "raise":
                    raise
                report.failed += 1
                continue
            text = response.strip()
            if not (min_chars <= len(text) <= max_chars) or (keep and not keep(prompt, text)):
                report.filtered += 1
                continue
            f.write(json.dumps({"id": key, "prompt": prompt, "response": text}) + "\n")
            f.flush()
            os.fsync(f.fileno())
            report.written += 1
    report.seconds = time.perf_counter() - start
    return report


def augment_instructions(
    teacher: TextTeacher, seeds: list[str], rounds: int = 10, per_prompt: int = 3, seed: int = 0
) -> list[str]:
    """New instructions written by the teacher from random seed examples (Wang et al. 2023,
    self-instruct): each round shows `per_prompt` seeds and keeps the new, distinct lines."""
    rng = random.Random(seed)
    known = set(seeds)
    new: list[str] = []
    for _ in range(rounds):
        examples = rng.sample(seeds, min(per_prompt, len(seeds)))
        prompt = (
            "Write one new task in the style of these examples, on a single line.\n"
            + "\n".join(f"Task: {e}" for e in examples)
            + "\nTask:"
        )
        for line in teacher.complete(prompt).splitlines():
            line = line.removeprefix("Task:").strip()
            if len(line) > 3 and line not in known:
                known.add(line)
                new.append(line)
    return new


def jsonl_dataset(
    path: str,
    tokenizer: str = "bpe",
    vocab_size: int = 2048,
    length: int = 128,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    prompt_key: str = "prompt",
    response_key: str = "response",
):
    """(prompt, response) rows of a JSONL file as token data: only responses are learned."""
    from distill.data.core import DataSplits
    from distill.llm.text import load_tokenizer, prompt_dataset

    rows = read_jsonl(path)
    if len(rows) < 3:
        raise DataError(f"{path!r} has {len(rows)} complete rows; need at least 3 to split")
    missing = [i for i, r in enumerate(rows) if prompt_key not in r or response_key not in r]
    if missing:
        raise DataError(
            f"{path!r}: rows {missing[:5]} lack {prompt_key!r} or {response_key!r}; set "
            f"data.options.prompt_key / response_key"
        )
    pairs = [(r[prompt_key], r[response_key]) for r in rows]
    order = list(range(len(pairs)))
    random.Random(split_seed).shuffle(order)
    n_val = max(1, int(len(pairs) * val_fraction))
    n_test = max(1, int(len(pairs) * test_fraction))
    parts = [order[:n_val], order[n_val : n_val + n_test], order[n_val + n_test :]]
    train_texts = [pairs[i][0] + " " + pairs[i][1] for i in parts[2]]
    tok = load_tokenizer(tokenizer, train_texts, vocab_size)
    val, test, train = (prompt_dataset([pairs[i] for i in p], tok, length) for p in parts)
    return DataSplits(
        f"jsonl:{Path(path).name}", train, val, test, (length,), tok.vocab_size, tokenizer=tok
    )


# ----------------------------------------------------------------------------- CLI spec
class TeacherSpec(Strict):
    kind: Literal["http", "local"]
    base_url: str | None = None  # http: e.g. http://127.0.0.1:8000/v1
    model: str | None = None  # http: the served model's name
    api_key_env: str | None = None  # http: environment variable holding the key
    run_dir: str | None = None  # local: a distill language-model run
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0)
    system: str | None = None
    requests_per_second: float = Field(5.0, ge=0)
    max_retries: int = Field(5, ge=0)
    timeout: float = Field(60.0, gt=0)


class FilterSpec(Strict):
    min_chars: int = Field(1, ge=0)
    max_chars: int = Field(10_000, ge=1)
    keep: str | None = None  # 'package.module:attr', a (prompt, response) -> bool predicate


class AugmentSpec(Strict):
    rounds: int = Field(10, ge=1)
    per_prompt: int = Field(3, ge=1)
    seed: int = 0


class GenerateSpec(Strict):
    teacher: TeacherSpec
    prompts: str
    out: str
    filter: FilterSpec = FilterSpec()
    augment: AugmentSpec | None = None
    on_error: Literal["raise", "skip"] = "raise"


def run_generation(spec_path: str | Path) -> GenerationReport:
    """`distill generate SPEC.yaml`: teacher, prompts, output, filters (see GenerateSpec)."""
    from pydantic import ValidationError

    from distill.core.registry import resolve_reference

    spec_path = Path(spec_path)
    if not spec_path.is_file():
        raise ConfigError(f"generation spec {str(spec_path)!r} does not exist")
    try:
        spec = GenerateSpec.model_validate(read_yaml(spec_path, "generation spec"))
    except ValidationError as e:
        raise ConfigError(
            f"{spec_path}: "
            + "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        ) from None
    teacher = make_teacher(spec.teacher)
    prompts = read_prompts(spec.prompts)
    if spec.augment is not None:
        prompts += augment_instructions(
            teacher, prompts, spec.augment.rounds, spec.augment.per_prompt, spec.augment.seed
        )
    keep = resolve_reference(spec.filter.keep, "filter") if spec.filter.keep else None
    return generate_dataset(
        teacher,
        prompts,
        spec.out,
        min_chars=spec.filter.min_chars,
        max_chars=spec.filter.max_chars,
        keep=keep,
        on_error=spec.on_error,
    )


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a .jsonl file (key 'prompt') or a text file (one per non-empty line)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"prompts file {str(path)!r} does not exist")
    if path.suffix == ".jsonl":
        rows = read_jsonl(path)
        if any("prompt" not in r for r in rows):
            raise DataError(f"{str(path)!r}: every JSONL row needs a 'prompt' key")
        return [r["prompt"] for r in rows]
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def make_teacher(spec: Any) -> TextTeacher:
    if spec.kind == "http":
        if not spec.base_url or not spec.model:
            raise ConfigError("teacher: an http teacher needs base_url and model")
        return HTTPTeacher(
            spec.base_url,
            spec.model,
            spec.api_key_env,
            spec.max_tokens,
            spec.temperature,
            spec.system,
            spec.requests_per_second,
            spec.max_retries,
            spec.timeout,
        )
    if not spec.run_dir:
        raise ConfigError("teacher: a local teacher needs run_dir (a language-model run)")
    from distill.app.build import build, weights_path
    from distill.core.checkpoint import load_into, load_weights
    from distill.core.config import load_config

    cfg = load_config(Path(spec.run_dir) / "config.yaml")
    built = build(cfg)
    load_into(built.student, load_weights(weights_path(spec.run_dir))[0], "teacher")
    if built.data.tokenizer is None:
        raise ConfigError(f"teacher.run_dir {spec.run_dir!r} is not a language-model run")
    return LocalTeacher(
        built.student,
        built.data.tokenizer,
        spec.max_tokens,
        greedy=spec.temperature == 0.0,
        temperature=max(spec.temperature, 1e-3),
    )
