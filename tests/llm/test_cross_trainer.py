"""`DistillationTrainer` across tokenizers (issue 42): two BPE tokenizers trained offline on
one small corpus with different vocabularies; tokens aligned by character offsets; ULD and
the shared-vocabulary KL at the aligned positions, chunked and whole alike."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from distill.llm.cross_trainer import encode_both, pair_loss, vocabulary_map

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a slow green turtle walks under the bright sun",
    "two plus two is four and four plus four is eight",
    "the dog and the fox are friends in the forest",
] * 20


def _bpe(vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<pad>", "<unk>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>")  # fmt: skip


@pytest.fixture(scope="module")
def toks():
    return _bpe(300), _bpe(420)


def test_positions_align_where_the_next_tokens_cover_the_same_characters(toks):
    s_tok, t_tok = toks
    row = encode_both({"prompt": "the quick brown fox", "completion": " jumps over the lazy dog"},
                      "prompt", s_tok, t_tok, 64)  # fmt: skip
    assert row["input_ids"] != row["teacher_input_ids"]  # the two split the text differently
    pairs = list(zip(row["align_student"], row["align_teacher"]))
    assert len(pairs) >= 3
    for j, i in pairs:  # both predict the same piece of text, inside the completion
        assert row["labels"][j + 1] != -100
        nxt_s = s_tok.decode([row["input_ids"][j + 1]])
        nxt_t = t_tok.decode([row["teacher_input_ids"][i + 1]])
        assert nxt_s == nxt_t
    prompt_tokens = len(s_tok("the quick brown fox", add_special_tokens=False)["input_ids"])
    assert all(x == -100 for x in row["labels"][:prompt_tokens])
    assert row["labels"][-1] == s_tok.eos_token_id  # the end is learned, and aligned
    assert (len(row["input_ids"]) - 2, len(row["teacher_input_ids"]) - 2) in pairs


def test_the_shared_vocabulary_kl_is_zero_for_equal_distributions_and_positive_else(toks):
    s_tok, t_tok = toks
    s_ids, t_ids = vocabulary_map(s_tok, t_tok)
    assert len(s_ids) > 150  # ASCII bytes and common merges (lone bytes >= 128 do not decode)
    z_t = torch.randn(5, len(t_tok))
    z_s = torch.full((5, len(s_tok)), -30.0)
    z_s[:, s_ids] = z_t[:, t_ids]  # the student gives the shared tokens the teacher's logits
    assert float(pair_loss(z_s, z_t, "spans", (s_ids, t_ids), 1.0)) == pytest.approx(0, abs=1e-5)
    assert float(pair_loss(torch.randn(5, len(s_tok)), z_t, "spans", (s_ids, t_ids), 1.0)) > 0.1
    same = torch.randn(5, len(t_tok))
    assert float(pair_loss(same[:, torch.randperm(len(t_tok))], same, "uld", None, 1.0)) < 1e-5


@pytest.mark.parametrize("mode", ["spans", "uld"])
def test_distillation_trainer_across_tokenizers_chunked_or_whole(toks, tmp_path, mode):
    from transformers import TrainingArguments

    from distill import DistillationTrainer
    from distill.models import build_model

    s_tok, t_tok = toks
    torch.manual_seed(0)
    teacher = build_model("hf_causal_lm", (64,), len(t_tok), {"arch": "gpt2", "n_embd": 32,
                                                               "n_layer": 1, "n_head": 2})  # fmt: skip
    student = build_model("hf_causal_lm", (64,), len(s_tok), {"arch": "llama", "hidden_size": 16,
        "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1})  # fmt: skip
    data = [{"prompt": c[:18], "completion": c[18:]} for c in CORPUS[:16]]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
                             report_to=[], use_cpu=True, save_strategy="no")  # fmt: skip
    trainers = [
        DistillationTrainer(model=student, args=args, train_dataset=data, processing_class=s_tok,
                            teacher_model=teacher, teacher_processing_class=t_tok,
                            cross_tokenizer=mode, chunk_size=chunk, kd_weight=1.0)
        for chunk in (0, 7)
    ]  # fmt: skip
    batch = trainers[0].data_collator([trainers[0].train_dataset[i] for i in range(4)])
    assert (batch["align_student"] >= 0).sum() > 10
    losses, grads = [], []
    for t in trainers:
        student.zero_grad()
        loss = t.compute_loss(student, dict(batch))
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in student.parameters()])
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    out = trainers[1].train()
    assert out.global_step == 2 and torch.isfinite(torch.tensor(out.training_loss))
    with pytest.raises(ValueError, match="set lmbda=0"):
        DistillationTrainer(model=student, args=args, train_dataset=data, processing_class=s_tok,
                            teacher_model=teacher, teacher_processing_class=t_tok,
                            cross_tokenizer=mode, lmbda=0.5)  # fmt: skip


def test_dskd_in_the_trainer_trains_its_bridge_and_resumes_it(toks, tmp_path):
    """DSKD's attention and projections train with the student (their own optimizer
    group), are saved in each checkpoint and reloaded on resume."""
    from transformers import TrainingArguments

    from distill import DistillationTrainer
    from distill.models import build_model

    s_tok, t_tok = toks
    torch.manual_seed(0)
    teacher = build_model("hf_causal_lm", (64,), len(t_tok), {"arch": "gpt2", "n_embd": 32,
                                                               "n_layer": 1, "n_head": 2})  # fmt: skip
    student = build_model("hf_causal_lm", (64,), len(s_tok), {"arch": "gpt2", "n_embd": 16,
                                                               "n_layer": 1, "n_head": 2})  # fmt: skip
    data = [{"prompt": c[:18], "completion": c[18:]} for c in CORPUS[:16]]

    def trainer(steps: int) -> DistillationTrainer:
        args = TrainingArguments(output_dir=str(tmp_path), max_steps=steps, report_to=[],
                                 per_device_train_batch_size=4, use_cpu=True, save_steps=2,
                                 learning_rate=1e-2)  # fmt: skip
        return DistillationTrainer(model=student, args=args, train_dataset=data,
                                   processing_class=s_tok, teacher_model=teacher,
                                   teacher_processing_class=t_tok, cross_tokenizer="dskd")  # fmt: skip

    first = trainer(2)
    before = [p.detach().clone() for p in first.dskd.parameters()]
    out = first.train()
    assert out.global_step == 2 and torch.isfinite(torch.tensor(out.training_loss))
    assert any(not torch.equal(a, b) for a, b in zip(before, first.dskd.parameters()))
    saved = tmp_path / "checkpoint-2" / "dskd.safetensors"
    assert saved.is_file()
    from safetensors.torch import load_file

    resumed = trainer(3)  # a new bridge, randomly initialised again
    resumed._load_from_checkpoint(str(tmp_path / "checkpoint-2"))
    state = load_file(str(saved))
    assert all(torch.equal(state[k], v) for k, v in resumed.dskd.state_dict().items())
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert resumed.state.global_step == 3
    with pytest.raises(ValueError, match="set chunk_size=0"):
        DistillationTrainer(model=student, args=TrainingArguments(output_dir=str(tmp_path),
                            report_to=[], use_cpu=True), train_dataset=data,
                            processing_class=s_tok, teacher_model=teacher,
                            teacher_processing_class=t_tok, cross_tokenizer="dskd", chunk_size=4)  # fmt: skip
