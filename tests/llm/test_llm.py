"""Language-model distillation on tiny random-init GPT-2 / Llama models (no hub access)."""

from __future__ import annotations

import sys

import pytest
import torch

pytest.importorskip("transformers")

from helpers import REPO

from distill.app.build import build  # noqa: E402
from distill.app.run import run_experiment  # noqa: E402
from distill.core.config import parse_config  # noqa: E402
from distill.core.errors import ConfigError  # noqa: E402
from distill.data import load_batch  # noqa: E402
from distill.llm.generation import sample_continuations
from distill.llm.scheme import layer_map
from distill.llm.text import ByteTokenizer, prompt_dataset  # noqa: E402

DATA = {
    "name": "text",
    "options": {
        "corpus": "python_docs",
        "tokenizer": "bpe",
        "vocab_size": 300,
        "block_size": 24,
        "max_train_blocks": 96,
    },
}
GPT2 = {"name": "hf_causal_lm", "args": {"arch": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2}}
LLAMA = {
    "name": "hf_causal_lm",
    "args": {
        "arch": "llama",
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
    },
}
TRAIN = {
    "epochs": 1,
    "batch_size": 16,
    "monitor": "nll",
    "progress": False,
    "optimizer": {"name": "adamw", "lr": 0.003},
}


def _kd(tmp_path, teacher_dir, args: dict, **extra) -> dict:
    return {
        "name": "kd",
        "run_dir": str(tmp_path / "kd"),
        "scheme": {"name": "lm_kd", "args": args},
        "data": DATA,
        "teacher": {**GPT2, "weights": str(teacher_dir)},
        "student": extra.pop("student", LLAMA),
        "train": {**TRAIN, **extra.pop("train", {})},
        **extra,
    }


def test_import_distill_does_not_import_transformers():
    import subprocess

    code = "import distill, sys; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "divergence", ["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tv"]
)
def test_chunked_step_equals_naive_step(tmp_path, teacher_dir, divergence):
    naive = build(parse_config(_kd(tmp_path, teacher_dir, {"divergence": divergence})))
    chunked = build(
        parse_config(_kd(tmp_path, teacher_dir, {"divergence": divergence, "chunk_size": 7}))
    )
    chunked.student.load_state_dict(naive.student.state_dict())
    batch = load_batch(naive.data.train, torch.arange(8))
    a, b = naive.scheme.step(batch, 0), chunked.scheme.step(batch, 0)
    for key in ("kd", "task", "loss"):
        assert float(a[key].detach()) == pytest.approx(float(b[key].detach()), rel=1e-4)
    ga = torch.autograd.grad(a["loss"], list(naive.student.parameters()))
    gb = torch.autograd.grad(b["loss"], list(chunked.student.parameters()))
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-3)


def test_lm_kd_end_to_end_with_hidden_map_and_padded_vocab(tmp_path, teacher_dir):
    student = {**LLAMA, "args": {**LLAMA["args"], "vocab_size": 320}}  # padded past 300
    cfg = _kd(
        tmp_path,
        teacher_dir,
        {"divergence": "jsd", "beta": 0.3, "hidden": {"map": "uniform"}},
        student=student,
        train={"grad_accum": 2},
    )
    result = run_experiment(parse_config(cfg))
    assert result["complete"]
    assert {"test_ppl", "teacher_test_ppl", "test_agreement"} <= set(result)
    built = build(parse_config(cfg))
    assert built.scheme.pairs == [(1, 2)]  # 1 student layer <- the teacher's 2nd


