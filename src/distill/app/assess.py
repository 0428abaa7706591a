"""`distill eval`: everything a user needs to decide whether to ship a trained student.

Task quality, fidelity to the teacher, calibration, robustness, per-class accuracy against
the teacher and a scratch baseline (negative transfer), and cost. Reads a run dir (its
config.yaml and best weights), writes `eval.json` there.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill.app.build import load_data, weights_path
from distill.app.stages import final_stage_dir
from distill.core.checkpoint import atomic_write_text
from distill.core.config import ModelConfig, load_config
from distill.core.errors import ConfigError
from distill.data import DataSplits
from distill.evaluate import predict_logits, targets_of
from distill.metrics import classification_report, significant_drops
from distill.models import build_model
from distill.profile import count_flops, count_parameters, file_sha256, file_size, latency_ms
from distill.robustness import robustness_report


def load_run(run_dir: str | Path) -> tuple[nn.Module, DataSplits, Path]:
    """The best model of a finished run, its data splits, and its weights file."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(
            f"{str(run_dir)!r} is not a run dir (no config.yaml); give the dir `distill run` wrote"
        )
    path = weights_path(str(run_dir))
    cfg = load_config(final_stage_dir(run_dir) / "config.yaml")  # a staged run: its last stage
    data = load_data(cfg.data)
    model = _load_model(cfg.student, data, path, "student")
    return model, data, path


def _load_model(spec: ModelConfig, data: DataSplits, path: Path, role: str) -> nn.Module:
    from distill.app.build import has_adapter, restore_into, with_peft

    model = build_model(spec.name, data.input_shape, data.num_classes, spec.args)
    model = restore_into(model, spec, path, role)
    return (model if has_adapter(model) else with_peft(model, spec, role)).eval()


def _teacher_of(run_dir: Path, data: DataSplits) -> nn.Module | None:
    cfg = load_config(final_stage_dir(run_dir) / "config.yaml")
    if cfg.teacher is None or cfg.teacher.weights is None:
        return None
    return _load_model(cfg.teacher, data, weights_path(cfg.teacher.weights), "teacher")


def _first_inputs(dataset: Any, n: int) -> Tensor:
    """The inputs of the first `n` test samples, however the dataset stores them."""
    if hasattr(dataset, "inputs"):
        return dataset.inputs[:n]
    from distill.evaluate import iter_batches

    parts, seen = [], 0
    for batch in iter_batches(dataset, min(n, 256)):
        parts.append(batch["input"])
        seen += len(batch["input"])
        if seen >= n:
            break
    return torch.cat(parts)[:n]


