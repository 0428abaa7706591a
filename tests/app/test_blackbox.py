"""Black-box KD data generation against a local OpenAI-compatible server on loopback."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import REPO

from distill.app.blackbox import (
    HTTPTeacher,
    TeacherError,
    augment_instructions,
    generate_dataset,
    read_jsonl,
)
from distill.app.cli import main


class _Server:
    """Answers 'echo: <prompt upper-cased>'; fails the first `fail_first` requests with 503."""

    def __init__(self, fail_first: int = 0, status: int = 503):
        self.requests: list[dict] = []
        self.fail_left, self.status = fail_first, status
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                """Quiet: no request lines in the test output."""

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"body": body, "auth": self.headers.get("Authorization")})
                if server.fail_left > 0:
                    server.fail_left -= 1
                    self.send_response(server.status)
                    self.end_headers()
                    return
                prompt = body["messages"][-1]["content"]
                text = (
                    "Task: write a poem\nTask: sum two numbers"
                    if "new task" in prompt
                    else f"echo: {prompt.upper()}"
                )
                data = json.dumps(
                    {"choices": [{"message": {"role": "assistant", "content": text}}]}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()


def _teacher(url: str, **kw) -> HTTPTeacher:
    return HTTPTeacher(url, "tiny", requests_per_second=0, backoff=0.01, **kw)


def test_generation_dedups_filters_and_resumes(tmp_path):
    out = tmp_path / "data.jsonl"
    prompts = ["add 1 and 2", "say hi", "add 1 and 2", "x"]
    with _Server() as srv:
        report = generate_dataset(_teacher(srv.url), prompts, out, min_chars=8)
        assert (report.written, report.duplicates, report.filtered) == (2, 1, 1)
        rows = read_jsonl(out)
        assert [r["response"] for r in rows] == ["echo: ADD 1 AND 2", "echo: SAY HI"]
        # a crash mid-write leaves a partial line: it is dropped and the prompt asked again
        with open(out, "a") as f:
            f.write('{"id": "broken", "prompt": "new one", "resp')
        asked = len(srv.requests)
        report = generate_dataset(_teacher(srv.url), [*prompts, "new one"], out, min_chars=8)
        assert report.skipped_existing == 2 and report.written == 1
        assert len(srv.requests) == asked + 2  # only 'x' (filtered again) and 'new one'
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line) for line in lines)


def test_retries_then_succeeds_and_gives_up(tmp_path, monkeypatch):
    monkeypatch.setenv("TINY_KEY", "secret")
    with _Server(fail_first=2) as srv:
        answer = _teacher(srv.url, api_key_env="TINY_KEY", max_retries=3).complete("hello")
        assert answer == "echo: HELLO" and len(srv.requests) == 3
        assert srv.requests[-1]["auth"] == "Bearer secret"
    with _Server(fail_first=10) as srv, pytest.raises(TeacherError, match="after 3 tries"):
        _teacher(srv.url, max_retries=2).complete("hello")
    with _Server(fail_first=1, status=400) as srv:  # a client error is not retried
        with pytest.raises(TeacherError, match="HTTP 400"):
            _teacher(srv.url).complete("hello")
        assert len(srv.requests) == 1


def test_rate_limit_spaces_requests():
    import time

    with _Server() as srv:
        t = HTTPTeacher(srv.url, "tiny", requests_per_second=20)
        start = time.monotonic()
        for _ in range(5):
            t.complete("a")
        assert time.monotonic() - start >= 4 / 20 - 0.01


def test_instruction_augmentation():
    with _Server() as srv:
        new = augment_instructions(_teacher(srv.url), ["add 2 and 3", "write a haiku"], rounds=2)
    assert new == ["write a poem", "sum two numbers"]  # distinct lines, deduplicated


def test_generate_cli_and_student_trains_on_the_result(tmp_path):
    from distill.app.run import run_experiment
    from distill.core.config import parse_config

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"what is {i} plus {i}?" for i in range(30)))
    out = tmp_path / "gen.jsonl"
    with _Server() as srv:
        spec = tmp_path / "spec.yaml"
        spec.write_text(
            f"teacher: {{kind: http, base_url: '{srv.url}', model: tiny, "
            f"requests_per_second: 0}}\nprompts: {prompts}\nout: {out}\n"
        )
        assert main(["generate", str(spec)]) == 0
    assert len(read_jsonl(out)) == 30
    cfg = {
        "name": "bb",
        "run_dir": str(tmp_path / "student"),
        "scheme": "supervised",
        "data": {
            "name": "jsonl",
            "options": {"path": str(out), "tokenizer": "bytes", "length": 48},
        },
        "student": {
            "name": "hf_causal_lm",
            "args": {"arch": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2},
        },
        "train": {"epochs": 2, "batch_size": 8, "monitor": "nll", "progress": False},
    }
    pytest.importorskip("transformers")
    result = run_experiment(parse_config(cfg))
    assert result["complete"] and result["test_ppl"] > 1


def test_generate_cli_reports_bad_specs(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("teacher: {kind: carrier_pigeon}\nprompts: p.txt\nout: o.jsonl\n")
    assert main(["generate", str(spec)]) == 2
    assert "teacher.kind" in capsys.readouterr().err
    assert Path(spec).is_file()


def test_local_teacher_from_a_language_model_run(tmp_path):
    pytest.importorskip("transformers")
    from distill.app.blackbox import GenerateSpec, make_teacher
    from distill.app.run import run_experiment
    from distill.core.config import parse_config

    run = tmp_path / "lm"
    cfg = {
        "name": "lm",
        "run_dir": str(run),
        "scheme": "supervised",
        "data": {
            "name": "text",
            "options": {"tokenizer": "bytes", "block_size": 32, "max_train_blocks": 64},
        },
        "student": {
            "name": "hf_causal_lm",
            "args": {"arch": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2},
        },
        "train": {"epochs": 1, "batch_size": 16, "monitor": "nll", "progress": False},
    }
    run_experiment(parse_config(cfg))
    spec = GenerateSpec.model_validate(
        {
            "teacher": {"kind": "local", "run_dir": str(run), "max_tokens": 8},
            "prompts": "unused",
            "out": "unused",
        }
    )
    teacher = make_teacher(spec.teacher)
    report = generate_dataset(teacher, ["The with", "A class"], tmp_path / "o.jsonl")
    assert report.written + report.filtered == 2
    assert teacher.complete("The with") == teacher.complete("The with")  # greedy


def test_example_generation_spec_parses():
    import yaml

    from distill.app.blackbox import GenerateSpec

    root = REPO / "examples" / "blackbox"
    spec = GenerateSpec.model_validate(yaml.safe_load((root / "generate.yaml").read_text()))
    assert spec.teacher.kind == "local" and (REPO / spec.prompts).is_file()
