"""A `Trainer`'s checkpoints: the resume checkpoint (`last.safetensors`: models, optimizer,
scaler, loop state, the unfinished epoch's loss sums and every random state, so a resume
is bit-exact) and the best weights (`best.safetensors`: the evaluated model alone, or a
LoRA student's adapter, with what rebuilds it)."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from distill.compress.structure import structure_of
from distill.core import distributed
from distill.core.checkpoint import adapter_part, load_checkpoint, save_checkpoint, save_weights
from distill.core.errors import CheckpointError, ConfigError
from distill.core.logs import MetricsLog
from distill.loop.loss_sums import LossSums
from distill.loop.rng import rng_state, set_rng_state


def save_epoch(t: Any, best: dict[str, float] | None, last: bool) -> None:
    """What a validation leaves: the best weights when it improved (`best`: its metrics),
    and the resume checkpoint when one is due (`last`), both from one walk of the models'
    state (`modules_state`)."""
    if best is None and not last:
        return
    modules = modules_state(t)
    if best is not None:
        save_best(t, best, modules)
    if last:
        save(t, modules)


def modules_state(t: Any) -> dict[str, Any]:
    """The state dict of all the trainer's models, sharded tensors gathered in full on every
    rank (a collective), so a file is the same whatever the strategy and world size."""
    return distributed.gather_state(t.scheme.modules.state_dict())


def save(t: Any, modules: dict[str, Any] | None = None) -> None:
    """The resume checkpoint; `modules`: `modules_state(t)` when the caller has it."""
    modules = modules_state(t) if modules is None else modules
    optimizer = distributed.gather_state(t.optimizer.state_dict())
    if not distributed.is_main():  # every rank holds the same state; one writes it
        t.losses.fold()
        return
    step = t.state["step"]

    def refuse(bad: list[str]) -> None:  # keep the last good one: a resume needs finite values
        shown = ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
        print(
            f"checkpoint at step {step} not written: non-finite values in {shown}; "
            f"{t.guard.last_good(wait=False)}",  # (on the writer's thread)
            file=sys.stderr,
        )

    save_checkpoint(
        t.ckpt_dir / "last.safetensors",
        {
            "modules": modules,
            "optimizer": optimizer,
            "scaler": t.scaler.state_dict(),
            "trainer": dict(t.state),
            # running loss sums of the unfinished epoch, so its logged means stay exact
            "epoch_sums": t.losses.totals(),
            "epoch_count": t.losses.count,
            "rng": rng_state(t.aug_gen),
        },
        writer=t.writer,  # the tensors are copied now, written while training goes on
        only_finite=("modules.", "optimizer.", refuse),
    )


def restore(t: Any) -> None:
    path = t.ckpt_dir / "last.safetensors"
    if not path.is_file():
        raise ConfigError(f"nothing to resume: {str(path)!r} does not exist; run without --resume")
    ckpt = load_checkpoint(path)
    configured_lr = [g["lr"] for g in t.optimizer.param_groups]
    try:
        distributed.load_full_state(t.scheme.modules, ckpt["modules"])
        distributed.load_full_optimizer_state(t.optimizer, ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(
            f"{str(path)!r} does not match the models and optimizer this config builds "
            f"({str(e).splitlines()[0]}); resume with the config the run started with "
            f"(its config.yaml), or start a new run_dir"
        ) from None
    # The schedule scales each group's base lr; it comes from this config, not the
    # checkpoint, so a resume with --allow-change train.optimizer.lr takes the new one
    # (unchanged, it is the same number).
    for group, lr in zip(t.optimizer.param_groups, configured_lr):
        group["base_lr"] = lr
    if ckpt["scaler"]:
        t.scaler.load_state_dict(ckpt["scaler"])
    t.state = dict(ckpt["trainer"])
    t.losses = LossSums.restored(ckpt["epoch_sums"], ckpt["epoch_count"])
    set_rng_state(ckpt["rng"], t.aug_gen)
    t._restored = True


def save_best(t: Any, metrics: dict[str, float], modules: dict[str, Any] | None = None) -> None:
    """The evaluated model's weights as `best.safetensors`; taken out of `modules` (the
    `modules_state(t)` of this moment) when that holds them."""
    st = t.state
    weights = _eval_weights(t, modules)
    adapter: dict = {}
    if t.export_info.get("peft_base"):  # a LoRA student on a base file: its adapter
        weights, adapter = adapter_part(t.scheme.eval_model(), weights)
    structure = structure_of(t.scheme.eval_model())
    if distributed.is_main():
        save_weights(
            t.ckpt_dir / "best.safetensors",
            weights,
            {
                **t.export_info,
                **adapter,
                **({"structure": structure} if structure else {}),
                "epoch": st["best_epoch"],  # (set by the validation that improved)
                **{f"val_{k}": v for k, v in metrics.items()},
            },
            writer=t.writer,
        )


def _eval_weights(t: Any, modules: dict[str, Any] | None) -> dict[str, Any]:
    """The evaluated model's state dict. When it is one of the trainer's models (a child of
    `scheme.modules`, as a student is) its entries are those of `modules` under its name, in
    the same order: `Module.state_dict` builds a parent's from its children's, so the walk
    need not be made twice."""
    model = t.scheme.eval_model()
    if modules is not None:
        for name, child in t.scheme.modules.named_children():
            if child is model:
                cut = len(name) + 1
                return {k[cut:]: v for k, v in modules.items() if k.startswith(name + ".")}
    return distributed.gather_state(model.state_dict())


def summary(
    t: Any, started: float, stopped_by: str | None, early_stopped: bool = False
) -> dict[str, Any]:
    st = t.state
    return {
        "complete": stopped_by is None,
        "stopped_by": stopped_by or ("early_stop" if early_stopped else None),
        "epochs": st["epoch"],
        "steps": st["step"],
        # the best validation value of the monitored metric (nll is stored negated);
        # None before any epoch was validated (JSON has no infinity)
        f"best_val_{t.settings.monitor}": None
        if not math.isfinite(st["best"])
        else (-st["best"] if t.settings.monitor == "nll" else st["best"]),
        "best_epoch": st["best_epoch"],
        "seconds": time.perf_counter() - started,
    }


def prepare_fit(t: Any) -> MetricsLog:
    """What `fit` does before the first step: the metrics log cut back to the restored
    epoch, the teacher cache built (or checked) once, and the scheme told the plan."""
    log = MetricsLog(t.run_dir, writer=t.writer)
    if distributed.is_main():
        log.keep_epochs_before(t.state["epoch"] + 1, t.state["step"])
    cache = t.contract.teacher_cache
    if cache is not None:
        if distributed.is_main():  # under torchrun rank 0 builds, the others open it
            cache.ensure()
        distributed.barrier()
        cache.ensure()
    hook = t.contract.on_fit_start
    if hook is not None:  # schemes that schedule by epoch learn its length
        hook(t.total_steps, t.steps_per_epoch)
    return log
