"""Several teachers in `DistillationTrainer` (issue 42): a fixed mixture and routing by a
data column, each teacher's KD checked against its formula and logged as kd_<name>."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from test_llm import GPT2, _hf_models, _Rows

from distill.llm.lm_loss import lm_losses_from_logits
from distill.models import build_model


def _rows(n: int = 12) -> list[dict]:
    return [{**_Rows(n)[i], "domain": "code" if i % 3 else "prose"} for i in range(n)]


def _teachers():
    torch.manual_seed(1)
    other = build_model("hf_causal_lm", (16,), 64, GPT2["args"])
    teacher, student = _hf_models()
    return {"code": teacher, "prose": other}, student


def _args(tmp_path, **kw):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(tmp_path), max_steps=3, report_to=[], use_cpu=True,
                             per_device_train_batch_size=4, save_strategy="no", **kw)  # fmt: skip


def _kd(teacher, student, batch, n, rows=None):
    rows = torch.arange(len(batch["labels"])) if rows is None else rows
    with torch.no_grad():
        z_t = teacher(input_ids=batch["input_ids"][rows]).logits[:, :-1]
    z_s = student(input_ids=batch["input_ids"][rows]).logits[:, :-1]
    labels = batch["labels"][rows][:, 1:]
    return lm_losses_from_logits(z_s, z_t, labels, divergence="forward_kl", num_tokens=n)[0]


@pytest.mark.parametrize("how", ["mixture", "column"])
def test_routed_and_mixed_teachers_in_the_trainer(tmp_path, how):
    from distill import DistillationTrainer

    teachers, student = _teachers()
    student.eval()  # no dropout: the trainer's logits and these are the same
    extra = ({"teacher_weights": {"code": 3, "prose": 1}} if how == "mixture"
             else {"route_column": "domain"})  # fmt: skip
    trainer = DistillationTrainer(model=student, args=_args(tmp_path, logging_steps=1),
                                  train_dataset=_rows(), teachers=teachers, kd_weight=1.0,
                                  task_weight=0.0, divergence="forward_kl", **extra)  # fmt: skip
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
    n = (batch["labels"][:, 1:] != -100).sum()
    loss = trainer.compute_loss(student, dict(batch))
    if how == "mixture":
        want = 0.75 * _kd(teachers["code"], student, batch, n) + 0.25 * _kd(
            teachers["prose"], student, batch, n
        )
    else:
        code = torch.tensor([i % 3 != 0 for i in range(6)])
        want = _kd(teachers["code"], student, batch, n, code.nonzero().flatten()) + _kd(
            teachers["prose"], student, batch, n, (~code).nonzero().flatten()
        )
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    student.train()
    trainer.train()
    logged = [row for row in trainer.state.log_history if "kd_code" in row]
    assert logged and all("kd_prose" in row for row in logged)


def test_routing_refusals(tmp_path):
    from distill import DistillationTrainer

    teachers, student = _teachers()

    def refused(match: str, rows=None, **kw) -> None:
        with pytest.raises(ValueError, match=match):
            DistillationTrainer(model=student, args=_args(tmp_path), train_dataset=rows or _rows(),
                                teachers=teachers, **kw)  # fmt: skip

    bad = [{**r, "domain": "poetry"} for r in _rows(3)] + _rows(9)
    refused(r"names \['poetry'\] \(3 rows\), which are not among", rows=bad, route_column="domain")
    refused("teacher_weights .* or route_column", teacher_weights={"code": 1, "prose": 1},
            route_column="domain")  # fmt: skip
    refused("cannot be combined with lmbda", route_column="domain", lmbda=0.5)
    refused("give a weight >= 0 for each", teacher_weights={"code": 1})
