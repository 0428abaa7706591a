"""SSKD (Xu et al. 2020): transforms, error-level ranking, the two phases, the loss formula."""

import pytest
import torch
import torch.nn.functional as F
from helpers import synthetic_cfg

from distill.app.build import build
from distill.core.checkpoint import save_weights
from distill.core.config import parse_config
from distill.core.errors import ConfigError
from distill.losses import kd_loss
from distill.schemes.sskd import kept_rows, similarities, transformed_copies


def test_transformed_copies():
    img = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
    r90, r180, r270 = transformed_copies(img)
    assert torch.equal(r90[0, 0], torch.rot90(img[0, 0], 1))
    assert torch.equal(r180[0, 0], img[0, 0].flip(0).flip(1))
    assert torch.equal(torch.rot90(r270, 1, dims=(-2, -1)), img)
    sig = torch.tensor([[[1.0, 2.0, 3.0]]])
    flipped, negated, both = transformed_copies(sig)
    assert flipped.tolist() == [[[3.0, 2.0, 1.0]]] and negated.tolist() == [[[-1.0, -2.0, -3.0]]]
    assert both.tolist() == [[[-3.0, -2.0, -1.0]]]
    with pytest.raises(ValueError, match="images .* or signals"):
        transformed_copies(torch.zeros(4, 8))


def test_similarities_and_error_level_ranking():
    emb = torch.randn(8, 5)  # 2 originals, then 3 x 2 copies
    sim = similarities(emb, 2)
    for row in range(6):
        for col in range(2):
            want = F.cosine_similarity(emb[2 + row], emb[col], dim=0)
            assert sim[row, col].item() == pytest.approx(want.item(), abs=1e-6)
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.5, 0.4, 0.1]])
    truth = torch.tensor([0, 2, 2, 2])  # ranks of the truth: 0, 1, 0, 2
    assert kept_rows(scores, truth, 1.0).tolist() == [0, 1, 2, 3]
    assert kept_rows(scores, truth, 0.5).tolist() == [0, 1, 2]  # the best of the 2 wrong ones
    assert kept_rows(scores, truth, 0.0).tolist() == [0, 2]


def _scheme(tmp_path, **args):
    def spec(channels):
        return {"name": "convnet", "args": {"channels": channels}}

    teacher_cfg = synthetic_cfg(tmp_path / "t", student=spec([8, 8]))
    teacher_cfg["data"] = {"name": "digits"}
    save_weights(tmp_path / "t.safetensors", build(parse_config(teacher_cfg)).student)
    cfg = synthetic_cfg(tmp_path / "r", student=spec([4, 4]))
    cfg["data"] = {"name": "digits"}
    cfg["scheme"] = {
        "name": "sskd",
        "args": {"student_feature": "head.1:input", "teacher_feature": "head.1:input", **args},
    }
    cfg["teacher"] = {**spec([8, 8]), "weights": str(tmp_path / "t.safetensors")}
    return build(parse_config(cfg))


def test_phase_one_trains_only_the_teachers_head(tmp_path):
    built = _scheme(tmp_path, head_steps=5)
    scheme = built.scheme
    batch = built.data.train.batch(torch.arange(16))
    out = scheme.step(batch, 0)
    out["loss"].backward()
    assert set(out) == {"loss", "teacher_head"}
    assert all(p.grad is None for p in built.student.parameters())
    assert all(p.grad is None for p in built.teacher.parameters())
    assert all(p.grad is not None for p in scheme.teacher_head.parameters())


def test_phase_two_is_the_papers_sum_with_everything_kept(tmp_path):
    built = _scheme(tmp_path, head_steps=1, ss_ratio=1.0, tf_ratio=1.0)
    scheme = built.scheme
    batch = built.data.train.batch(torch.arange(12))
    out = scheme.step(batch, 3)
    out["loss"].backward()
    assert all(p.grad is None for p in scheme.teacher_head.parameters())  # frozen now
    assert all(p.grad is not None for p in scheme.student_head.parameters())
    # rebuild each component from the models directly
    x, n = batch["input"], 12
    both = torch.cat([x, *transformed_copies(x)])
    scheme.teacher_head.eval()
    with torch.no_grad():
        t = scheme._t_tap.run(both)
        t_sim = similarities(scheme.teacher_head(t.feats["head.1:input"]), n)
        s = scheme._s_tap.run(both)
        s_sim = similarities(scheme.student_head(s.feats["head.1:input"]), n)
    torch.testing.assert_close(out["kd"], kd_loss(s.logits[:n], t.logits[:n], temperature=4.0))
    torch.testing.assert_close(out["tf"], kd_loss(s.logits[n:], t.logits[n:], temperature=4.0))
    torch.testing.assert_close(out["ss"], kd_loss(s_sim, t_sim, temperature=0.5))
    task = F.cross_entropy(s.logits[:n], batch["target"])
    torch.testing.assert_close(out["task"], task)
    want = task + 0.9 * out["kd"] + 10.0 * out["ss"] + 2.7 * out["tf"]
    torch.testing.assert_close(out["loss"].detach(), want)


def test_sskd_refuses_tabular_inputs_and_terms(tmp_path):
    cfg = synthetic_cfg(tmp_path / "r")
    teacher = {"name": "mlp", "args": {"hidden": [16]}}
    save_weights(
        tmp_path / "t.safetensors", build(parse_config(synthetic_cfg(tmp_path / "t"))).student
    )
    cfg.update(
        scheme={"name": "sskd", "args": {"student_feature": "head", "teacher_feature": "head"}},
        teacher={**teacher, "weights": str(tmp_path / "t.safetensors")},
    )
    with pytest.raises(ConfigError, match="sskd transforms images .* or signals"):
        build(parse_config(cfg))