def test_accumulated_micro_batches_give_the_full_batch_gradient(tmp_path, teacher_dir):
    built = build(parse_config(_kd(tmp_path, teacher_dir, {"divergence": "forward_kl"})))
    s = built.scheme
    pairs = [(a, t) for a, t in zip(["I", "am", "a"], ["x", "a b c d", "yz"])]
    tok = built.data.tokenizer
    data = prompt_dataset(pairs + pairs[:1], tok, 24)  # rows with unequal supervised tokens
    full = load_batch(data, torch.arange(4))
    total = s.count_items(full)
    g_full = torch.autograd.grad(s.step(full, 0)["loss"], list(built.student.parameters()))
    grads = None
    for half in (torch.arange(0, 2), torch.arange(2, 4)):
        b = load_batch(data, half)
        b["group_items"] = torch.tensor(total / 2)  # what the trainer passes
        loss = s.step(b, 0)["loss"] / 2  # the trainer divides by the group size
        g = torch.autograd.grad(loss, list(built.student.parameters()))
        grads = g if grads is None else [x + y for x, y in zip(grads, g)]
    for x, y in zip(grads, g_full):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-4)


def test_prompt_and_padding_are_not_supervised():
    tok = ByteTokenizer()
    data = prompt_dataset([("ab", "cd"), ("abcdef", "g")], tok, 10)
    b = load_batch(data, torch.arange(2))
    # row 0: BOS a b | c d EOS | pad...; targets are the next tokens where supervised
    assert b["target"][0].tolist()[:6] == [-1, -1, ord("c"), ord("d"), tok.eos_id, -1]
    assert (b["attention_mask"][0, 6:] == 0).all()
    assert int((b["target"] >= 0).sum()) == 3 + 2


def test_on_policy_batches_are_student_samples(tmp_path, teacher_dir):
    args = {"divergence": "reverse_kl", "on_policy": {"fraction": 1.0, "prompt_tokens": 5}}
    built = build(parse_config(_kd(tmp_path, teacher_dir, args)))
    batch = load_batch(built.data.train, torch.arange(4))
    op = built.scheme._on_policy_batch(batch, 3)
    assert torch.equal(op["input"][:, :5], batch["input"][:, :5])  # the prompt is kept
    assert (op["target"][:, :4] == -1).all() and (op["target"][:, 4:] >= 0).all()
    assert not torch.equal(op["input"], batch["input"])  # the rest was sampled
    assert torch.equal(built.scheme._on_policy_batch(batch, 3)["input"], op["input"])
    losses = built.scheme.step(batch, 3)
    assert torch.isfinite(losses["loss"]) and float(losses["task"].detach()) >= 0
    off = build(parse_config(_kd(tmp_path, teacher_dir, {"on_policy": {"fraction": 0.0}})))
    assert off.scheme._on_policy_batch(batch, 3) is None  # lambda = 0: supervised KD


def test_sequence_level_kd_trains_on_teacher_continuations(tmp_path, teacher_dir):
    args = {"sequence_level": {"prompt_tokens": 6}, "kd_weight": 0.0}
    built = build(parse_config(_kd(tmp_path, teacher_dir, args)))
    seqs = built.scheme.modules["sequences"].value
    train = built.data.train.ids
    assert seqs.shape == train.shape
    assert torch.equal(seqs[:, :6], train[:, :6])
    greedy = sample_continuations(built.teacher, train[:2, :6], train.shape[1] - 6, greedy=True)
    assert torch.equal(seqs[:2], greedy)
    result = run_experiment(parse_config(_kd(tmp_path, teacher_dir, args)))
    assert result["complete"]


def test_layer_maps():
    assert layer_map(2, 6) == [(1, 3), (2, 6)]
    assert layer_map(2, 6, "last_k") == [(1, 5), (2, 6)]
    assert layer_map(2, 6, "explicit", [[1, 2], [2, 4]]) == [(1, 2), (2, 4)]
    with pytest.raises(ConfigError, match="outside"):
        layer_map(2, 6, "explicit", [[3, 1]])


def test_bad_lm_configs(tmp_path, teacher_dir):
    with pytest.raises(ConfigError, match="not one of"):
        build(parse_config(_kd(tmp_path, teacher_dir, {"divergence": "kl"})))
    cfg = _kd(tmp_path, teacher_dir, {})
    cfg["student"] = {**LLAMA, "args": {**LLAMA["args"], "vocab_size": 100}}
    with pytest.raises(ConfigError, match="smaller than the data"):
        build(parse_config(cfg))


