"""The students `distill auto` may hand over, and what each one costs, measured before
anything trains.

Students are proposed from the teacher's own family by scaling its width and depth (the
zoo's MLP, ConvNet, ResNet and Transformer), plus any the user lists. Each candidate is
built and measured: parameters, the size of its safetensors file, and the median latency
of batch-1 calls on the budget's device and thread count (after a warm-up). Those over
budget are dropped; an impossible budget is an error that names the smallest candidate's
figures. The teacher is profiled the same way, with its validation accuracy.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from distill.app.auto.settings import AutoSettings, Budget
from distill.core.errors import ConfigError
from distill.models import build_model

WARMUP, REPEATS = 20, 100  # latency: calls before timing, calls timed (median reported)


@dataclass
class Profile:
    """A model's measured cost (and, for the teacher, its validation accuracy)."""

    label: str
    spec: dict[str, Any]  # {name, args}
    params: int
    size_bytes: int
    latency_ms: float
    throughput: float | None = None  # samples/s at budget.throughput_batch
    val_acc: float | None = None
    test_acc: float | None = None  # the teacher's, read with the students' at the end
    over: list[str] = field(default_factory=list)  # the bounds it breaks
    # a compressed candidate (distill.app.auto.compressed): {"kind": "prune" | "int8",
    # "source", "measured", and "amount" for prune}; None for a plain one
    route: dict[str, Any] | None = None
    # the spec of its from-scratch runs when `spec` starts from the teacher's weights
    scratch_spec: dict[str, Any] | None = None

    def row(self) -> dict[str, Any]:
        return {
            "student": self.label,
            "params": self.params,
            "size_kib": round(self.size_bytes / 1024, 1),
            "latency_ms": round(self.latency_ms, 4),
            **({"samples_per_s": round(self.throughput, 1)} if self.throughput else {}),
        }


