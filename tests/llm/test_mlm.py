"""The DistilBERT recipe (mlm_kd) on tiny random BERT masked LMs."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from distill.core.errors import ConfigError  # noqa: E402
from distill.data.core import DataSplits  # noqa: E402
from distill.llm.embed import SentenceDataset  # noqa: E402
from distill.llm.mlm import MaskedLMDistillation, hf_masked_lm, mask_tokens  # noqa: E402
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


def _relation_by_loops(x, heads, mask):
    """R[n, h, i, j] by explicit loops, the MiniLM formula written out."""
    n, length, dim = x.shape
    d = dim // heads
    out = torch.zeros(n, heads, length, length)
    for b in range(n):
        for h in range(heads):
            part = x[b, :, h * d : (h + 1) * d]
            for i in range(length):
                scores = torch.tensor([float(part[i] @ part[j]) / d**0.5 for j in range(length)])
                scores[~mask[b].bool()] = float("-inf")
                out[b, h, i] = scores.softmax(0)
    return out


def test_minilm_relation_loss_against_its_formula():
    from distill.losses import LOSSES, minilm_relation_loss

    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 5, 6, generator=g), torch.randn(2, 5, 12, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    r_s, r_t = _relation_by_loops(s, 3, mask), _relation_by_loops(t, 3, mask)
    kl = []
    for b in range(2):
        for h in range(3):
            for i in range(5):
                if mask[b, i]:
                    p, q = r_t[b, h, i], r_s[b, h, i]
                    keep = p > 0
                    kl.append(float((p[keep] * (p[keep] / q[keep]).log()).sum()))
    want = sum(kl) / len(kl)
    got = minilm_relation_loss(s, t, heads=3, mask=mask)
    assert float(got) == pytest.approx(want, rel=1e-5)
    assert float(minilm_relation_loss(t, t.clone(), heads=3, mask=mask)) == pytest.approx(
        0, abs=1e-6
    )
    assert LOSSES["minilm_relation"].fn is minilm_relation_loss
    with pytest.raises(ValueError, match="not divisible"):
        minilm_relation_loss(s, t, heads=4)


def test_relation_transfer_across_width_heads_and_depth(teacher_dir):
    """MiniLMv2: a narrower student with other head count, Q-Q/K-K/V-V relations."""
    from distill.llm.mlm import qkv_module_names
    from distill.losses import minilm_relation_loss

    teacher = hf_masked_lm(init_from=str(teacher_dir)).eval()  # 32 wide, 2 heads, 4 layers
    student = hf_masked_lm(
        **{**BERT, "hidden_size": 24, "num_attention_heads": 3, "num_hidden_layers": 2}
    ).eval()  # no dropout
    data = _data()
    args = {
        "mask_token_id": 3,
        "kd_weight": 0,
        "mlm_weight": 0,
        "cosine_weight": 0,
        "relation_weight": 1.0,
        "relations": ["qq", "kk", "vv"],
    }
    ctx = dict(student=student, objective=Objective(), data=data, teacher=teacher)
    with pytest.raises(ConfigError, match="relation_heads"):
        MaskedLMDistillation(SchemeContext(**ctx, args=args))
    scheme = MaskedLMDistillation(
        SchemeContext(**ctx, args={**args, "relation_heads": 4, "teacher_relation_layer": 2})
    )
    names = qkv_module_names(teacher, 2)
    assert names["v"] == "bert.encoder.layer.2.attention.self.value"
    batch = data.train.batch(torch.arange(8))
    got = scheme.step(batch, 1)
    # the same number from the projections computed by hand on the step's masked inputs
    inputs, _ = scheme._masked(batch, scheme.seed * 1_000_003 + 1)
    am = batch["attention_mask"]
    from distill.taps import Tap

    s_names = qkv_module_names(student, -1)
    with Tap(student, s_names.values()) as ts, Tap(teacher, names.values()) as tt:
        student(input_ids=inputs, attention_mask=am)
        teacher(input_ids=inputs, attention_mask=am)
        want = (
            sum(
                minilm_relation_loss(ts.feats[s_names[k]], tt.feats[names[k]], heads=4, mask=am)
                for k in "qkv"
            )
            / 3
        )
    assert float(got["relation"].detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    got["loss"].backward()
    value = student.bert.encoder.layer[1].attention.self.value.weight
    assert value.grad is not None and value.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_minilm_relation_reads_one_third_of_a_fused_projection():
    from distill.losses import minilm_relation_loss

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 6, 3 * 8, generator=g), torch.randn(2, 6, 3 * 12, generator=g)
    for i, part in enumerate("qkv"):
        want = minilm_relation_loss(
            s[..., i * 8 : (i + 1) * 8], t[..., i * 12 : (i + 1) * 12], heads=4
        )
        assert float(minilm_relation_loss(s, t, heads=4, fused=part)) == pytest.approx(float(want))
    with pytest.raises(ValueError, match="fused"):
        minilm_relation_loss(s, t, heads=4, fused="x")
