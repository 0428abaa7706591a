"""Metrics, robustness and cost, each on a case with a known answer."""

import json
import math

import pytest
import torch
from helpers import synthetic_cfg

from distill import metrics as M
from distill.app.assess import assess
from distill.app.run import run_experiment
from distill.core.config import parse_config
from distill.profile import count_flops
from distill.robustness import fgsm, pgd, robustness_report, shift


def test_topk_nll_brier():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0]])
    y = torch.tensor([1, 1, 0])
    assert M.topk_accuracy(logits, y, 1) == pytest.approx(1 / 3)
    assert M.topk_accuracy(logits, y, 2) == pytest.approx(2 / 3)
    assert M.topk_accuracy(logits, y, 10) == 1.0  # k larger than the class count
    uniform = torch.zeros(4, 5)
    assert M.nll(uniform, torch.arange(4)) == pytest.approx(math.log(5))
    assert M.brier_score(uniform, torch.arange(4)) == pytest.approx(1 - 1 / 5)
    assert M.brier_score(torch.eye(3) * 100, torch.arange(3)) == pytest.approx(0.0, abs=1e-6)


def test_ece_zero_for_a_calibrated_predictor_and_conf_when_always_wrong():
    # 10 predictions with confidence 0.8 of which 8 are right: perfectly calibrated.
    p = torch.tensor([0.8, 0.2])
    logits = p.log().repeat(10, 1)
    y = torch.tensor([0] * 8 + [1] * 2)
    assert M.expected_calibration_error(logits, y) == pytest.approx(0.0, abs=1e-6)
    assert M.expected_calibration_error(logits, torch.ones(10, dtype=torch.long)) == pytest.approx(
        0.8, abs=1e-6
    )
    rel = M.reliability(logits, y, bins=10)
    assert rel["count"][7] == 10 and rel["accuracy"][7] == pytest.approx(0.8)  # bin (0.7, 0.8]


def test_fidelity_of_a_student_identical_to_its_teacher():
    t = torch.randn(20, 6)
    assert M.agreement(t.clone(), t) == 1.0
    assert M.teacher_kl(t.clone(), t) == pytest.approx(0.0, abs=1e-6)
    assert M.teacher_kl(torch.zeros(20, 6), t) > 0


def test_per_class_and_negative_transfer():
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    y = torch.tensor([0, 0, 1, 1])
    assert M.per_class_accuracy(logits, y) == [1.0, 0.5]
    missing = M.per_class_accuracy(logits[:2], y[:2], num_classes=3)
    assert missing[0] == 1.0 and math.isnan(missing[1]) and math.isnan(missing[2])
    worse = M.negative_transfer([0.9, 0.5, float("nan")], [0.8, 0.7, 0.1])
    assert [w["class"] for w in worse] == [1] and worse[0]["change"] == pytest.approx(-0.2)


def test_fgsm_on_a_linear_model_follows_the_formula():
    model = torch.nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [-1.0, 1.0, 0.0]]))
    x, y = torch.tensor([[0.1, 0.2, 0.3]]), torch.tensor([0])
    p = torch.softmax(model(x), -1)
    grad = (p - torch.tensor([[1.0, 0.0]])) @ model.weight  # d CE / d x for a linear model
    assert torch.allclose(fgsm(model, x, y, 0.1), x + 0.1 * grad.sign())
    adv = pgd(model, x, y, 0.1, steps=20, generator=torch.Generator().manual_seed(0))
    assert (adv - x).abs().max() <= 0.1 + 1e-6
    assert torch.allclose(adv, x + 0.1 * grad.sign(), atol=1e-5)  # linear model: the corner


def test_robustness_report_and_shift():
    assert torch.equal(
        shift(torch.tensor([[[1.0, 2.0, 3.0]]]), 1), torch.tensor([[[0.0, 1.0, 2.0]]])
    )
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 3))
    x, y = torch.randn(30, 1, 8), torch.randint(0, 3, (30,))
    report = robustness_report(model, x, y, eps=(0.0, 0.5))
    assert report["fgsm 0.0"] == report["clean"] and report["pgd 0.5"] <= report["clean"]
    assert {"noise 0.1", "shift 2", "scale 0.7"} <= set(report)


def test_flop_count_of_a_linear_layer():
    assert count_flops(torch.nn.Linear(8, 4), (8,)) == 2 * 8 * 4


