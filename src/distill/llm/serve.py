"""`distill serve-teacher`: a causal LM served in the shape of vLLM's OpenAI-compatible API.

For a teacher on another machine (or another process) when vLLM is not at hand: the
endpoints a served teacher needs, with vLLM's request and answer shapes, so a student is
trained the same way against either.

- `GET /v1/models`: the one served model.
- `POST /v1/completions`: `prompt` as text, token ids, or a list of either; `max_tokens`
  new tokens (greedy at temperature 0, else sampled); `logprobs: n` the top n of each new
  token (OpenAI's legacy shape); `prompt_logprobs: n` at every prompt position after the
  first the top n and the prompt's own token as {id: {"logprob", "rank", "decoded_token"}}
  (vLLM's extension), `null` for the first.
- `POST /tokenize`: {"tokens", "count", "max_model_len"}.

Written on the standard library's `http.server` (threaded; the model is run by one thread at
a time), so serving adds no dependency. A request for more log-probabilities than
`--max-logprobs` is refused with HTTP 400, as vLLM does; with `--api-key-env` every request
must carry `Authorization: Bearer $KEY`.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from distill.core.errors import ConfigError


class RequestError(ValueError):
    """A request the server refuses (HTTP 400)."""


def load_served_model(model: str, tokenizer: str | None = None) -> tuple[Any, Any]:
    """A Hugging Face causal-LM folder and its tokenizer (the folder's own, a
    `tokenizer.json` file, or another folder)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    path = Path(model)
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"{model!r} is not a Hugging Face model folder (no config.json); save the teacher "
            f"with save_pretrained or `distill export RUN --format hf`"
        )
    source = Path(tokenizer) if tokenizer else path
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    if source.is_dir() and not any((source / n).is_file() for n in names):
        raise ConfigError(
            f"{str(source)!r} holds no tokenizer ({', '.join(names)}); give the teacher's "
            f"tokenizer with --tokenizer (a tokenizer.json file or a folder)"
        )
    lm = AutoModelForCausalLM.from_pretrained(path).eval()
    if source.is_file():
        tok = PreTrainedTokenizerFast(tokenizer_file=str(source))
    else:
        tok = AutoTokenizer.from_pretrained(source)
    vocab = lm.get_output_embeddings().weight.shape[0]
    if len(tok) > vocab:
        raise ConfigError(
            f"the tokenizer has {len(tok)} tokens but the model scores {vocab}: it is not "
            f"this model's tokenizer; give the right one with --tokenizer"
        )
    return lm, tok