def _hf_models():
    from distill.models import build_model

    torch.manual_seed(0)
    teacher = build_model("hf_causal_lm", (16,), 64, GPT2["args"])
    student = build_model("hf_causal_lm", (16,), 64, LLAMA["args"])
    return teacher, student


class _Rows(torch.utils.data.Dataset):
    def __init__(self, n: int = 24):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 64, (n, 16), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        labels = self.ids[i].clone()
        labels[:4] = -100  # a prompt
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones(16, dtype=torch.long),
            "labels": labels,
        }


@pytest.mark.parametrize("chunk_size", [0, 5])
def test_distillation_trainer_runs_and_is_lazy(tmp_path, chunk_size):
    from transformers import TrainingArguments

    from distill import DistillationTrainer

    teacher, student = _hf_models()
    before = [p.clone() for p in teacher.parameters()]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        learning_rate=1e-3,
    )
    trainer = DistillationTrainer(
        model=student,
        args=args,
        train_dataset=_Rows(),
        teacher_model=teacher,
        divergence="jsd",
        chunk_size=chunk_size,
    )
    out = trainer.train()
    assert out.global_step == 3 and torch.isfinite(torch.tensor(out.training_loss))
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))


def test_distillation_trainer_loss_is_accumulation_invariant(tmp_path):
    from transformers import TrainingArguments

    from distill import DistillationTrainer

    teacher, student = _hf_models()
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = DistillationTrainer(
        model=student, args=args, teacher_model=teacher, divergence="forward_kl"
    )
    rows = _Rows(4)
    batch = {k: torch.stack([rows[i][k] for i in range(4)]) for k in rows[0]}
    batch["labels"][0, 4:10] = -100  # unequal token counts per half
    n = int((batch["labels"][:, 1:] != -100).sum())
    full = trainer.compute_loss(student, batch, num_items_in_batch=n)
    halves = sum(
        trainer.compute_loss(
            student, {k: v[i : i + 2] for k, v in batch.items()}, num_items_in_batch=n
        )
        for i in (0, 2)
    )
    assert float(halves.detach()) == pytest.approx(float(full.detach()), rel=1e-5)