def test_eval_end_to_end(tmp_path):
    result = run_experiment(parse_config(synthetic_cfg(tmp_path / "r", train={"epochs": 2})))
    scratch = run_experiment(parse_config(synthetic_cfg(tmp_path / "s", train={"epochs": 1})))
    out = assess(
        tmp_path / "r", teacher_dir=tmp_path / "s", scratch_dir=tmp_path / "s", eps=(0.05,)
    )
    assert out["metrics"]["top1"] == pytest.approx(result["test_acc"])
    assert out["teacher"]["top1"] == pytest.approx(scratch["test_acc"])
    assert (
        0 <= out["metrics"]["agreement"] <= 1 and out["cost"]["params"] == 8 * 16 + 16 + 16 * 3 + 3
    )
    assert json.loads((tmp_path / "r/eval.json").read_text())["cost"]["flops"] == 2 * (
        8 * 16 + 16 * 3
    )


def test_negative_transfer_needs_a_significant_paired_drop():
    from scipy.stats import binomtest

    targets = torch.tensor([0] * 100 + [1] * 100 + [2] * 100)
    scratch = torch.ones(300, dtype=torch.bool)
    student = scratch.clone()
    student[:2] = False  # class 0: 2 of 100 worse -> noise
    student[100:130] = False  # class 1: 30 of 100 worse -> real
    rows = M.significant_drops(student, scratch, targets)
    assert [r["class"] for r in rows] == [1]
    # exact McNemar: 30 discordant pairs, all against the student
    assert rows[0]["p_value"] == pytest.approx(binomtest(30, 30, 0.5, alternative="greater").pvalue)
    assert rows[0]["change"] == pytest.approx(-0.30) and rows[0]["samples"] == 100
    # Holm: with 3 classes the smallest p must pass alpha / 3
    student2 = scratch.clone()
    student2[100:104] = False  # p = 1/16 = 0.0625 > 0.05 / 3
    assert M.significant_drops(student2, scratch, targets) == []
    # a margin in accuracy: a significant drop of 30 points passes 0.2, not 0.4
    assert M.significant_drops(student, scratch, targets, margin=0.2)
    assert not M.significant_drops(student, scratch, targets, margin=0.4)
    # an improvement is never flagged, however significant
    assert not M.significant_drops(scratch, student, targets)


def test_attacks_stay_inside_the_data_range():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    x = torch.tensor([[0.0, 1.0, 0.5, 0.98]]).reshape(1, 1, 4)
    y = torch.tensor([1])
    for adv in (
        fgsm(model, x, y, 0.3, clamp=(0.0, 1.0)),
        pgd(model, x, y, 0.3, clamp=(0.0, 1.0), generator=torch.Generator().manual_seed(0)),
    ):
        assert adv.min() >= 0.0 and adv.max() <= 1.0 and (adv - x).abs().max() <= 0.3 + 1e-6
    assert fgsm(model, x, y, 0.3).max() > 1.0 or fgsm(model, x, y, 0.3).min() < 0.0


def test_eval_of_images_clips_attacks_and_says_how_many_samples(tmp_path):
    from distill.app.assess import format_assessment

    cfg = synthetic_cfg(tmp_path / "r", train={"epochs": 1})
    cfg["data"] = {"name": "digits"}
    cfg["student"] = {"name": "mlp", "args": {"hidden": [16]}}
    run_experiment(parse_config(cfg))
    out = assess(tmp_path / "r", eps=(0.1,), robustness_samples=100)
    assert out["robustness_samples"] == 100 and out["robustness_clamp"] == [0.0, 1.0]
    assert "robustness (100 of 450 test samples, attacks clipped to [0, 1])" in format_assessment(
        out
    )


def test_classification_metrics_are_topk_accuracy_and_nll_and_predict_batches_agree():
    from distill.data.core import ArrayDataset
    from distill.evaluate import classification_metrics, predict

    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(50, 7, generator=g), torch.randint(0, 7, (50,), generator=g)
    got = classification_metrics(logits, y)
    assert got == {"acc": M.topk_accuracy(logits, y, 1), "nll": M.nll(logits, y)}
    assert isinstance(got["acc"], float) and isinstance(got["nll"], float)
    data = ArrayDataset(torch.randn(30, 4, generator=g), torch.randint(0, 3, (30,), generator=g))
    model = torch.nn.Linear(4, 3)
    one, several = predict(model, data, batch_size=64), predict(model, data, batch_size=7)
    assert torch.allclose(one[0], several[0], atol=1e-6) and torch.equal(one[1], several[1])
