"""A served teacher (issue 42): `distill serve-teacher` runs as a real HTTP server on
127.0.0.1 in its own process, in the shape of vLLM's completions API; `lm_kd` trains from
it with no teacher in its memory, waits out a server killed mid-run, and refuses a wrong
key, a wrong tokenizer, a wrong model name and a server that never answers."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from test_llm import DATA, GPT2, LLAMA, TRAIN

from distill.app.build import build
from distill.app.run import run_experiment
from distill.core.checkpoint import load_weights
from distill.core.config import parse_config
from distill.core.errors import ConfigError
from distill.core.http import ServerError
from distill.data import load_batch
from distill.llm.cache import sparse_teacher
from distill.llm.served import ServedTeacher, ServedTeacherArgs, top_entries
from distill.llm.text import ByteTokenizer

KEY_ENV = "DISTILL_TEST_TEACHER_KEY"


class Served:
    """`distill serve-teacher` in a child process; `kill()` and `start()` again on the
    same port; `completions` counts the scoring requests it has answered."""

    def __init__(self, folder: Path, tokenizer: Path, port: int = 0):
        self.folder, self.tokenizer, self.port = folder, tokenizer, port
        self.completions = 0
        self.start()

    def start(self) -> None:
        env = {**os.environ, KEY_ENV: "sesame"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "distill", "serve-teacher", str(self.folder),
             "--tokenizer", str(self.tokenizer), "--port", str(self.port), "--name", "teacher",
             "--max-logprobs", "16", "--api-key-env", KEY_ENV],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
        lines = []
        while "serving 'teacher'" not in (line := self.proc.stdout.readline()):
            lines.append(line)
            if not line:  # the server exited before listening
                self.kill()
                raise AssertionError("".join(lines))
        self.port = int(line.rsplit(":", 1)[1].split("/")[0])
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()

    def _read(self, proc) -> None:
        for line in proc.stdout:
            if "POST /v1/completions" in line:
                self.completions += 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def served(teacher_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    built = build(parse_config(_cfg(root, teacher_dir, {})))
    built.teacher.save_pretrained(root / "teacher-hf")
    built.data.tokenizer.tok.save(str(root / "tokenizer.json"))
    server = Served(root / "teacher-hf", root / "tokenizer.json")
    yield server, built
    server.kill()


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sesame")


def _cfg(tmp_path, teacher_dir, args: dict, **train) -> dict:
    cfg = {
        "name": "served",
        "run_dir": str(tmp_path / "run"),
        "scheme": {"name": "lm_kd", "args": args},
        "data": DATA,
        "student": LLAMA,
        "train": {**TRAIN, "seed": 3, **train},
    }
    if not args:
        cfg["teacher"] = {**GPT2, "weights": str(teacher_dir)}
    return cfg


def _server_args(url: str, **kw) -> dict:
    return {"url": url, "top_k": 8, "rows_per_request": 4, "concurrency": 2,
            "api_key_env": KEY_ENV, "backoff_s": 0.2, **kw}  # fmt: skip


def test_the_server_gives_the_local_teachers_top_k(served):
    server, built = served
    client = ServedTeacher(ServedTeacherArgs(**_server_args(server.url)), 300, built.data.tokenizer)
    batch = load_batch(built.data.train, torch.arange(6))
    ids, values, tail = client.sparse(batch)
    with torch.no_grad():
        logits = built.teacher(input_ids=batch["input"], attention_mask=batch["attention_mask"])
    ref_ids, ref_values, ref_tail = sparse_teacher(logits.logits[..., :300], "topk", 8)
    scored = batch["target"] >= 0
    assert scored.all()  # blocks of text: every position is a target
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(values, ref_values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tail, ref_tail, atol=1e-4, rtol=1e-4)


def test_training_from_a_served_teacher_survives_a_server_killed_mid_run(
    served,
    teacher_dir,
    tmp_path,
    caplog,
):
    server, _ = served
    args = {"teacher_server": _server_args(server.url, retries=10)}
    steady = _cfg(tmp_path / "steady", teacher_dir, args, max_steps=6)
    assert build(parse_config(steady)).teacher is None  # no teacher in the student's memory
    result = run_experiment(parse_config(steady))
    assert result["stopped_by"] == "max_steps" and result["steps"] == 6
    assert result["teacher_source"].startswith("served teacher 'teacher' at http://127.0.0.1")
    # the same run, while the server is killed after a few batches and comes back 2 s later
    seen = server.completions

    def outage():
        while server.completions < seen + 3:
            time.sleep(0.01)
        server.kill()
        time.sleep(2.0)
        server.start()

    killer = threading.Thread(target=outage)
    killer.start()
    cut = _cfg(tmp_path / "cut", teacher_dir, args, max_steps=6)
    with caplog.at_level(logging.WARNING, logger="distill.http"):
        result = run_experiment(parse_config(cut))
    killer.join()
    assert result["stopped_by"] == "max_steps" and result["steps"] == 6
    assert any("retry 1 of 10" in r.getMessage() for r in caplog.records)
    # nothing lost: the student is the one the steady run trained, to the bit
    a, b = (
        load_weights(Path(c["run_dir"]) / "checkpoints" / "last.safetensors")[0]
        for c in (steady, cut)
    )
    student = [k for k in a if k.startswith("modules.student.")]
    assert student and all(torch.equal(a[k], b[k]) for k in student)


def test_on_policy_and_chunked_kd_from_a_served_teacher(served, teacher_dir, tmp_path):
    server, built = served
    on_policy = {"teacher_server": _server_args(server.url), "chunk_size": 32,
                 "on_policy": {"fraction": 1.0, "prompt_tokens": 8}}  # fmt: skip
    cfg = _cfg(tmp_path, teacher_dir, on_policy, max_steps=2)
    result = run_experiment(parse_config(cfg))
    assert result["steps"] == 2 and result["test_ppl"] > 1
    with pytest.raises(ConfigError, match="its KD is the forward KL over those k tokens"):
        build(parse_config(_cfg(tmp_path, teacher_dir, {**on_policy, "divergence": "jsd"})))
    with pytest.raises(ConfigError, match="temperature 1 with teacher_server"):
        build(parse_config(_cfg(tmp_path, teacher_dir, {**on_policy, "temperature": 2.0})))
    with pytest.raises(ConfigError, match="sequence_level needs the teacher to write"):
        build(parse_config(_cfg(tmp_path, teacher_dir, {
            "teacher_server": _server_args(server.url), "sequence_level": {}})))  # fmt: skip


def test_a_served_teacher_refuses_bad_servers_and_answers(served, monkeypatch):
    server, built = served
    tok = built.data.tokenizer

    def client(**kw) -> ServedTeacher:
        return ServedTeacher(ServedTeacherArgs(**_server_args(server.url, **kw)), 300, tok)

    with pytest.raises(ConfigError, match="not the student's"):
        ServedTeacher(ServedTeacherArgs(**_server_args(server.url)), 300, ByteTokenizer())
    with pytest.raises(ConfigError, match="'other' is not served.*it serves \\['teacher'\\]"):
        client(model="other")
    batch = load_batch(built.data.train, torch.arange(2))
    with pytest.raises(ServerError, match="HTTP 400.*greater than max allowed: 16"):
        client(top_k=32).sparse(batch)
    monkeypatch.setenv(KEY_ENV, "wrong")
    start = time.monotonic()
    with pytest.raises(ServerError, match="HTTP 401.*wrong API key"):
        client()
    assert time.monotonic() - start < 1.0  # a wrong key is not retried
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ConfigError, match="DISTILL_TEST_TEACHER_KEY' is not set"):
        client()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens here once the socket closes
    with pytest.raises(ServerError, match="did not answer after 3 tries.*is the server up"):
        ServedTeacher(
            ServedTeacherArgs(url=f"http://127.0.0.1:{closed}/v1", retries=2, backoff_s=0.01),
            300,
        )
    with pytest.raises(ServerError, match="returned 2 log-probabilities per token where top_k=4"):
        top_entries({"5": {"logprob": -0.1}, "9": -2.5}, 4, "here")
    assert top_entries({"5": {"logprob": -0.1}, "9": -2.5, "1": -9.0}, 2, "here") == (
        [5, 9], [-0.1, -2.5])  # fmt: skip


def test_distillation_trainer_trains_from_a_served_teacher(served, tmp_path):
    """A TRL-style trainer with the teacher behind the server, on-policy batches included."""
    from transformers import PreTrainedTokenizerFast, TrainingArguments

    from distill import DistillationTrainer
    from distill.models import build_model

    server, built = served
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(server.tokenizer), eos_token="<eos>", pad_token="<pad>"
    )
    ids = built.data.train.ids[:16]
    rows = [{"input_ids": r, "attention_mask": torch.ones_like(r),
             "labels": torch.cat([torch.full((4,), -100), r[4:]])} for r in ids]  # fmt: skip
    torch.manual_seed(0)
    student = build_model("hf_causal_lm", (24,), 300, LLAMA["args"])
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4,
                             report_to=[], use_cpu=True, save_strategy="no", learning_rate=1e-3)  # fmt: skip
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=rows, processing_class=tok,
        teacher_server=_server_args(server.url), lmbda=0.5, max_new_tokens=6,
    )  # fmt: skip
    assert trainer.teacher is None
    seen = server.completions
    out = trainer.train()
    assert out.global_step == 3 and torch.isfinite(torch.tensor(out.training_loss))
    assert server.completions > seen  # every step asked the server
    with pytest.raises(ValueError, match="teacher_cache .* one of them"):
        DistillationTrainer(model=student, args=args, train_dataset=rows)
    with pytest.raises(ValueError, match="set divergence='forward_kl'"):
        DistillationTrainer(model=student, args=args, train_dataset=rows, divergence="jsd",
                            teacher_server=_server_args(server.url))  # fmt: skip
