"""`lm_kd` on Hugging Face text datasets held locally (`data.name: hf_text`): plain text,
prompt/completion and chat messages, which tokens carry loss, token by token, a KD run
from YAML on each shape, and the student exported with its tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from test_llm_chat import CHAT, WORDS, _tokenizer  # noqa: E402

from distill.app.run import run_experiment  # noqa: E402
from distill.core.config import parse_config  # noqa: E402
from distill.core.errors import ConfigError, DataError  # noqa: E402
from distill.llm.hf_text import load_hf_text  # noqa: E402

GPT2 = {"name": "hf_causal_lm", "args": {"arch": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2}}
TRAIN = {
    "epochs": 1,
    "batch_size": 8,
    "monitor": "nll",
    "progress": False,
    "optimizer": {"name": "adamw", "lr": 0.003},
}


def _conversations(n: int, seed: int = 0) -> list[dict]:
    rng = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        q = [WORDS[int(i)] for i in torch.randint(0, len(WORDS), (4,), generator=rng)]
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": " ".join(q)},
                    {"role": "assistant", "content": " ".join(reversed(q))},
                ]
            }
        )
    return rows


def _trained_teacher(tmp_path, opts: dict) -> dict:
    """A GPT-2 trained on the hf_text data `opts` names (its config, for the KD runs)."""
    teacher = {
        "name": "t",
        "run_dir": str(tmp_path / "t"),
        "scheme": "supervised",
        "data": {"name": "hf_text", "options": opts},
        "student": GPT2,
        "train": TRAIN,
    }
    assert run_experiment(parse_config(teacher))["complete"]
    return teacher


def _write(tmp_path, rows: list[dict], kind: str = "chatml") -> tuple[str, str]:
    """The rows as a save_to_disk folder with train/test splits, and a tokenizer folder."""
    data = tmp_path / "data"
    cut = int(len(rows) * 0.8)
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(rows[:cut]),
            "test": datasets.Dataset.from_list(rows[cut:]),
        }
    ).save_to_disk(str(data))
    tok = tmp_path / "tok"
    _tokenizer(kind).save_pretrained(str(tok))
    return str(data), str(tok)


@pytest.mark.parametrize("kind", ["chatml", "brackets"])
def test_chat_rows_supervise_the_assistant_tokens_only(tmp_path, kind):
    data, tok_dir = _write(tmp_path, [{"messages": CHAT}] * 10, kind)
    splits = load_hf_text(path=data, tokenizer=tok_dir, length=40)
    tok = splits.tokenizer.hf
    row, sup = splits.test.ids[0], splits.test.supervised[0]
    end = "<|im_end|>" if kind == "chatml" else "[END]"
    assert tok.convert_ids_to_tokens(row[sup].tolist()) == ["fine", "thanks", end, "four", end]
    assert (row[~sup][-1] == tok.pad_token_id) and splits.num_classes == len(tok)
    assert len(splits.val) >= 1  # carved from train: the data has no validation split
    # targets are shifted: position t predicts token t+1, where it is supervised
    batch = splits.test.batch(torch.tensor([0]))
    assert batch["target"][0][batch["target"][0] >= 0].tolist() == row[sup].tolist()


def test_prompt_completion_and_text_rows_with_distills_own_tokenizer(tmp_path):
    rows = [{"prompt": "two plus two is", "completion": " four"}] * 12
    path = tmp_path / "pc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    splits = load_hf_text(path=str(path), tokenizer="bytes", length=24)
    tok = splits.tokenizer
    row, sup = splits.train.ids[0], splits.train.supervised[0]
    assert row[0] == tok.bos_id and tok.decode(row[sup].tolist()) == " four"
    assert row[sup].tolist()[-1] == tok.eos_id
    text = tmp_path / "t.jsonl"
    text.write_text("".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(12)))
    splits = load_hf_text(path=str(text), tokenizer="bytes", length=12)
    n = len("line 0") + 2  # BOS, the text, EOS: all supervised
    assert splits.train.supervised[0].sum() == n


def test_bad_chat_data_is_refused_with_the_fix(tmp_path):
    data, _ = _write(tmp_path, _conversations(10))
    with pytest.raises(DataError, match="no chat template"):
        load_hf_text(path=data, tokenizer="bytes")
    (tmp_path / "x.jsonl").write_text('{"question": "a"}\n' * 5)
    with pytest.raises(DataError, match="give input_ids .*text, prompt"):
        load_hf_text(path=str(tmp_path / "x.jsonl"), tokenizer="bytes")
    with pytest.raises(DataError, match="neither a local file"):
        load_hf_text(path="someone/some-dataset", tokenizer="bytes")
    (tmp_path / "e.jsonl").write_text('{"prompt": "a long prompt", "completion": "b"}\n' * 5)
    with pytest.raises(DataError, match="no token carries loss"):
        load_hf_text(path=str(tmp_path / "e.jsonl"), tokenizer="bytes", length=4)
    with pytest.raises(ConfigError, match="length must be"):
        load_hf_text(path=str(tmp_path / "e.jsonl"), tokenizer="bytes", length=1)


def test_lm_kd_on_a_chat_dataset_from_yaml_exports_with_its_tokenizer(tmp_path):
    """Teacher then KD student on conversations, only assistant tokens learned; the HF
    export holds the tokenizer and generates what the in-memory student generates."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.app.artifacts import export_run
    from distill.app.assess import load_run

    data, tok_dir = _write(tmp_path, _conversations(60))
    opts = {"path": data, "tokenizer": tok_dir, "length": 24}
    teacher = _trained_teacher(tmp_path, opts)
    kd = {
        **teacher,
        "name": "kd",
        "run_dir": str(tmp_path / "kd"),
        "scheme": {"name": "lm_kd", "args": {"divergence": "forward_kl"}},
        "teacher": {**GPT2, "weights": str(tmp_path / "t")},
    }
    result = run_experiment(parse_config(kd))
    assert result["complete"] and result["test_ppl"] > 1
    info = export_run(tmp_path / "kd", "hf")
    assert "tokenizer.json" in info["files"] and info["tokenizer"] == tok_dir
    hf_tok = AutoTokenizer.from_pretrained(info["path"])
    assert hf_tok.chat_template == _tokenizer("chatml").chat_template
    model, _, _ = load_run(tmp_path / "kd")
    again = AutoModelForCausalLM.from_pretrained(info["path"]).eval()
    prompt = hf_tok.apply_chat_template(CHAT[1:2], add_generation_prompt=True, return_tensors="pt")
    prompt = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    with torch.no_grad():
        ours = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
        theirs = again.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(ours, theirs)