def safetensors_size(model: nn.Module) -> int:
    """Bytes of the model's weights as a safetensors file (what the student is shipped as)."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return len(save(state))


def one_input(data: Any) -> torch.Tensor:
    """One real training input (what latency is timed on: token ids must be valid ids)."""
    x = data.train[0][0]
    return x if torch.is_tensor(x) else torch.as_tensor(x)


def measure(model: nn.Module, label: str, spec: dict, data: Any, budget: Budget) -> Profile:
    from distill.profile import count_parameters, latency_ms

    device = torch.device(budget.device)
    model = model.to(device)
    example = one_input(data)
    input_shape = data.input_shape
    lat = latency_ms(
        model,
        input_shape,
        warmup=WARMUP,
        repeats=REPEATS,
        threads=budget.threads,
        device=device,
        example=example,
    )
    throughput = None
    if budget.throughput_batch:
        throughput = latency_ms(
            model,
            input_shape,
            batch_size=budget.throughput_batch,
            warmup=5,
            repeats=20,
            threads=budget.threads,
            device=device,
            example=example,
        )["samples_per_s"]
    model.cpu()
    profile = Profile(
        label, spec, count_parameters(model), safetensors_size(model), lat["p50_ms"], throughput
    )
    profile.over = over_budget(profile, budget)
    return profile


def over_budget(p: Profile, b: Budget) -> list[str]:
    over = []
    if b.max_params is not None and p.params > b.max_params:
        over.append(f"{p.params:,} params > {b.max_params:,}")
    if b.max_size_bytes is not None and p.size_bytes > b.max_size_bytes:
        over.append(f"{p.size_bytes / 1e6:.3f} MB > {b.max_size_bytes / 1e6:.3f} MB")
    if b.max_latency_ms is not None and p.latency_ms > b.max_latency_ms:
        over.append(f"{p.latency_ms:.3f} ms > {b.max_latency_ms:.3f} ms")
    if b.min_throughput is not None and (p.throughput or 0) < b.min_throughput:
        over.append(f"{p.throughput or 0:.0f} samples/s < {b.min_throughput:.0f}")
    return over


def _scaled(values: list[int], factor: float, floor: int) -> list[int]:
    return [max(floor, int(round(v * factor))) for v in values]


def family_students(spec: dict[str, Any], teacher: nn.Module | None = None) -> list[dict[str, Any]]:
    """Smaller members of the teacher's family: widths x 1/2 .. 1/16, and one stage or
    layer fewer; a Hugging Face encoder's every k-th layer (which needs the `teacher`
    module); timm / torchvision's smaller models by name (`families`). Empty for a family
    it cannot scale (then list candidates yourself)."""
    from distill.app.auto import families

    name, args = spec["name"], dict(spec.get("args", {}))
    if name == "hf_model":
        return families.hf_students(spec, teacher) if teacher is not None else []
    if name in ("timm", "torchvision"):
        return families.named_students(spec)
    out: list[dict[str, Any]] = []
    factors = (0.5, 0.25, 0.125, 0.0625)
    if name in ("mlp", "convnet", "resnet"):
        key, default, floor = {
            "mlp": ("hidden", [64], 4),
            "convnet": ("channels", [32, 64], 4),
            "resnet": ("widths", [16, 32, 64], 4),
        }[name]
        widths = list(args.get(key, default))
        depths = [widths] + ([widths[:-1]] if len(widths) > 1 else [])
        for shape in depths:
            for f in factors:
                out.append({"name": name, "args": {**args, key: _scaled(shape, f, floor)}})
        if name == "resnet" and args.get("blocks_per_stage", 1) > 1:
            for f in factors[:2]:
                out.append(
                    {
                        "name": name,
                        "args": {
                            **args,
                            key: _scaled(widths, f, floor),
                            "blocks_per_stage": 1,
                        },
                    }
                )
    elif name == "transformer":
        dim, depth, heads = args.get("dim", 32), args.get("depth", 2), args.get("heads", 2)
        for f in factors[:3]:
            d = max(8, int(round(dim * f)))
            h = max(1, math.gcd(d, heads))
            for layers in sorted({depth, max(1, depth // 2)}, reverse=True):
                out.append({"name": name, "args": {**args, "dim": d, "heads": h, "depth": layers}})
    unique, seen = [], set()
    for s in out:
        key = repr(sorted(s["args"].items()))
        if key not in seen and s["args"] != args:
            seen.add(key)
            unique.append(s)
    return unique


_HF_SHAPE = ("arch", "num_hidden_layers", "n_layers", "hidden_size", "dim", "intermediate_size")


def label_of(spec: dict[str, Any]) -> str:
    items = spec.get("args", {})
    if spec["name"] == "hf_model":  # a config has dozens of fields: name the shape
        items = {k: v for k, v in items.items() if k in _HF_SHAPE or k == "path"}
    args = ", ".join(f"{k}={v}" for k, v in sorted(items.items()))
    init = f" from teacher layers {spec['init_layers']}" if spec.get("init_layers") else ""
    return f"{spec['name']}({args}){init}"


def profile_teacher(settings: AutoSettings, data: Any) -> tuple[nn.Module, Profile]:
    """The teacher with its weights, and its cost and validation accuracy."""
    from distill.app.build import load_model
    from distill.evaluate import evaluate

    if settings.teacher.weights is None:
        raise ConfigError(
            "auto: the teacher has no weights; give --teacher <file.safetensors | run dir>"
        )
    teacher = load_model(settings.teacher, data, "teacher").eval()
    spec = {"name": settings.teacher.name, "args": dict(settings.teacher.args)}
    profile = measure(teacher, "teacher", spec, data, settings.budget)
    profile.val_acc = evaluate(teacher, data.val, batch_size=512)["acc"]
    return teacher, profile


def propose(
    settings: AutoSettings, data: Any, teacher: Profile, teacher_model: nn.Module | None = None
) -> list[Profile]:
    """Every proposed and listed student, measured; those over budget marked in `.over`.
    A student that starts from the teacher's layers gets its starting weights written to
    OUT/students/ and a from-scratch spec of its own."""
    specs = family_students(teacher.spec, teacher_model)
    specs += [{"name": c.name, "args": dict(c.args)} for c in settings.candidates]
    if not specs:
        raise ConfigError(
            f"auto: distill cannot scale a {teacher.spec['name']!r} teacher by itself; list "
            f"the students to try under candidates: [{{name: ..., args: {{...}}}}]"
        )
    profiles = []
    for i, spec in enumerate(specs):
        label = label_of(spec)
        if spec.get("init_layers"):
            from distill.app.auto.families import teacher_initialised

            folder = settings.out_dir / "students" / f"{i:02d}"
            model, spec, _ = teacher_initialised(spec, teacher_model, data, folder)
        else:
            torch.manual_seed(0)
            model = build_model(spec["name"], data.input_shape, data.num_classes, spec["args"])
        profile = measure(model, label, spec, data, settings.budget)
        if "weights" in spec:
            profile.scratch_spec = {k: v for k, v in spec.items() if k != "weights"}
        profiles.append(profile)
    return profiles


def choose(
    profiles: list[Profile],
    teacher: Profile,
    settings: AutoSettings,
    compressed: list[Profile] = (),
) -> list[Profile]:
    """The candidates to search: the user's own, and from the family the largest that fits
    the budget, then each next one at most 0.6x the parameters of the last (a spread of
    sizes, up to `max_candidates`), plus the compressed students that fit (one of each
    kind, the largest). Raises when none fits, naming the smallest."""
    fits = [p for p in profiles if not p.over and p.params < teacher.params and p.route is None]
    squeezed: list[Profile] = []
    for kind in ("prune", "int8"):
        of_kind = [p for p in compressed if not p.over and p.route and p.route["kind"] == kind]
        squeezed += sorted(of_kind, key=lambda p: -p.params)[:1]
    if not fits and not squeezed:
        small = min(profiles, key=lambda p: (p.params, p.latency_ms))
        raise ConfigError(
            f"auto: no student fits the budget; the smallest candidate, {small.label}, has "
            f"{small.params:,} parameters, {small.size_bytes / 1e6:.3f} MB and "
            f"{small.latency_ms:.3f} ms at batch 1 ({'; '.join(small.over) or 'within budget'}"
            f"). Loosen the budget, or list smaller candidates"
        )
    own = {label_of({"name": c.name, "args": dict(c.args)}) for c in settings.candidates}
    chosen = [p for p in fits if p.label in own]
    for p in sorted(fits, key=lambda p: -p.params):
        if len(chosen) >= settings.max_candidates:
            break
        if p in chosen:
            continue
        family = [c for c in chosen if c.label not in own]
        if not family or p.params <= 0.6 * min(c.params for c in family):
            chosen.append(p)
    return sorted(chosen, key=lambda p: -p.params) + squeezed


def spec_for(p: Profile, method: str) -> dict[str, Any]:
    """The student config of a run of `method` on candidate `p`: a compressed candidate's
    from-scratch baseline starts from random weights of its shape, not the teacher's."""
    if method == "scratch" and p.scratch_spec is not None:
        return copy.deepcopy(p.scratch_spec)
    return copy.deepcopy(p.spec)


def copy_spec(p: Profile) -> dict[str, Any]:
    return copy.deepcopy(p.spec)