class TeacherServer:
    """The model behind the endpoints; `serve(host, port)` starts the HTTP server."""

    def __init__(
        self, model: Any, tokenizer: Any, name: str, max_logprobs: int = 128, api_key: str = ""
    ):
        self.model, self.tok, self.name = model, tokenizer, name
        self.max_logprobs, self.api_key = max_logprobs, api_key
        self.lock = threading.Lock()
        self.decoded: dict[int, str] = {}
        cfg = getattr(model, "config", None)
        self.max_len = int(
            getattr(cfg, "max_position_embeddings", 0) or getattr(cfg, "n_positions", 0)
        )

    # ------------------------------------------------------------------ endpoints
    def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": self.name, "object": "model", "owned_by": "distill"}],
        }

    def tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        text = body.get("prompt")
        if not isinstance(text, str):
            raise RequestError("tokenize: 'prompt' must be a string")
        ids = self.tok(text, add_special_tokens=bool(body.get("add_special_tokens", True)))[
            "input_ids"
        ]
        return {"tokens": ids, "count": len(ids), "max_model_len": self.max_len}

    def _prompts(self, prompt: Any) -> list[list[int]]:
        if isinstance(prompt, str):
            prompt = [prompt]
        if prompt and all(isinstance(t, int) for t in prompt):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt:
            raise RequestError("'prompt' must be text, token ids, or a non-empty list of either")
        out = []
        for p in prompt:
            ids = self.tok(p, add_special_tokens=False)["input_ids"] if isinstance(p, str) else p
            if not ids or not all(isinstance(t, int) and 0 <= t < self._vocab() for t in ids):
                raise RequestError(
                    f"a prompt holds no tokens or ids outside 0..{self._vocab() - 1}"
                )
            out.append(list(ids))
        return out

    def _vocab(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def _text(self, token: int) -> str:
        """A token's decoded text, decoded once per id (a tokenizer call per entry of every
        position would cost more than the model)."""
        text = self.decoded.get(token)
        if text is None:
            text = self.decoded[token] = self.tok.decode([token])
        return text

    def _top(self, logp: torch.Tensor, n: int, own: int | None = None) -> dict[str, Any]:
        values, ids = logp.topk(n)
        entry = {
            str(i): {"logprob": v, "rank": r + 1, "decoded_token": self._text(i)}
            for r, (v, i) in enumerate(zip(values.tolist(), ids.tolist()))
        }
        if own is not None and str(own) not in entry:
            rank = int((logp > logp[own]).sum()) + 1
            entry[str(own)] = {
                "logprob": float(logp[own]),
                "rank": rank,
                "decoded_token": self._text(own),
            }
        return entry

    def _asked(self, body: dict[str, Any], key: str) -> int | None:
        n = body.get(key)
        if n is None:
            return None
        if not isinstance(n, int) or n < 0:
            raise RequestError(f"'{key}' must be a whole number")
        if n > self.max_logprobs:
            raise RequestError(
                f"Requested {key} of {n}, which is greater than max allowed: {self.max_logprobs}"
            )
        return n

    @torch.no_grad()
    def _logp(self, rows: list[list[int]]) -> list[torch.Tensor]:
        """Next-token log-probabilities at every position of each row, (len, V) each."""
        width = max(map(len, rows))
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, row in enumerate(rows):
            ids[r, : len(row)], mask[r, : len(row)] = torch.tensor(row), 1
        with self.lock:
            logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
        logp = F.log_softmax(logits, -1)
        return [logp[r, : len(row)] for r, row in enumerate(rows)]

    def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        rows = self._prompts(body.get("prompt"))
        n_prompt, n_new = self._asked(body, "prompt_logprobs"), self._asked(body, "logprobs")
        max_tokens = int(body.get("max_tokens", 16))
        temperature = float(body.get("temperature", 1.0))
        gen = torch.Generator().manual_seed(int(body.get("seed", 0)))
        logps = self._logp(rows)
        choices = []
        for i, (row, logp) in enumerate(zip(rows, logps)):
            choice: dict[str, Any] = {"index": i, "finish_reason": "length"}
            if n_prompt is not None:
                choice["prompt_logprobs"] = [None] + [
                    self._top(logp[t - 1], n_prompt, row[t]) for t in range(1, len(row))
                ]
            new, tops, current = [], [], logp[-1]
            for step in range(max_tokens):
                if temperature == 0:
                    tok = int(current.argmax())
                else:
                    tok = int(
                        torch.multinomial((current / temperature).softmax(-1), 1, generator=gen)
                    )
                new.append(tok)
                if n_new is not None:
                    tops.append(
                        {
                            self.tok.decode([int(k)]): v["logprob"]
                            for k, v in self._top(current, n_new).items()
                        }
                    )
                if step + 1 < max_tokens:
                    current = self._logp([row + new])[0][-1]
            choice["text"] = self.tok.decode(new)
            choice["token_ids"] = new
            choice["logprobs"] = (
                None
                if n_new is None
                else {
                    "tokens": [self.tok.decode([t]) for t in new],
                    "token_logprobs": [float(logp_t) for logp_t in self._chosen(row, new)],
                    "top_logprobs": tops,
                }
            )
            choices.append(choice)
        n_in = sum(map(len, rows))
        n_out = max_tokens * len(rows)
        return {
            "id": f"cmpl-{time.time_ns()}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": choices,
            "usage": {
                "prompt_tokens": n_in,
                "completion_tokens": n_out,
                "total_tokens": n_in + n_out,
            },
        }

    def _chosen(self, row: list[int], new: list[int]) -> list[float]:
        if not new:
            return []
        logp = self._logp([row + new])[0]
        return [float(logp[len(row) - 1 + j, t]) for j, t in enumerate(new)]

    # ------------------------------------------------------------------ HTTP
    def serve(self, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
        """An HTTP server (not yet serving) whose requests this teacher answers."""
        return ThreadingHTTPServer((host, port), type("Handler", (Handler,), {"teacher": self}))


class Handler(BaseHTTPRequestHandler):
    """The endpoints of `TeacherServer` (set as `teacher` on a subclass by `serve`)."""

    protocol_version = "HTTP/1.1"
    teacher: TeacherServer

    def _send(self, code: int, payload: Any) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _error(self, code: int, message: str, kind: str) -> None:
        self._send(code, {"error": {"message": message, "type": kind, "code": code}})

    def _authorised(self) -> bool:
        key = self.teacher.api_key
        if key and self.headers.get("Authorization") != f"Bearer {key}":
            self._error(401, "missing or wrong API key", "invalid_api_key")
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802 (the http.server hook's name)
        if not self._authorised():
            return
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, self.teacher.models())
        elif self.path.rstrip("/") == "/health":
            self._send(200, {"status": "ok"})
        else:
            self._error(404, f"no endpoint {self.path}", "not_found")

    def do_POST(self) -> None:  # noqa: N802
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not self._authorised():
            return
        teacher = self.teacher
        route = {"/v1/completions": teacher.completions, "/tokenize": teacher.tokenize}.get(
            self.path.rstrip("/")
        )
        if route is None:
            self._error(404, f"no endpoint {self.path}", "not_found")
            return
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise RequestError("the request body must be a JSON object")
            if route == teacher.completions and body.get("model", teacher.name) != teacher.name:
                raise RequestError(f"the model {body['model']!r} is not served here")
            self._send(200, route(body))
        except (RequestError, json.JSONDecodeError) as e:
            self._error(400, str(e), "invalid_request_error")

    def log_message(self, fmt: str, *args: Any) -> None:
        print(f"{self.address_string()} {fmt % args}", flush=True)


def run_server(
    model: str,
    *,
    tokenizer: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str | None = None,
    max_logprobs: int = 128,
    api_key_env: str | None = None,
) -> None:
    """Load the model and serve it until interrupted; prints the address once listening."""
    key = ""
    if api_key_env:
        key = os.environ.get(api_key_env, "")
        if not key:
            raise ConfigError(f"--api-key-env: the environment variable {api_key_env!r} is not set")
    lm, tok = load_served_model(model, tokenizer)
    teacher = TeacherServer(lm, tok, name or Path(model).resolve().name, max_logprobs, key)
    httpd = teacher.serve(host, port)
    print(f"serving {teacher.name!r} on http://{host}:{httpd.server_address[1]}/v1", flush=True)
    try:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C stops serving
            httpd.serve_forever()
    finally:
        httpd.server_close()
