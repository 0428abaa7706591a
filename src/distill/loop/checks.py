"""What a `Trainer` checks when it is made, so that the Python API refuses at once, and in
the CLI's words, what the CLI refuses: a run dir that is a file, empty training data, and
labels outside the classes the model predicts; and, before a run writes anything, whether
its next checkpoint fits on the disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.core import rundir
from distill.core.errors import DataError


def check_run_dir(run_dir: Any) -> None:
    """A run dir must be a folder, or a path where one can be made."""
    rundir.check_location(Path(run_dir))


def check_train_data(trainer: Any) -> None:
    """Indexed training data must hold samples, and its labels (where the dataset exposes
    them) must lie in -1..C-1 for the C classes the evaluated model predicts (-1 marks an
    unlabelled sample)."""
    if trainer.streamed:
        return  # a stream's samples are only seen as they come
    data = trainer.train_data
    if len(data) == 0:
        raise DataError(
            "the training data is empty (0 samples); check the split or filter that made it, "
            "or give the Trainer a dataset with samples"
        )
    if not predicts_classes(trainer.scheme):
        return  # a denoiser, a detector, an embedder: its labels are not its outputs' classes
    for role, split in (("train", data), ("val", trainer.val_data)):
        targets = known_targets(split)
        if targets is None or targets.size == 0:
            continue
        classes = predicted_classes(trainer.scheme.eval_model(), data, trainer.device)
        if classes is None:
            return
        check_labels(targets, classes, role)


def predicts_classes(scheme: Any) -> bool:
    """Whether `scheme`'s student outputs class logits, from its entry in the scheme table
    (found by its class); a scheme of the user's own is taken to be a classifier's."""
    from distill.schemes.table import SCHEMES

    here = f"{type(scheme).__module__}:{type(scheme).__name__}"
    for spec in SCHEMES.values():
        if spec.builder == here:
            return spec.predicts_classes
    return True


def known_targets(data: Any) -> np.ndarray | None:
    """A map-style dataset's class labels when it exposes them without reading every sample:
    a `targets` array (distill's splits, torchvision datasets) or a TensorDataset's second
    tensor. None for anything else (sequence targets, unknown datasets)."""
    targets = getattr(data, "targets", None)
    if targets is None and isinstance(data, torch.utils.data.TensorDataset):
        targets = data.tensors[1] if len(data.tensors) >= 2 else None
    if targets is None:
        return None
    try:
        array = np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets)
    except (TypeError, ValueError):
        return None
    if array.ndim != 1 or array.dtype.kind not in "iu":
        return None
    return array


@torch.no_grad()
def predicted_classes(model: torch.nn.Module, data: Any, device: torch.device) -> int | None:
    """The class count of `model`'s logits on one training sample, or None where a dry
    forward cannot tell (a model that is not a classifier, a sample it cannot read)."""
    from distill.data.core import load_batch
    from distill.models.mode import set_training

    was = model.training
    set_training(model, False)
    try:
        batch = load_batch(data, torch.arange(1))
        out = model(batch["input"].to(device))
    except Exception:  # the loop reports the real problem with its own context
        return None
    finally:
        set_training(model, was)
    logits = getattr(out, "logits", out)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        return None
    return int(logits.shape[-1])


def check_labels(targets: np.ndarray, classes: int, role: str) -> None:
    """Refuse a label outside -1..classes-1, naming the first one and the fix."""
    bad = np.flatnonzero((targets < -1) | (targets >= classes))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{role} label {int(targets[i])} at index {i} is outside 0..{classes - 1}: the model "
            f"predicts {classes} classes (-1 marks an unlabelled sample). Fix the label, or "
            f"build the model with num_classes={int(targets.max()) + 1}"
        )


def checkpoint_bytes(trainer: Any) -> int:
    """About how many bytes the run's next resume checkpoint takes: the last one's size when
    there is one, else the modules' weights with room for the optimizer's state (Adam
    keeps two more tensors per trained weight; a frozen base, as under LoRA, has none)."""
    last = trainer.ckpt_dir / "last.safetensors"
    if last.is_file():
        return last.stat().st_size
    modules = trainer.scheme.modules
    weights = sum(v.numel() * v.element_size() for v in modules.state_dict().values())
    trained = sum(p.numel() * p.element_size() for p in modules.parameters() if p.requires_grad)
    return weights + 2 * trained  # Adam's two moments, for the trained weights only


def check_free_space(trainer: Any) -> None:
    """Refuse to start (or resume) a run whose next checkpoint cannot fit on its disk, before
    anything is written: a run that fails at its first save would otherwise have replaced
    its config.yaml and marker for nothing."""
    import shutil

    from distill.core.errors import ConfigError

    folder = Path(trainer.run_dir).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:  # a file system that cannot say: the writes themselves will tell
        return
    need = checkpoint_bytes(trainer)
    if free < need:
        raise ConfigError(
            f"no space left on device (ENOSPC) for {str(trainer.run_dir)!r}: its next "
            f"checkpoint needs about {_size(need)} and {_size(free)} is free. Make free space "
            f"on that disk, or set run_dir=<a folder on another disk>; nothing was written"
        )


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