@pytest.mark.parametrize("mode", ["topk", "sample"])
def test_teacher_cache_round_trip_and_training(tmp_path, teacher_dir, mode):
    from distill.app.cli import main
    from distill.llm.cache import TeacherCache, sparse_teacher

    cfg = _kd(tmp_path, teacher_dir, {})
    (tmp_path / "kd.yaml").write_text(__import__("yaml").safe_dump(cfg))
    out = tmp_path / "cache"
    assert (
        main(["lm-cache", str(tmp_path / "kd.yaml"), "--out", str(out), "--mode", mode, "--k", "8"])
        == 0
    )
    cache = TeacherCache.open(out)
    built = build(parse_config(cfg))
    assert len(cache) == len(built.data.train)
    ids, values, extra = cache.rows(torch.tensor([3, 1]))
    logits = built.teacher(
        input_ids=load_batch(built.data.train, torch.tensor([3, 1]))["input"]
    ).logits
    if mode == "topk":
        ref_ids, ref_values, ref_tail = sparse_teacher(logits.detach()[..., :300], "topk", 8)
        order = ref_ids.argsort(-1)  # the cache keeps each position's top k sorted by id
        assert torch.equal(ids, ref_ids.gather(-1, order))
        torch.testing.assert_close(
            values, ref_values.gather(-1, order), atol=2e-3, rtol=1e-3
        )  # stored in fp16
        mass = values.exp().sum(-1) + extra.exp()
        torch.testing.assert_close(mass, torch.ones_like(mass), atol=5e-3, rtol=0)
    else:
        torch.testing.assert_close(values.sum(-1), torch.ones(2, values.shape[1]))
    # per position: 8 ids in Elias-Fano code (8 x 5 low bits + a 8 + 300 / 32 + 1 = 18-bit
    # bitmap: 58 bits, so 7.25 bytes), 8 float16 log-probs, a float16 tail (topk)
    assert cache.bytes_per_token() == pytest.approx(7.25 + 16 + (2 if mode == "topk" else 0))
    cached = _kd(tmp_path, teacher_dir, {"teacher_cache": str(out)})
    cached["run_dir"] = str(tmp_path / "cached")
    result = run_experiment(parse_config(cached))
    assert result["complete"]
    assert result["teacher_cache"].startswith(f"{mode}-8 logit cache")
    # the cache is the teacher: no teacher section, or one whose weights are not there,
    # and the run never loads a teacher (issue 42)
    alone = _kd(tmp_path, teacher_dir, {"teacher_cache": str(out)})
    alone.pop("teacher")
    alone["run_dir"] = str(tmp_path / "alone")
    built_alone = build(parse_config(alone))
    assert built_alone.teacher is None
    result = run_experiment(parse_config(alone))
    assert result["complete"] and "teacher_test_ppl" not in result
    gone = _kd(tmp_path, teacher_dir, {"teacher_cache": str(out)})
    gone["teacher"]["weights"] = str(tmp_path / "nonexistent")
    assert build(parse_config(gone)).teacher is None
    # with chunk_size the cached KD is computed a chunk of tokens at a time: same values
    # and gradients as the whole logits
    whole = build(parse_config(alone))
    chunked = build(parse_config({**alone, "scheme": {"name": "lm_kd", "args": {
        "teacher_cache": str(out), "chunk_size": 8}}}))  # fmt: skip
    chunked.student.load_state_dict(whole.student.state_dict())
    batch = load_batch(whole.data.train, torch.arange(4))
    losses = []
    for b in (whole, chunked):
        b.student.zero_grad()
        o = b.scheme.step(dict(batch), 0)
        o["loss"].backward()
        losses.append((o, [p.grad.clone() for p in b.student.parameters()]))
    (a, ga), (c, gc) = losses
    for key in ("loss", "kd", "task"):
        torch.testing.assert_close(c[key], a[key], rtol=1e-5, atol=1e-6)
    for x, y in zip(ga, gc):
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-6)
    bad = _kd(tmp_path, teacher_dir, {"teacher_cache": str(out), "on_policy": {"fraction": 0.5}})
    with pytest.raises(ConfigError, match="need a teacher that reads new text"):
        build(parse_config(bad))


def test_sparse_kl_estimates():
    from distill.llm.cache import cache_kl_error

    torch.manual_seed(0)
    t, s = torch.randn(64, 500) * 3, torch.randn(64, 500)
    exact_topk = cache_kl_error(t, s, "topk", 500)
    assert exact_topk["abs_error"] < 1e-4  # k = V: the bucketed KL is the KL
    small = cache_kl_error(t, s, "topk", 16)
    assert small["cached_kl"] <= small["dense_kl"] + 1e-6  # a coarser partition: lower bound
    errors = [cache_kl_error(t, s, "sample", 64, seed=i)["cached_kl"] for i in range(20)]
    dense = cache_kl_error(t, s, "sample", 64)["dense_kl"]
    assert abs(sum(errors) / 20 - dense) < 0.05 * dense  # unbiased: the mean converges


