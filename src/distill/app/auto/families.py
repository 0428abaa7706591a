"""Students from families distill does not build itself: Hugging Face encoders, and timm
and torchvision classifiers by name.

- **Hugging Face encoders** (`hf_model`): the teacher with every k-th layer kept (k = 2, 3,
  4), initialised from the teacher's weights, as DistilBERT was made from BERT (Sanh et al.
  2019: one layer of two, the teacher's embeddings and layers copied). The embeddings,
  the kept layers, the pooler and the classifier come from the teacher wherever their
  shapes match. Also one narrower student (half the width and half the layers) from random
  weights. A teacher loaded from a folder (`path`) gives students built from its config,
  so they do not need the folder.
- **timm / torchvision** (`timm`, `torchvision` with `args.model`): the smaller members of
  the teacher's named family (resnet50 -> resnet34, resnet18; efficientnet_b3 -> b2, b1,
  b0; ...), from random weights. Built only when the library is installed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import nn

# each list runs from large to small; a teacher named in one gets the names after it
LADDERS: tuple[tuple[str, ...], ...] = (
    ("resnet152", "resnet101", "resnet50", "resnet34", "resnet18"),
    ("resnext101_64x4d", "resnext101_32x8d", "resnext50_32x4d", "resnet18"),
    ("wide_resnet101_2", "wide_resnet50_2", "resnet50", "resnet34", "resnet18"),
    tuple(f"efficientnet_b{i}" for i in range(7, -1, -1)),
    ("efficientnet_v2_l", "efficientnet_v2_m", "efficientnet_v2_s"),
    ("mobilenet_v3_large", "mobilenet_v3_small"),
    ("mobilenet_v2", "mobilenet_v3_small"),
    ("mobilenetv3_large_100", "mobilenetv3_small_100", "mobilenetv3_small_050"),
    (
        "convnext_large",
        "convnext_base",
        "convnext_small",
        "convnext_tiny",
        "convnext_nano",
        "convnext_pico",
        "convnext_femto",
        "convnext_atto",
    ),  # fmt: skip
    ("vit_h_14", "vit_l_16", "vit_b_16"),
    (
        "vit_large_patch16_224",
        "vit_base_patch16_224",
        "vit_small_patch16_224",
        "vit_tiny_patch16_224",
    ),  # fmt: skip
    ("densenet201", "densenet169", "densenet121"),
    ("vgg19_bn", "vgg16_bn", "vgg13_bn", "vgg11_bn"),
    ("vgg19", "vgg16", "vgg13", "vgg11"),
    (
        "regnet_y_32gf",
        "regnet_y_16gf",
        "regnet_y_8gf",
        "regnet_y_3_2gf",
        "regnet_y_1_6gf",
        "regnet_y_800mf",
        "regnet_y_400mf",
    ),  # fmt: skip
    ("shufflenet_v2_x2_0", "shufflenet_v2_x1_5", "shufflenet_v2_x1_0", "shufflenet_v2_x0_5"),
    ("mnasnet1_3", "mnasnet1_0", "mnasnet0_75", "mnasnet0_5"),
)

# config fields that describe a saved model's task or provenance, not its shape
_NOT_SHAPE = {
    "architectures", "id2label", "label2id", "_name_or_path", "transformers_version",
    "torch_dtype", "dtype", "model_type", "num_labels", "problem_type", "finetuning_task",
    "_commit_hash", "_attn_implementation_autoset", "output_attentions",
    "output_hidden_states", "return_dict",
}  # fmt: skip


def named_students(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Smaller timm / torchvision models of the teacher's named family."""
    args = dict(spec.get("args", {}))
    name = args.get("model")
    for ladder in LADDERS:
        if name in ladder:
            smaller = ladder[ladder.index(name) + 1 :]
            return [{"name": spec["name"], "args": {**args, "model": m}} for m in smaller]
    return []


def _layer_list(model: nn.Module, count: int) -> str | None:
    """The dotted path of the encoder's ModuleList of `count` identical layers."""
    for path, module in model.named_modules():
        same = isinstance(module, nn.ModuleList) and len({type(m) for m in module}) == 1
        if same and len(module) == count:
            return path
    return None


