"""Text data as users hold it in DistillationTrainer: plain text, prompt/completion and chat
messages, tokenised with the processing_class; which tokens carry loss, token by token,
for two tokenizers with different chat templates."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from distill.llm.chat import PadCollator, tokenize_dataset  # noqa: E402

WORDS = ["hello", "how", "are", "you", "fine", "thanks", "what", "is", "two", "plus", "four"]
CHATML = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> "
    "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)
BRACKETS = (
    "{% for m in messages %}[{{ m['role'] | upper }}] {{ m['content'] }} [END] "
    "{% endfor %}{% if add_generation_prompt %}[ASSISTANT] {% endif %}"
)
CHAT = [
    {"role": "system", "content": "you are fine"},
    {"role": "user", "content": "hello how are you"},
    {"role": "assistant", "content": "fine thanks"},
    {"role": "user", "content": "what is two plus two"},
    {"role": "assistant", "content": "four"},
]


def _tokenizer(kind: str):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    marks = (
        ["<|im_start|>", "<|im_end|>", "system", "user", "assistant"]
        if kind == "chatml"
        else ["[SYSTEM]", "[USER]", "[ASSISTANT]", "[END]"]
    )
    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2}
    for w in marks + WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>"
    )
    fast.chat_template = CHATML if kind == "chatml" else BRACKETS
    return fast


def _pair(vocab: int):
    """A tiny GPT-2 teacher (16 wide) and student (8 wide) over `vocab` tokens, seeded."""
    from distill.models import build_model

    arch = {"arch": "gpt2", "n_layer": 1, "n_head": 2}
    torch.manual_seed(0)
    teacher = build_model("hf_causal_lm", (32,), vocab, {**arch, "n_embd": 16})
    return teacher, build_model("hf_causal_lm", (32,), vocab, {**arch, "n_embd": 8})


def _cpu_args(tmp_path, **more):
    """Trainer arguments for a few CPU steps, nothing saved or reported."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, report_to=[], use_cpu=True,
        save_strategy="no", **more,
    )  # fmt: skip


def _supervised(tok, row) -> list[str]:
    return [
        tok.convert_ids_to_tokens(i) for i, y in zip(row["input_ids"], row["labels"]) if y != -100
    ]


@pytest.mark.parametrize("kind", ["chatml", "brackets"])
def test_only_assistant_tokens_carry_loss(kind):
    tok = _tokenizer(kind)
    (row,) = tokenize_dataset([{"messages": CHAT}], tok)
    end = "<|im_end|>" if kind == "chatml" else "[END]"
    assert _supervised(tok, row) == ["fine", "thanks", end, "four", end]
    tokens = tok.convert_ids_to_tokens(row["input_ids"])
    assert tokens.count("fine") == 2  # the system prompt's "fine" carries no loss
    assert row["labels"][tokens.index("fine")] == -100
    assert len(row["input_ids"]) == len(row["labels"]) == len(row["attention_mask"])


def test_prompt_completion_and_text_masks():
    tok = _tokenizer("chatml")
    prompt, text = (
        tokenize_dataset([{"prompt": "what is two plus two", "completion": "four"}], tok),
        tokenize_dataset([{"text": "hello how are you"}], tok),
    )
    assert _supervised(tok, prompt[0]) == ["four", "</s>"]
    assert _supervised(tok, text[0]) == ["hello", "how", "are", "you", "</s>"]


def test_a_tokenizer_without_a_chat_template_is_refused():
    tok = _tokenizer("chatml")
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        tokenize_dataset([{"messages": CHAT}], tok)
    with pytest.raises(ValueError, match="give input_ids"):
        tokenize_dataset([{"question": "x"}], tok)


def test_collator_pads_ids_mask_and_labels():
    tok = _tokenizer("chatml")
    rows = tokenize_dataset([{"text": "hello"}, {"text": "hello how are you"}], tok)
    batch = PadCollator(tok)(rows)
    assert batch["input_ids"].shape == (2, 5)
    assert batch["input_ids"][0, 2:].tolist() == [0, 0, 0]
    assert batch["attention_mask"][0].tolist() == [1, 1, 0, 0, 0]
    assert batch["labels"][0, 2:].tolist() == [-100] * 3