def test_tokenizer_checks_and_padded_alignment():
    from distill.llm.text import load_tokenizer
    from distill.llm.vocab import VocabMismatchError, align_padded, check_tokenizers

    texts = ["the quick brown fox jumps over the lazy dog " * 20] * 5
    bpe = load_tokenizer("bpe", texts, 300)
    assert check_tokenizers(bpe, load_tokenizer("bpe", texts, 300)) == "identical"
    with pytest.raises(VocabMismatchError, match="sequence-level KD.*uld.*dskd"):
        check_tokenizers(ByteTokenizer(), bpe)
    s, t = align_padded(torch.randn(2, 320), torch.randn(2, 384), 300)
    assert s.shape == t.shape == (2, 300)
    with pytest.raises(VocabMismatchError, match="fewer than"):
        align_padded(torch.randn(2, 200), torch.randn(2, 384), 300)


def test_uld_ignores_token_identity():
    from distill.llm.vocab import uld_loss

    p = torch.tensor([[[2.0, 0.0, -1.0]]])
    permuted = p[..., [2, 0, 1]]
    mask = torch.ones(1, 1, dtype=torch.bool)
    assert float(uld_loss(p, permuted, mask, mask)) == pytest.approx(0.0, abs=1e-7)
    wider = torch.tensor([[[2.0, 0.0, -1.0, -30.0]]])  # another vocabulary size
    assert float(uld_loss(p, wider, mask, mask)) == pytest.approx(0.0, abs=1e-6)
    q = torch.tensor([[[0.0, 0.0, 0.0]]])
    ps = torch.softmax(p[0, 0], -1).sort(descending=True).values
    expected = float((ps - torch.full((3,), 1 / 3)).abs().sum())
    assert float(uld_loss(p, q, mask, mask)) == pytest.approx(expected, rel=1e-5)


def _bytes_teacher(tmp_path) -> dict:
    """A byte-level GPT-2 teacher saved in `tmp_path`: its config section."""
    from distill.core.checkpoint import save_weights
    from distill.models import build_model

    teacher = build_model("hf_causal_lm", (48,), 259, GPT2["args"])
    save_weights(tmp_path / "bytes_teacher.safetensors", teacher)
    return {
        **GPT2,
        "args": {**GPT2["args"], "vocab_size": 259},
        "weights": str(tmp_path / "bytes_teacher.safetensors"),
    }


@pytest.mark.parametrize("method", ["uld", "dskd"])
def test_cross_tokenizer_kd_end_to_end(tmp_path, method):
    teacher = _bytes_teacher(tmp_path)
    data = {
        **DATA,
        "options": {**DATA["options"], "teacher_tokenizer": "bytes", "teacher_block_size": 48},
    }
    cfg = {
        "name": "x",
        "run_dir": str(tmp_path / method),
        "data": data,
        "scheme": {"name": "lm_kd", "args": {"cross_tokenizer": method}},
        "teacher": teacher,
        "student": LLAMA,
        "train": TRAIN,
    }
    result = run_experiment(parse_config(cfg))
    assert result["complete"] and result["test_ppl"] > 1
    plain = {**cfg, "scheme": {"name": "lm_kd"}}
    with pytest.raises(ConfigError, match="tokenizers differ"):
        build(parse_config(plain))


LLM_EXAMPLES = sorted((REPO / "examples" / "llm").glob("*.yaml"))


@pytest.mark.parametrize("path", LLM_EXAMPLES, ids=[p.stem for p in LLM_EXAMPLES])
def test_llm_example_validates_and_trains(path, tmp_path):
    from distill.app.cli import main
    from distill.app.validate import validate
    from distill.core.checkpoint import save_weights
    from distill.core.config import load_config
    from distill.models import build_model

    overrides = [
        f"run_dir={tmp_path / 'run'}",
        "train.max_steps=2",
        "train.progress=false",
        "data.options.max_train_blocks=64",
    ]
    cfg = load_config(path, overrides)
    if cfg.teacher is not None:
        vocab = cfg.teacher.args.get("vocab_size", 2048)
        teacher = build_model(cfg.teacher.name, (64,), vocab, cfg.teacher.args)
        save_weights(tmp_path / "teacher.safetensors", teacher)
        overrides.append(f"teacher.weights={tmp_path / 'teacher.safetensors'}")
    if cfg.scheme.args.get("teacher_cache"):
        overrides.append(f"scheme.args.teacher_cache={tmp_path / 'cache'}")
        assert (
            main(["lm-cache", str(path), *overrides, "--out", str(tmp_path / "cache"), "--k", "4"])
            == 0
        )
    cfg = load_config(path, overrides)
    assert validate(cfg) == []
    result = run_experiment(cfg)
    assert result["steps"] == 2