def _shape_args(config: Any) -> dict[str, Any]:
    """A saved model's architecture as hf_model args (arch plus the non-default fields)."""
    fields = {k: v for k, v in config.to_diff_dict().items() if k not in _NOT_SHAPE}
    fields = {k: v for k, v in fields.items() if isinstance(v, int | float | str | bool)}
    return {"arch": config.model_type, **fields}


def hf_students(spec: dict[str, Any], teacher: nn.Module) -> list[dict[str, Any]]:
    """The encoder with every k-th layer kept (marked `init_layers`: the teacher layers it
    starts from), and one at half width and depth from random weights."""
    config = teacher.model.config
    task = spec.get("args", {}).get("task", "sequence_classification")
    base = dict(spec.get("args", {}))
    base.pop("path", None)
    if "path" in spec.get("args", {}):
        base = {"task": task, **_shape_args(config)}
    amap = getattr(config, "attribute_map", {})
    layers_key = amap.get("num_hidden_layers", "num_hidden_layers")
    for friendly, real in amap.items():  # one spelling per field: the config's own
        if friendly in base and real != friendly:
            base[real] = base.pop(friendly)
    depth = int(config.num_hidden_layers)
    out, seen = [], set()
    for k in (2, 3, 4):
        keep = list(range(0, depth, k))
        if len(keep) >= depth or len(keep) in seen:
            continue
        seen.add(len(keep))
        out.append(
            {"name": "hf_model", "args": {**base, layers_key: len(keep)}, "init_layers": keep}
        )
    width = int(getattr(config, "hidden_size", 0) or 0)
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    if width >= 16 and heads:
        half = width // 2
        narrow = {**base, layers_key: max(1, depth // 2)}
        narrow[amap.get("hidden_size", "hidden_size")] = half
        narrow[amap.get("num_attention_heads", "num_attention_heads")] = math.gcd(half, heads)
        inter = getattr(config, "intermediate_size", None)
        if inter:
            narrow[amap.get("intermediate_size", "intermediate_size")] = int(inter) // 2
        out.append({"name": "hf_model", "args": narrow})
    return out


def init_from_teacher(
    student: nn.Module, teacher: nn.Module, keep: list[int], depth: int
) -> tuple[int, int]:
    """Copy the teacher's tensors into `student` wherever the shapes match; the student's
    j-th encoder layer takes the teacher's `keep[j]`-th. Returns (copied, total)."""
    import torch

    path = _layer_list(teacher, depth)
    ours = student.state_dict()
    theirs = teacher.state_dict()
    copied = 0
    with torch.no_grad():
        for key, value in ours.items():
            source = key
            if path is not None and key.startswith(path + "."):
                index, _, rest = key[len(path) + 1 :].partition(".")
                source = f"{path}.{keep[int(index)]}.{rest}"
            if source in theirs and theirs[source].shape == value.shape:
                value.copy_(theirs[source])
                copied += 1
    return copied, len(ours)


def teacher_initialised(
    spec: dict[str, Any], teacher: nn.Module, data: Any, folder: Path
) -> tuple[nn.Module, dict[str, Any], str]:
    """Build a student marked `init_layers`, fill it from the teacher, save it as its
    starting weights; returns (model, spec with weights, a note)."""
    import torch

    from distill.core.checkpoint import save_weights
    from distill.models import build_model

    keep = spec["init_layers"]
    torch.manual_seed(0)
    model = build_model(spec["name"], data.input_shape, data.num_classes, spec["args"])
    depth = int(teacher.model.config.num_hidden_layers)
    copied, total = init_from_teacher(model, teacher, keep, depth)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "init.safetensors"
    save_weights(path, model, {"init": "teacher layers", "layers": keep})
    clean = {"name": spec["name"], "args": spec["args"], "weights": str(path.resolve())}
    note = f"teacher layers {keep} ({copied} of {total} tensors from the teacher)"
    return model, clean, note