def activation_bytes(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Bytes of every leaf module's output for one sample (an upper bound on live activations)."""
    total = 0

    def hook(_m: nn.Module, _i: object, out: object) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    for h in handles:
        h.remove()
    return total


def cost_report(
    model: nn.Module, input_shape: Sequence[int], weights_file: Path
) -> dict[str, float]:
    single = latency_ms(model, input_shape, batch_size=1)
    batched = latency_ms(model, input_shape, batch_size=256, warmup=3, repeats=20)
    return {
        "params": count_parameters(model),
        "size_bytes": file_size(weights_file),
        "flops": count_flops(model, input_shape),
        "latency_p50_ms": single["p50_ms"],
        "latency_p95_ms": single["p95_ms"],
        "throughput_per_s": batched["samples_per_s"],
        "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "activation_bytes": activation_bytes(model, input_shape),
    }


def assess(
    run_dir: str | Path,
    *,
    teacher_dir: str | Path | None = None,
    scratch_dir: str | Path | None = None,
    eps: Sequence[float] = (0.01, 0.03, 0.1),
    robustness_samples: int = 500,
    alpha: float = 0.05,
    margin: float = 0.0,
) -> dict[str, Any]:
    """All metrics for the run's best weights on its test split; written to run_dir/eval.json.

    Negative transfer (with `scratch_dir`) flags a class only when the distilled student is
    significantly worse there (see `distill.metrics.significant_drops`: `alpha`, `margin`).
    `eval.json` records the SHA-256 of the weights it describes, so that `distill report`
    can tell a stale evaluation from a current one."""
    run_dir = Path(run_dir)
    model, data, weights_file = load_run(run_dir)
    teacher = load_run(teacher_dir)[0] if teacher_dir is not None else _teacher_of(run_dir, data)
    test, targets = data.test, targets_of(data.test)
    logits = predict_logits(model, test)
    teacher_logits = predict_logits(teacher, test) if teacher is not None else None
    out: dict[str, Any] = {
        "run_dir": str(run_dir),
        "weights_sha256": file_sha256(weights_file),
        "test_samples": len(test),
    }
    out["metrics"] = classification_report(logits, targets, teacher_logits)
    if teacher_logits is not None:
        out["teacher"] = {
            "top1": classification_report(teacher_logits, targets)["top1"],
            "per_class": classification_report(teacher_logits, targets)["per_class"],
        }
    if scratch_dir is not None:
        scratch_logits = predict_logits(load_run(scratch_dir)[0], test)
        scratch_pc = classification_report(scratch_logits, targets)["per_class"]
        out["scratch"] = {"per_class": scratch_pc}
        out["negative_transfer"] = significant_drops(
            logits.argmax(-1) == targets,
            scratch_logits.argmax(-1) == targets,
            targets,
            alpha=alpha,
            margin=margin,
        )
        out["negative_transfer_test"] = {
            "test": "exact McNemar, Holm",
            "alpha": alpha,
            "margin": margin,
        }
    n = min(robustness_samples, len(test))
    x = _first_inputs(test, n)  # in-memory arrays, data read from disk, or a stream
    n = len(x)
    y = targets[:n]
    out["robustness"] = robustness_report(model, x, y, eps=eps, clamp=data.input_range)
    out["robustness_samples"] = n
    out["robustness_clamp"] = list(data.input_range) if data.input_range else None
    out["cost"] = cost_report(model, data.input_shape, weights_file)
    atomic_write_text(run_dir / "eval.json", json.dumps(out, indent=2))
    return out


def format_assessment(result: dict[str, Any]) -> str:
    m, c = result["metrics"], result["cost"]
    lines = [f"{result['run_dir']}: {result['test_samples']} test samples"]
    lines.append(
        f"  top-1 {100 * m['top1']:.2f}%  top-5 {100 * m['top5']:.2f}%  NLL {m['nll']:.4f}  "
        f"Brier {m['brier']:.4f}  ECE {100 * m['ece']:.2f}%"
    )
    if "agreement" in m:
        lines.append(
            f"  teacher: top-1 {100 * result['teacher']['top1']:.2f}%  agreement {100 * m['agreement']:.2f}%  "
            f"KL(teacher||student) {m['teacher_kl']:.4f}"
        )
    used = result.get("robustness_samples", result["test_samples"])
    clamp = result.get("robustness_clamp")
    lines.append(
        f"  robustness ({used} of {result['test_samples']} test samples"
        + (f", attacks clipped to [{clamp[0]:g}, {clamp[1]:g}]" if clamp else "")
        + "): "
        + "  ".join(f"{k} {100 * v:.1f}%" for k, v in result["robustness"].items())
    )
    lines.append(
        f"  cost: {c['params']:,} params  {c['size_bytes'] / 1024:.1f} KiB  {c['flops'] / 1e6:.3f} MFLOPs  "
        f"latency p50 {1000 * c['latency_p50_ms']:.0f} us / p95 {1000 * c['latency_p95_ms']:.0f} us  "
        f"{c['throughput_per_s']:,.0f} samples/s at batch 256"
    )
    if "negative_transfer" in result:
        worse = result["negative_transfer"]
        test = result.get("negative_transfer_test", {})
        rule = f"McNemar p < {test.get('alpha', 0.05):g} after Holm"
        if test.get("margin"):
            rule += f", drop > {100 * test['margin']:g} pts"
        lines.append(
            "  negative transfer: "
            + (
                ", ".join(
                    f"class {w['class']} {100 * w['change']:+.1f} pts (p={w['p_value']:.3g})"
                    for w in worse
                )
                if worse
                else "none"
            )
            + f" ({rule})"
        )
    return "\n".join(lines)