def test_rouge_l():
    from distill.llm.demo import rouge_l

    assert rouge_l([1, 2, 3], [1, 2, 3]) == 1.0
    assert rouge_l([1, 2, 3], [4, 5]) == 0.0
    # LCS of (1 2 3 4) and (1 3 4 5) is (1 3 4): P = R = 3/4
    assert rouge_l([1, 2, 3, 4], [1, 3, 4, 5]) == pytest.approx(0.75)


def test_methods_list_the_token_divergences(capsys):
    import json

    from distill.app.cli import main
    from distill.llm import TOKEN_DIVERGENCES

    assert main(["methods", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(TOKEN_DIVERGENCES) <= set(rows)
    assert rows["jsd"]["family"] == "token divergence (lm_kd)" and "GKD" in rows["jsd"]["paper"]


def test_generation_uses_the_current_cache_api_and_matches_full_recompute():
    import warnings

    from transformers import GPT2Config, GPT2LMHeadModel

    from distill.llm.generation import sample_continuations

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=50, n_positions=64)
    config.bos_token_id = config.eos_token_id = 0
    model = GPT2LMHeadModel(config).eval()
    prompt = torch.randint(0, 50, (3, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # past_key_values is deprecated in 5.24
        got = sample_continuations(model, prompt, 10, greedy=True)
    ids = prompt.clone()
    with torch.no_grad():  # no cache: the whole sequence again at every step
        for _ in range(10):
            ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(got, ids)


def test_export_hf_causal_lm_generates_the_same_tokens(teacher_dir):
    from transformers import AutoModelForCausalLM

    from distill.app.artifacts import export_run
    from distill.app.assess import load_run

    info = export_run(teacher_dir, "hf")
    assert info["max_abs_logit_diff"] == 0.0 and "model.safetensors" in info["files"]
    again = AutoModelForCausalLM.from_pretrained(info["path"]).eval()
    model, data, _ = load_run(teacher_dir)
    prompt = load_batch(data.test, torch.arange(2))["input"][:, :8]
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        assert torch.equal(model.generate(prompt, **kwargs), again.generate(prompt, **kwargs))


@pytest.mark.parametrize("chunk_size", [0, 5])
def test_distillation_trainer_with_a_lora_student(tmp_path, chunk_size):
    """peft_config: only the adapter trains and is saved; the merged export has the
    unmerged model's logits; the chunked path reads the wrapped model's decoder."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM, TrainingArguments

    from distill import DistillationTrainer

    teacher, student = _hf_models()
    base = {k: v.clone() for k, v in student.state_dict().items()}
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=3,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        learning_rate=1e-2,
    )
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    trainer = DistillationTrainer(
        model=student,
        args=args,
        train_dataset=_Rows(),
        teacher_model=teacher,
        peft_config=lora,
        chunk_size=chunk_size,
    )
    model = trainer.model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    assert 0 < trainable < total / 5
    trainer.train()
    for name, value in model.get_base_model().state_dict().items():  # base weights frozen
        key = name.replace("base_layer.", "")
        if "lora_" not in name and key in base:
            assert torch.equal(value, base[key]), name
    trainer.save_model(str(tmp_path / "adapter"))
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size < 50_000
    trainer.save_merged(str(tmp_path / "merged"))
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    ids = _Rows(2).ids
    model.eval()
    with torch.no_grad():
        assert float((merged(ids).logits - model(ids).logits).abs().max()) <= 1e-5


def test_a_peft_config_naming_missing_modules_is_refused_with_the_names():
    peft = pytest.importorskip("peft")
    from transformers import TrainingArguments

    from distill import DistillationTrainer

    teacher, student = _hf_models()
    args = TrainingArguments(output_dir="unused", report_to=[], use_cpu=True)
    with pytest.raises(ValueError, match="peft_config: .*module names end in .*q_proj"):
        DistillationTrainer(
            model=student,
            args=args,
            teacher_model=teacher,
            peft_config=peft.LoraConfig(target_modules=["c_attn"]),
        )


def test_on_policy_and_sequence_level_kd_in_distillation_trainer(tmp_path):
    """generate_completions keeps each prompt, supervises only the generated tokens, and
    stops at EOS; lmbda and seq_kd train with generated batches, reproducibly."""
    from transformers import TrainingArguments

    from distill import DistillationTrainer

    def make(lmbda, seq_kd, seed=0):
        teacher, student = _hf_models()
        args = TrainingArguments(
            output_dir=str(tmp_path / f"{lmbda}{seq_kd}{seed}"),
            max_steps=2,
            per_device_train_batch_size=4,
            report_to=[],
            use_cpu=True,
            save_strategy="no",
            seed=seed,
            logging_steps=1,
        )
        return DistillationTrainer(
            model=student,
            args=args,
            train_dataset=_Rows(),
            teacher_model=teacher,
            lmbda=lmbda,
            seq_kd=seq_kd,
            max_new_tokens=5,
            divergence="jsd",
        )

    trainer = make(1.0, False)
    rows = _Rows(3)
    batch = {k: torch.stack([rows[i][k] for i in range(3)]) for k in rows[0]}
    batch["labels"][1, :7] = -100  # a longer prompt on row 1
    out = trainer.generate_completions(trainer.teacher, batch)
    for i, p in enumerate([4, 7, 4]):
        assert torch.equal(out["input_ids"][i, :p], batch["input_ids"][i, :p])  # the prompt kept
        assert (out["labels"][i, :p] == -100).all()
        n = int((out["labels"][i] != -100).sum())
        assert 1 <= n <= 5 and int(out["attention_mask"][i].sum()) == p + n
        assert torch.equal(out["labels"][i, p : p + n], out["input_ids"][i, p : p + n])
    losses = []
    for lmbda, seq_kd in ((1.0, False), (0.5, True), (1.0, False)):
        result = make(lmbda, seq_kd).train()
        assert torch.isfinite(torch.tensor(result.training_loss))
        losses.append(result.training_loss)
    assert losses[0] == losses[2]  # the same seed samples the same generations
    with pytest.raises(ValueError, match="lmbda is a probability"):
        make(1.5, False)


def test_sequence_level_kd_across_tokenizers(tmp_path, capsys):
    """A byte-level teacher writes continuations; the student learns them re-tokenized by
    its BPE tokenizer (supervised only past the prompt), and the distinct-token ratio of
    the teacher's generations is reported."""
    torch.manual_seed(0)
    teacher = _bytes_teacher(tmp_path)
    data = {
        **DATA,
        "options": {**DATA["options"], "teacher_tokenizer": "bytes", "teacher_block_size": 48},
    }
    cfg = {
        "name": "x",
        "run_dir": str(tmp_path / "seq"),
        "data": data,
        "scheme": {
            "name": "lm_kd",
            "args": {"sequence_level": {"prompt_tokens": 8, "greedy": False}},
        },
        "teacher": teacher,
        "student": LLAMA,
        "train": TRAIN,
    }
    built = build(parse_config(cfg))
    assert "distinct (ratio" in capsys.readouterr().err
    scheme, train = built.scheme, built.data.train
    batch = load_batch(train, torch.arange(4))
    seq = scheme._sequence_batch(batch)
    tok, t_tok = built.data.tokenizer, built.data.teacher_tokenizer
    for i in range(4):
        row = scheme.modules["sequences"].value[i]
        start = int(scheme.modules["sequence_starts"].value[i])
        text = tok.decode([int(t) for t in row if t >= 0])
        prompt = t_tok.decode(train.teacher_ids[i, :8].tolist())
        assert text.startswith(prompt[: len(prompt) // 2])  # the teacher's prompt, re-tokenized
        supervised = (seq["target"][i] >= 0).nonzero().flatten()
        assert int(supervised.min()) == start - 1  # the first continuation token onwards
    result = run_experiment(parse_config(cfg))
    assert result["complete"] and result["test_ppl"] > 1 and "teacher_test_ppl" not in result
    bad = {**cfg, "scheme": {"name": "lm_kd", "args": {"sequence_level": {}, "chunk_size": 4}}}
    with pytest.raises(ConfigError, match="across tokenizers cannot be combined"):
        build(parse_config(bad))


def test_collapsed_teacher_generations_are_warned_about(capsys):
    from distill.llm.generation import report_diversity

    assert report_diversity(torch.full((4, 10), 7)) == pytest.approx(1 / 40)
    assert "collapsed" in capsys.readouterr().err
    report_diversity(torch.arange(40).reshape(4, 10))
    assert "collapsed" not in capsys.readouterr().err


@pytest.mark.parametrize("chunk_size", [0, 8])
def test_lm_kd_with_a_lora_student_from_yaml(tmp_path, teacher_dir, chunk_size):
    """student.peft: only the adapter trains (the base weights stay as loaded), the chunked
    path reads the wrapped decoder, and `distill export --format hf` merges the adapter."""
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from distill.app.artifacts import export_run
    from distill.app.assess import load_run
    from distill.core.checkpoint import load_weights, save_weights
    from distill.core.errors import CheckpointError
    from distill.models import build_model

    torch.manual_seed(0)
    base = build_model("hf_causal_lm", (24,), 300, GPT2["args"])
    save_weights(tmp_path / "base.safetensors", base)
    student = {
        **GPT2,
        "weights": str(tmp_path / "base.safetensors"),
        "peft": {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "lora_dropout": 0.0},
    }
    cfg = _kd(tmp_path, teacher_dir, {"chunk_size": chunk_size}, student=student)
    built = build(parse_config(cfg))
    trainable = sum(p.numel() for p in built.student.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in built.student.parameters()) / 10
    result = run_experiment(parse_config(cfg))
    assert result["complete"] and result["test_ppl"] > 1
    best = tmp_path / "kd" / "checkpoints" / "best.safetensors"
    state, info = load_weights(best)  # the adapter alone, tied to its base file
    assert info["adapter_only"] and state and all("lora_" in k for k in state)
    assert sum(v.numel() for v in state.values()) == trainable
    assert best.stat().st_size < (tmp_path / "base.safetensors").stat().st_size / 5
    model, _, _ = load_run(tmp_path / "kd")
    inner = model.get_base_model().state_dict()
    for key, value in base.state_dict().items():  # the frozen base, untouched by training
        lora_key = key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(inner.get(key, inner.get(lora_key)), value), key
    info = export_run(tmp_path / "kd", "hf")
    assert info["max_abs_logit_diff"] < 1e-5
    merged = AutoModelForCausalLM.from_pretrained(info["path"])
    assert not any("lora" in k for k in merged.state_dict())
    torch.manual_seed(1)  # another base under the adapter: refused, not silently wrong
    save_weights(
        tmp_path / "base.safetensors", build_model("hf_causal_lm", (24,), 300, GPT2["args"])
    )
    with pytest.raises(CheckpointError, match="trained on other base weights"):
        load_run(tmp_path / "kd")
    with pytest.raises(ConfigError, match="student.peft: .*module names end in"):
        bad = {**student, "peft": {"target_modules": ["q_proj"]}}
        build(parse_config(_kd(tmp_path / "b", teacher_dir, {}, student=bad)))