def test_distillation_trainer_takes_a_chat_dataset_and_processing_class(tmp_path):
    datasets = pytest.importorskip("datasets")

    from distill import DistillationTrainer

    tok = _tokenizer("chatml")
    teacher, student = _pair(len(tok))
    data = datasets.Dataset.from_list([{"messages": CHAT}] * 8)
    args = _cpu_args(tmp_path, max_steps=2)
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=data, processing_class=tok, teacher_model=teacher
    )
    assert trainer.train_dataset.column_names == ["input_ids", "attention_mask", "labels"]
    out = trainer.train()
    assert out.global_step == 2 and torch.isfinite(torch.tensor(out.training_loss))
    with pytest.raises(ValueError, match="pass processing_class"):
        DistillationTrainer(model=student, args=args, train_dataset=data, teacher_model=teacher)


@pytest.mark.parametrize("conversational", [False, True])
def test_distillation_trainer_on_prompts_alone_as_trl_users_write_them(tmp_path, conversational):
    """Issue 42: prompt-only data (string or conversational prompts) trains on-policy, the
    student writing and the teacher scoring; without generation it is refused clearly."""
    datasets = pytest.importorskip("datasets")

    from distill import DistillationTrainer

    tok = _tokenizer("chatml")
    teacher, student = _pair(len(tok))
    prompt = CHAT[:1] if conversational else "hello how are you"
    data = datasets.Dataset.from_list([{"prompt": prompt}] * 8)
    args = _cpu_args(tmp_path, max_steps=2)
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=data, processing_class=tok,
        teacher_model=teacher, lmbda=1.0, max_new_tokens=4,
    )  # fmt: skip
    row = trainer.train_dataset[0]
    assert all(y == -100 for y in row["labels"])  # nothing to learn until it is completed
    if conversational:  # rendered with the generation prompt: the assistant writes next
        assert tok.convert_ids_to_tokens(row["input_ids"])[-1] == "assistant"
    out = trainer.train()
    assert out.global_step == 2 and torch.isfinite(torch.tensor(out.training_loss))
    with pytest.raises(ValueError, match="prompts alone.*lmbda=1.0"):
        DistillationTrainer(
            model=student, args=args, train_dataset=data, processing_class=tok,
            teacher_model=teacher, lmbda=0.5,
        )  # fmt: skip


def test_extra_columns_go_to_the_users_own_collator(tmp_path):
    datasets = pytest.importorskip("datasets")

    from distill import DistillationTrainer

    tok = _tokenizer("chatml")
    teacher, student = _pair(len(tok))
    ids = tok("hello how are you")["input_ids"]
    data = datasets.Dataset.from_list([{"tokens": ids, "source": "web"}] * 8)
    seen = []

    def collate(rows):
        seen.append({r["source"] for r in rows})
        x = torch.tensor([r["tokens"] for r in rows])
        return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()}

    args = _cpu_args(tmp_path, max_steps=1, remove_unused_columns=False)
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=data, data_collator=collate,
        teacher_model=teacher,
    )  # fmt: skip
    assert trainer.train().global_step == 1 and seen and all(s == {"web"} for s in seen)
    with pytest.raises(ValueError, match="data_collator of yours"):
        DistillationTrainer(model=student, args=args, train_dataset=data, teacher_model=teacher)


def test_a_streamed_chat_dataset_is_tokenised_as_it_is_read():
    datasets = pytest.importorskip("datasets")
    tok = _tokenizer("chatml")
    rows = [{"messages": CHAT}, {"messages": CHAT[:3]}]
    stream = datasets.Dataset.from_list(rows).to_iterable_dataset()
    got = list(tokenize_dataset(stream, tok))
    want = tokenize_dataset(rows, tok)
    assert [r["labels"] for r in got] == [r["labels"] for r in want]
    assert [r["input_ids"] for r in got] == [r["input_ids"] for r in want]


def test_distillation_trainer_trains_on_a_streamed_chat_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")

    from distill import DistillationTrainer

    tok = _tokenizer("chatml")
    teacher, student = _pair(len(tok))
    stream = datasets.Dataset.from_list([{"messages": CHAT}] * 8).to_iterable_dataset()
    args = _cpu_args(tmp_path, max_steps=3)
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=stream, processing_class=tok, teacher_model=teacher
    )
    out = trainer.train()
    assert out.global_step == 3 and torch.isfinite(torch.tensor(out.training_loss))
