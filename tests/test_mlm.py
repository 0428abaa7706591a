"""The DistilBERT recipe (mlm_kd) on tiny random BERT masked LMs."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from distill.data.core import DataSplits  # noqa: E402
from distill.embed import SentenceDataset  # noqa: E402
from distill.errors import ConfigError  # noqa: E402
from distill.mlm import MaskedLMDistillation, hf_masked_lm, mask_tokens  # noqa: E402
from distill.objective import Objective  # noqa: E402
from distill.schemes import SchemeContext  # noqa: E402

BERT = {
    "vocab_size": 60,
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 32,
}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mlm")
    hf_masked_lm(**BERT).save_pretrained(path, safe_serialization=True)
    return path


def _data(n: int = 64) -> DataSplits:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 60, (n, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[::2, 9:] = 0
    ids[mask == 0] = 0  # pad id
    d = SentenceDataset(ids, mask, [""] * n)
    return DataSplits("toy", d, d, d, (12,), 0)


def test_bert_masking_rules():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (200, 20), generator=g)
    am = torch.ones_like(ids)
    am[:, 15:] = 0
    ids[:, 0] = 1  # a special token (e.g. [CLS]) is never masked
    inputs, labels = mask_tokens(
        ids,
        am,
        mask_id=3,
        vocab=100,
        special=torch.tensor([1, 3]),
        prob=0.15,
        generator=torch.Generator().manual_seed(1),
    )
    chosen = labels != -100
    assert not chosen[:, 0].any() and not chosen[:, 15:].any()
    assert torch.equal(labels[chosen], ids[chosen])
    rate = chosen[:, 1:15].float().mean()
    assert 0.12 < rate < 0.18
    masked = (inputs[chosen] == 3).float().mean()
    assert 0.72 < masked < 0.88  # ~80 % [MASK]
    assert torch.equal(inputs[~chosen], ids[~chosen])


def test_distilbert_student_init_and_triple_loss(teacher_dir, tmp_path):
    from distill import Trainer, TrainSettings

    teacher = hf_masked_lm(init_from=str(teacher_dir))
    student = hf_masked_lm(init_from=str(teacher_dir), layers=[0, 2])
    assert student.config.num_hidden_layers == 2
    for a, b in zip(
        student.base_model.encoder.layer[1].parameters(),
        teacher.base_model.encoder.layer[2].parameters(),
    ):
        assert torch.equal(a, b)
    data = _data()
    ctx = SchemeContext(
        student=student,
        objective=Objective(),
        data=data,
        teacher=teacher,
        args={"mask_token_id": 3, "attention_weight": 1.0},
    )
    scheme = MaskedLMDistillation(ctx)
    batch = data.train.batch(torch.arange(16))
    losses = scheme.step(batch, 0)
    assert {"kd", "mlm", "cosine", "attention"} <= set(losses)
    again = scheme.step(batch, 0)
    assert float(again["mlm"].detach()) == pytest.approx(float(losses["mlm"].detach()))  # same mask
    before = scheme.evaluate(data.val, batch_size=64, device="cpu")
    settings = TrainSettings(
        epochs=4,
        batch_size=16,
        progress=False,
        monitor="nll",
        optimizer={"name": "adamw", "lr": 0.003},
    )
    Trainer(scheme, data.train, data.val, settings, run_dir=tmp_path / "r").fit()
    metrics = scheme.test_metrics(data.test, batch_size=64)
    assert metrics["student_params"] < metrics["teacher_params"]
    assert 0 <= metrics["test_masked_acc"] <= 1 and before["nll"] > 0


def test_plain_mlm_without_a_teacher_and_errors(teacher_dir):
    student = hf_masked_lm(**BERT)
    ok = MaskedLMDistillation(
        SchemeContext(
            student=student,
            objective=Objective(),
            data=_data(),
            args={"mask_token_id": 3, "kd_weight": 0, "cosine_weight": 0},
        )
    )
    assert set(ok.step(_data().train.batch(torch.arange(8)), 0)) == {"loss", "mlm"}
    with pytest.raises(ConfigError, match="needs a masked-LM teacher"):
        MaskedLMDistillation(
            SchemeContext(
                student=student, objective=Objective(), data=_data(), args={"mask_token_id": 3}
            )
        )
    with pytest.raises(ConfigError, match="layers must be"):
        hf_masked_lm(init_from=str(teacher_dir), layers=[7])


def test_head_on_masked_positions_equals_full_logits(teacher_dir):
    model = hf_masked_lm(init_from=str(teacher_dir)).eval()
    ids = torch.randint(5, 60, (3, 10))
    am = torch.ones_like(ids)
    m = torch.rand(3, 10) < 0.3
    m[0, 0] = True
    z, h, _ = MaskedLMDistillation._forward(model, ids, am, m, False)
    full = model(input_ids=ids, attention_mask=am, output_hidden_states=True)
    torch.testing.assert_close(z, full.logits[m], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(h, full.hidden_states[-1], atol=1e-5, rtol=1e-4)


def test_triple_loss_against_its_formula(teacher_dir):
    import torch.nn.functional as F

    teacher = hf_masked_lm(init_from=str(teacher_dir)).eval()
    student = hf_masked_lm(init_from=str(teacher_dir), layers=[1, 3]).eval()
    data = _data()
    scheme = MaskedLMDistillation(
        SchemeContext(
            student=student,
            objective=Objective(),
            data=data,
            teacher=teacher,
            args={"mask_token_id": 3},
        )
    )
    batch = data.train.batch(torch.arange(8))
    got = scheme.step(batch, 5)
    inputs, labels = scheme._masked(batch, scheme.seed * 1_000_003 + 5)  # the step's mask
    am, m = batch["attention_mask"], labels != -100
    s = student(input_ids=inputs, attention_mask=am, output_hidden_states=True)
    t = teacher(input_ids=inputs, attention_mask=am, output_hidden_states=True)
    p_t = F.softmax(t.logits[m] / 2.0, -1)
    kd = 4.0 * (p_t * (p_t.log() - F.log_softmax(s.logits[m] / 2.0, -1))).sum(-1).mean()
    mlm = F.cross_entropy(s.logits[m], labels[m])
    real = am.bool()
    cos = (1 - F.cosine_similarity(s.hidden_states[-1][real], t.hidden_states[-1][real])).mean()
    for key, want in (("kd", kd), ("mlm", mlm), ("cosine", cos)):
        assert float(got[key].detach()) == pytest.approx(float(want.detach()), rel=1e-4, abs=1e-6)
    assert float(got["loss"].detach()) == pytest.approx(
        float((5 * kd + 2 * mlm + cos).detach()), rel=1e-4
    )
