"""Scheme `dense`: train a detector or a segmentation network, alone or from a teacher.

The task loss replaces the objective's cross-entropy: the FCOS loss for `task: detection`
(distill.dense.detection), per-pixel cross-entropy for `task: segmentation`. Distillation is
the objective's terms, exactly as in `offline` (the frozen teacher runs on the same batch and
terms name the layers they read): e.g. `det_cls_kd`, `det_box_kd`, `det_obj_kd` on the
packed detector outputs (`logits`), `fg_imitation`, `cwd`, `mgd`, `adaptive_levels` on
pyramid features, `pixel_kd`, `pairwise_affinity`, `cirkd` for segmentation.

Validation reports mAP (0.5:0.95, 0.5, 0.75) or mIoU and pixel accuracy, and
`train.monitor: map` / `miou` picks the best epoch by them; the test metrics add the
teacher's, the parameter counts and the CPU latency of one batch.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.core.settings import Strict
from distill.data import load_batch
from distill.dense.detection import detection_loss, mean_average_precision, postprocess
from distill.dense.segmentation import confusion, segmentation_metrics
from distill.schemes.base import SchemeBase, SchemeContext, parse_args
from distill.taps import Tap


class DenseArgs(Strict):
    task: Literal["detection", "segmentation"] = "detection"
    box_weight: float = Field(1.0, ge=0)  # detection: GIoU term of the task loss
    ctr_weight: float = Field(1.0, ge=0)  # detection: centerness term
    level_split: float = Field(18.0, gt=0)  # detection: boxes with a longer side go to stride 8
    radius: float = Field(1.5, gt=0)  # detection: centre-sampling radius, in strides
    score_threshold: float = Field(0.05, ge=0, lt=1)
    nms_iou: float = Field(0.6, gt=0, le=1)
    max_detections: int = Field(50, ge=1)


class Dense(SchemeBase):
    """See the module docstring."""

    Args = DenseArgs

    def __init__(self, ctx: SchemeContext):
        args = parse_args(DenseArgs, ctx.args, "dense")
        teacher = ctx.teacher
        super().__init__(ctx.student, ctx.objective, frozen=[teacher] if teacher else [])
        self.args, self.teacher = args, teacher
        self.num_classes = ctx.data.num_classes
        if args.task == "detection":
            for role, m in (("student", ctx.student), ("teacher", teacher)):
                if m is not None and not hasattr(m, "decode"):
                    raise ConfigError(
                        f"{role}: scheme dense with task detection needs a detector (model "
                        f"'detector', or one with points/strides buffers and a decode method)"
                    )
        if any(t.needs_teacher for t in ctx.objective.terms) and teacher is None:
            raise ConfigError("objective.terms read a teacher; give the dense scheme a teacher")
        self._student_tap = Tap(ctx.student, ctx.objective.student_layers(), "student")
        self._teacher_tap = (
            Tap(teacher, ctx.objective.teacher_layers(), "teacher") if teacher else None
        )

    def task_losses(self, out: Tensor, target: Tensor) -> dict[str, Tensor]:
        if self.args.task == "segmentation":
            return {"task": F.cross_entropy(out.float(), target.long(), ignore_index=-1)}
        m = self.student
        parts = detection_loss(
            out,
            target,
            m.points,
            m.strides,
            m.levels,
            split=self.args.level_split,
            radius=self.args.radius,
        )
        task = (
            parts["cls"] + self.args.box_weight * parts["box"] + self.args.ctr_weight * parts["ctr"]
        )
        return {"task": task, **{f"task_{k}": v for k, v in parts.items()}}

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        student = self._student_tap.run(batch["input"])
        teacher = None
        if self._teacher_tap is not None:
            with torch.no_grad():
                teacher = self._teacher_tap.run(batch["input"]).detach()
        out = self.task_losses(student.logits, batch["target"])
        kd, components = self.objective(student, teacher, batch, step, include_task=False)
        task_w = self.objective.task_weight.at(step)
        return {"loss": task_w * out["task"] + kd, **out, **components}

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _predict(self, model: nn.Module, dataset, batch_size: int, device) -> dict[str, float]:
        was = model.training
        model.eval()
        dets, targets = [], []
        conf = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
        for idx in torch.arange(len(dataset)).split(batch_size):
            batch = load_batch(dataset, idx)
            out = model(batch["input"].to(device)).float()
            if self.args.task == "segmentation":
                conf += confusion(out.argmax(1).cpu(), batch["target"], self.num_classes)
                continue
            boxes, scores = model.decode(out)
            dets += postprocess(
                boxes.cpu(),
                scores.cpu(),
                score_threshold=self.args.score_threshold,
                iou=self.args.nms_iou,
                max_detections=self.args.max_detections,
            )
            targets.append(batch["target"])
        model.train(was)
        if self.args.task == "segmentation":
            return segmentation_metrics(conf)
        return mean_average_precision(dets, torch.cat(targets), self.num_classes)

    def evaluate(self, dataset, *, batch_size: int, device) -> dict[str, float]:
        return self._predict(self.student, dataset, min(batch_size, 256), device)

    def test_metrics(self, dataset, *, batch_size: int, device="cpu") -> dict[str, float]:
        out = {
            f"test_{k}": v
            for k, v in self.evaluate(dataset, batch_size=batch_size, device=device).items()
        }
        sample = load_batch(dataset, torch.arange(min(32, len(dataset))))["input"]
        models = [("", self.student)] + ([("teacher_", self.teacher)] if self.teacher else [])
        for prefix, model in models:
            if prefix:
                metrics = self._predict(model, dataset, min(batch_size, 256), device)
                out.update({f"teacher_test_{k}": v for k, v in metrics.items()})
            out[f"{prefix}params"] = float(sum(p.numel() for p in model.parameters()))
            out[f"{prefix}latency_ms_b32_cpu"] = cpu_latency_ms(model, sample)
        return out


def cpu_latency_ms(model: nn.Module, x: Tensor, repeats: int = 20) -> float:
    """Median CPU time of one forward pass on a batch shaped like `x` (the raw network, no
    NMS), with the process's threads (distill.profile.latency_ms)."""
    from distill.profile import latency_ms

    device = next(model.parameters()).device
    try:
        timing = latency_ms(
            model.cpu(),
            tuple(x.shape[1:]),
            batch_size=len(x),
            warmup=3,
            repeats=repeats,
            threads=None,
        )
    finally:
        model.to(device)
    return timing["p50_ms"]


__all__ = ["Dense", "DenseArgs", "cpu_latency_ms"]
