"""Compressed students, when the budget asks for them.

When the teacher itself breaks the budget, `distill auto` also offers students made from
it with the operations of `distill compress`, measured before any training like every
other candidate:

- **pruned teacher**: the teacher with the smallest fraction of its channels removed
  (structured, by filter L1 norm: `compress.prune.prune_channels`) that brings it within
  the budget. It starts from the teacher's surviving weights and is trained by the
  searched method with the unpruned teacher teaching it: pruning with KD recovery. Its
  from-scratch baseline is the same pruned shape from random initialisation.
- **int8**: quantization-aware training at 8 bits (`student.quantize`: weights per channel,
  activations per tensor), offered when the budget is broken by size alone and 8-bit
  weights fit. From the teacher (starting from its weights, distilled from it: QKD) and
  from the largest family student that is over the size bound. Its size is the file it
  ships as, the int8 ONNX model (`compress.export` folds the weights to int8), and its
  latency is that file's in ONNX Runtime, so the budget's device must be the CPU.

The student handed over is measured again after training (`remeasure`): its parameters,
file and latency, and for int8 the exported file with its parity to PyTorch.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.app.auto.candidates import REPEATS, WARMUP, Profile, label_of, measure, over_budget
from distill.app.auto.settings import AutoSettings, Budget

PRUNE_AMOUNTS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # tried in order: the least that fits


def budget_asks(settings: AutoSettings, teacher: Profile) -> bool:
    """Compression is offered when it is on and the teacher breaks a bound on its cost."""
    return settings.compress != "off" and bool(teacher.over)


def _example(data: Any) -> torch.Tensor:
    from distill.data import load_batch

    n = min(64, len(data.train))
    return load_batch(data.train, torch.arange(n))["input"].float()


def _save(path: Path, model: nn.Module, info: dict[str, Any]) -> str:
    from distill.core.checkpoint import save_weights

    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(path, model, info)
    return str(path.resolve())


def pruned_teacher(
    settings: AutoSettings, data: Any, teacher_model: nn.Module, teacher: Profile
) -> tuple[Profile | None, str]:
    """The teacher pruned by the least of PRUNE_AMOUNTS that fits the budget, and a note."""
    from distill.app.auto.candidates import one_input
    from distill.app.build import weights_path
    from distill.compress.prune import prune_channels
    from distill.models import build_model

    if not one_input(data).is_floating_point():
        return None, "channel pruning is offered for float inputs (not token ids) for now"
    example = _example(data)
    for amount in PRUNE_AMOUNTS:
        model = copy.deepcopy(teacher_model).cpu().eval()
        try:
            prune_channels(model, amount, example)
        except Exception as e:  # noqa: BLE001 (no pruned student; the note says why)
            # e.g. every output reaches a residual add, or the model does not trace
            return None, f"the teacher cannot be pruned by channels ({str(e)[:200]})"
        label = f"teacher pruned {100 * amount:.0f}%"
        profile = measure(model, label, teacher.spec, data, settings.budget)
        if profile.over:
            continue
        folder = settings.out_dir / "compressed" / f"pruned-{100 * amount:.0f}"
        source = str(weights_path(settings.teacher.weights))
        init = _save(folder / "init.safetensors", model, {"pruned_from": source, "amount": amount})
        torch.manual_seed(0)  # the same shape from random initialisation: the scratch baseline
        fresh = build_model(teacher.spec["name"], data.input_shape, data.num_classes,
                            teacher.spec["args"])  # fmt: skip
        prune_channels(fresh, amount, example)
        scratch = _save(folder / "scratch-init.safetensors", fresh, {"amount": amount})
        profile.spec = {**teacher.spec, "weights": init}
        profile.scratch_spec = {**teacher.spec, "weights": scratch}
        profile.route = {
            "kind": "prune",
            "source": "teacher",
            "amount": amount,
            "measured": "PyTorch, the pruned shape",
        }
        return profile, f"{label}: fits ({profile.params:,} params, {profile.latency_ms:.3f} ms)"
    return None, f"pruning the teacher by up to {100 * PRUNE_AMOUNTS[-1]:.0f}% does not fit"


def int8_profile(
    model: nn.Module, label: str, spec: dict, data: Any, budget: Budget, path: Path
) -> Profile:
    """Cost of `model` shipped as int8 ONNX: file bytes and ONNX Runtime latency."""
    from distill.compress.export import export_onnx, onnx_latency_ms
    from distill.compress.quant import is_quantized, prepare_qat
    from distill.core.settings import QuantSettings
    from distill.profile import count_parameters

    model = copy.deepcopy(model).cpu()
    if not is_quantized(model):
        prepare_qat(model, QuantSettings())
        with torch.no_grad():  # activation ranges from a few training inputs
            model.train()(_example(data))
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    info = export_onnx(model, data.input_shape, path)
    lat = onnx_latency_ms(
        path, data.input_shape, warmup=WARMUP, repeats=REPEATS, threads=budget.threads
    )
    throughput = None
    if budget.throughput_batch:
        batch = onnx_latency_ms(
            path,
            data.input_shape,
            batch_size=budget.throughput_batch,
            warmup=5,
            repeats=20,
            threads=budget.threads,
        )
        throughput = budget.throughput_batch / (batch["p50_ms"] / 1e3)
    profile = Profile(
        label, spec, count_parameters(model), info["bytes"], lat["p50_ms"], throughput
    )
    profile.over = over_budget(profile, budget)
    return profile


def _int8_sources(
    settings: AutoSettings, data: Any, teacher_model: nn.Module, teacher: Profile, proposed
) -> list[tuple[str, dict, nn.Module, str]]:
    """(label, spec, model, source) of what may fit at int8: the teacher (from its weights)
    and the smallest family student above the largest that fits, each over the size bound
    alone."""
    from distill.app.build import weights_path
    from distill.models import build_model

    sizeless = settings.budget.model_copy(update={"max_size_bytes": None})

    def size_only(p: Profile) -> bool:  # over the budget on size and nothing else
        return bool(p.over) and not over_budget(p, sizeless)

    fitting = [p.params for p in proposed if not p.over]
    sources = []
    if size_only(teacher):
        spec = {**teacher.spec, "weights": str(weights_path(settings.teacher.weights).resolve())}
        sources.append(("teacher int8", spec, teacher_model, "teacher"))
    family = [
        p
        for p in proposed
        if p.over and size_only(p) and p.params < teacher.params and p.params > max(fitting or [0])
    ]
    if family:
        spec = copy.deepcopy(min(family, key=lambda p: p.params).spec)
        torch.manual_seed(0)
        model = build_model(spec["name"], data.input_shape, data.num_classes, spec["args"])
        sources.append((f"{label_of(spec)} int8", spec, model, "family"))
    return sources


def int8_candidates(
    settings: AutoSettings,
    data: Any,
    teacher_model: nn.Module,
    teacher: Profile,
    proposed: list[Profile],
) -> tuple[list[Profile], list[str]]:
    """The int8 students that fit (see `_int8_sources`), measured as int8 ONNX files."""
    from distill.app.auto.candidates import one_input

    if settings.budget.max_size_bytes is None:
        return [], []
    if not one_input(data).is_floating_point():
        return [], ["int8 students are offered for float inputs (not token ids) for now"]
    if settings.budget.device != "cpu":
        return [], ["int8 students are timed in ONNX Runtime on the CPU; not offered for "
                    f"budget device {settings.budget.device!r}"]  # fmt: skip
    found, notes = [], []
    for label, spec, model, source in _int8_sources(
        settings, data, teacher_model, teacher, proposed
    ):
        path = settings.out_dir / "compressed" / f"int8-{source}" / "shape.onnx"
        profile = int8_profile(model, label, spec, data, settings.budget, path)
        if profile.over:
            notes.append(f"{label}: still over the budget ({'; '.join(profile.over)})")
            continue
        profile.spec = {**spec, "quantize": {"bits": 8}}
        scratch = {k: v for k, v in spec.items() if k != "weights"}
        profile.scratch_spec = {**scratch, "quantize": {"bits": 8}}
        profile.route = {
            "kind": "int8",
            "source": source,
            "measured": "int8 ONNX file, ONNX Runtime latency",
        }
        found.append(profile)
        notes.append(f"{label}: fits ({profile.size_bytes / 1024:.1f} KiB as int8 ONNX)")
    return found, notes


def propose_compressed(
    settings: AutoSettings,
    data: Any,
    teacher_model: nn.Module,
    teacher: Profile,
    proposed: list[Profile],
) -> tuple[list[Profile], list[str]]:
    """Every compressed candidate that fits, and a note on each route tried."""
    if not budget_asks(settings, teacher):
        return [], []
    found, notes = [], []
    pruned, note = pruned_teacher(settings, data, teacher_model, teacher)
    notes.append(note)
    if pruned is not None:
        found.append(pruned)
    more, more_notes = int8_candidates(settings, data, teacher_model, teacher, proposed)
    return found + more, notes + more_notes


def remeasure(module: nn.Module, chosen: Profile, settings: AutoSettings, data: Any) -> dict:
    """The handed-over student measured again, as it ships (int8: the exported ONNX file,
    with its parity to PyTorch on the validation inputs)."""
    if chosen.route is not None and chosen.route["kind"] == "int8":
        from distill.compress.export import parity
        from distill.data import load_batch

        path = settings.out_dir / "student-int8.onnx"
        profile = int8_profile(module, chosen.label, chosen.spec, data, settings.budget, path)
        inputs = load_batch(data.val, torch.arange(min(512, len(data.val))))["input"].float()
        check = parity(module, path, inputs)
        extra = {"onnx": str(path), "onnx_top1_agreement": check["top1_agreement"]}
    else:
        profile = measure(module, chosen.label, chosen.spec, data, settings.budget)
        extra = {}
    return {**profile.row(), "over": profile.over, **extra}
