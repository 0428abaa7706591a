"""`DistillationTrainer` from a teacher cache (issue 42): built from the teacher over the
training rows on first use, then training holds no teacher; its KD equals the live
teacher's forward KL when k is the whole vocabulary; a cache of other rows is refused."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from test_llm import _hf_models, _Rows


def _args(tmp_path, **kw):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=3, report_to=[],
                             per_device_train_batch_size=4, use_cpu=True, save_strategy="no",
                             **kw)  # fmt: skip


def test_a_trainer_builds_its_cache_then_trains_without_the_teacher(tmp_path):
    from distill import DistillationTrainer

    teacher, student = _hf_models()
    rows = _Rows(12)
    live = DistillationTrainer(model=student, args=_args(tmp_path), train_dataset=rows,
                               teacher_model=teacher, divergence="forward_kl")  # fmt: skip
    cached = DistillationTrainer(model=student, args=_args(tmp_path), train_dataset=rows,
                                 teacher_model=teacher, teacher_cache=str(tmp_path / "c"),
                                 cache_k=64)  # fmt: skip
    assert cached.teacher is None and (tmp_path / "c" / "manifest.json").is_file()
    batch = cached.data_collator([cached.train_dataset[i] for i in (5, 0, 9, 2)])
    assert batch["cache_row"].tolist() == [5, 0, 9, 2]
    student.eval()
    want = live.compute_loss(student, {k: v for k, v in batch.items() if k != "cache_row"})
    got = cached.compute_loss(student, dict(batch))
    # k = the whole vocabulary: the cached KL is the KL (up to float16 storage)
    torch.testing.assert_close(got, want, rtol=2e-3, atol=1e-4)
    student.train()
    again = DistillationTrainer(model=student, args=_args(tmp_path), train_dataset=rows,
                                teacher_cache=str(tmp_path / "c"))  # fmt: skip
    out = again.train()
    assert out.global_step == 3 and torch.isfinite(torch.tensor(out.training_loss))
    with pytest.raises(ValueError, match="built on other training rows"):
        DistillationTrainer(model=student, args=_args(tmp_path), train_dataset=_Rows(8),
                            teacher_cache=str(tmp_path / "c"))  # fmt: skip
    with pytest.raises(ValueError, match="holds no cache; give teacher_model too"):
        DistillationTrainer(model=student, args=_args(tmp_path), train_dataset=rows,
                            teacher_cache=str(tmp_path / "none"))  # fmt: skip
    with pytest.raises(ValueError, match="on-policy .lmbda. and seq_kd need a teacher"):
        DistillationTrainer(model=student, args=_args(tmp_path), train_dataset=rows,
                            teacher_cache=str(tmp_path / "c"), lmbda=0.5)  # fmt: skip