def test_a_bpe_students_export_carries_its_tokenizer(tmp_path):
    """distill's own BPE tokenizer is saved as a Hugging Face tokenizer with the student:
    the same ids for the same text, and the same special tokens."""
    from transformers import AutoTokenizer

    from distill.app.artifacts import export_run

    lines = [f"{WORDS[i % 11]} {WORDS[(3 * i) % 11]} {WORDS[(5 * i) % 11]}" for i in range(80)]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    cfg = {
        "name": "s",
        "run_dir": str(tmp_path / "s"),
        "scheme": "supervised",
        "data": {
            "name": "hf_text",
            "options": {"path": str(path), "tokenizer": "bpe", "vocab_size": 300, "length": 12},
        },
        "student": GPT2,
        "train": TRAIN,
    }
    assert run_experiment(parse_config(cfg))["complete"]
    info = export_run(tmp_path / "s", "hf")
    assert info["tokenizer"].startswith("bpe")
    from distill.app.assess import load_run

    _, data, _ = load_run(tmp_path / "s")
    hf_tok = AutoTokenizer.from_pretrained(info["path"])
    for text in ("hello how are you", "what is two plus four"):
        assert hf_tok(text, add_special_tokens=False)["input_ids"] == data.tokenizer.encode(text)
    assert hf_tok.eos_token_id == data.tokenizer.eos_id
    assert hf_tok.pad_token_id == data.tokenizer.pad_id
    # a causal LM exports to ONNX with integer ids in and per-token logits out
    onnx = export_run(tmp_path / "s", "onnx")
    assert onnx["max_abs_logit_diff"] < 1e-4 and "model.onnx" in onnx["files"]


def test_lm_kd_streams_a_chat_dataset(tmp_path):
    """streaming: true encodes the training rows as they are read (the same tokens as the
    map-style rows), takes validation from the head of the stream, and trains to
    train.max_steps."""
    from distill.llm.hf_text import TokenStream

    rows = _conversations(40)
    files = tmp_path / "chats.jsonl"
    files.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok_dir = tmp_path / "tok"
    _tokenizer("chatml").save_pretrained(str(tok_dir))
    opts = {"path": str(files), "tokenizer": str(tok_dir), "length": 24}
    streamed = load_hf_text(**opts, streaming=True, val_samples=4, test_samples=4)
    assert isinstance(streamed.train, TokenStream) and len(streamed.val) == len(streamed.test) == 4
    whole = load_hf_text(**opts, val_fraction=0.1, test_fraction=0.1)
    first = next(iter(streamed.train))
    # the stream's first training row is file row 8 (rows 0-7 went to val and test)
    ref = rows_of_one(rows[8], whole.tokenizer)
    assert torch.equal(first["input"], ref.ids[0, :-1])
    assert torch.equal(first["target"], ref.targets[0])
    assert sum(1 for _ in streamed.train) == 32
    with pytest.raises(DataError, match="no validation split; name one"):
        load_hf_text(**opts, streaming=True, test_samples=4)
    with pytest.raises(ConfigError, match="for streaming: true"):
        load_hf_text(**opts, val_samples=4)
    teacher = _trained_teacher(tmp_path, opts)
    stream_opts = {**opts, "streaming": True, "val_samples": 4, "test_samples": 4}
    kd = {
        **teacher,
        "name": "kd",
        "run_dir": str(tmp_path / "kd"),
        "data": {"name": "hf_text", "options": stream_opts},
        "scheme": {"name": "lm_kd", "args": {"divergence": "forward_kl"}},
        "teacher": {**GPT2, "weights": str(tmp_path / "t")},
        "train": {**TRAIN, "epochs": 2, "max_steps": 6},
    }
    result = run_experiment(parse_config(kd))
    assert result["steps"] == 6 and result["test_ppl"] > 1


def rows_of_one(example: dict, tok):
    from distill.llm.hf_text import rows_of

    return rows_of([example], tok, 24, "row")
