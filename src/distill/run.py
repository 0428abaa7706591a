"""Run an experiment end to end: build, train, then test the best weights."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from distill import distributed
from distill.build import build, export_info, weights_path
from distill.checkpoint import atomic_write_text, restore_weights
from distill.config import ExperimentConfig, dump_config
from distill.errors import ConfigError
from distill.evaluate import (
    agreement,
    classification_metrics,
    evaluate,
    predict_logits,
    targets_of,
)
from distill.trainer import Trainer

# Settings that may change when a run is resumed; anything else must match the saved config.
RESUMABLE_CHANGES = {
    "epochs",
    "max_steps",
    "progress",
    "checkpoint_every_steps",
    "early_stop_patience",
    "device",
    "workers",
    "distributed",  # placement on the ranks; checkpoints hold full tensors either way
}


def check_run_dir(run_dir: Path, cfg: ExperimentConfig, *, resume: bool, overwrite: bool) -> None:
    """Refuse to silently overwrite a previous run, or to resume it under a different config."""
    if resume and overwrite:
        raise ConfigError("resume continues a run and overwrite deletes it; choose one")
    has_run = (run_dir / "checkpoints").is_dir() or (run_dir / "metrics.jsonl").is_file()
    if has_run and not resume and not overwrite:
        raise ConfigError(
            f"run dir {str(run_dir)!r} already holds a run; continue it with --resume, "
            f"replace it with --overwrite, or set run_dir=<new dir>"
        )
    saved = run_dir / "config.yaml"
    if resume and saved.is_file():
        changed = _changed_keys(yaml.safe_load(saved.read_text()), cfg.model_dump(mode="json"))
        changed = [
            k
            for k in changed
            if not (k.startswith("train.") and k[6:].split(".")[0] in RESUMABLE_CHANGES)
        ]
        if changed:
            raise ConfigError(
                f"cannot resume {str(run_dir)!r} with a different config: {', '.join(changed)} "
                f"changed since the run started (see its config.yaml). Only train."
                f"{{{', '.join(sorted(RESUMABLE_CHANGES))}}} may change on resume; start a new "
                f"run_dir for anything else."
            )


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(dict.fromkeys([*old, *new]))
        return [c for k in keys for c in _changed_keys(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]


def run_experiment(
    cfg: ExperimentConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
) -> dict[str, Any]:
    """Train per `cfg`; write config.yaml, checkpoints, metrics and results.json in the run dir.

    Everything that can fail on bad input (names, data, weights, shapes) fails before the
    run dir is touched, so a bad config never clobbers or half-writes a run.
    """
    from distill.stages import is_pipeline, run_pipeline

    if is_pipeline(cfg):
        return run_pipeline(cfg, resume=resume, overwrite=overwrite, callbacks=callbacks)
    run_dir = cfg.resolved_run_dir()
    check_run_dir(run_dir, cfg, resume=resume, overwrite=overwrite)
    built = build(cfg)
    if cfg.train.progress and built.cache_plan is not None and cfg.teacher is not None:
        print(f"teacher: {built.cache_plan.reason}", file=sys.stderr)
    trainer = Trainer(
        built.scheme,
        built.data.train,
        built.data.val,
        cfg.train,
        run_dir=run_dir,
        augment=built.augment,
        export_info=export_info(cfg),
        callbacks=callbacks,
    )
    if resume:
        trainer.restore()  # a bad checkpoint fails here, before anything is written
    distributed.barrier()  # under torchrun: every rank has checked the run dir before rank 0 writes
    main = distributed.is_main()
    if main:
        if overwrite and run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    distributed.barrier()
    summary = trainer.fit(resume=resume)
    results: dict[str, Any] = {"name": cfg.name, "run_dir": str(run_dir), **summary}
    models = {"student": built.student, "teacher": built.teacher}
    sharded = [k for k, m in models.items() if m is not None and distributed.is_sharded(m)]
    if distributed.world_size() > 1:
        results["world_size"] = distributed.world_size()
        results["sharded"] = sharded  # models split across the ranks with FSDP
    if built.cache_plan is not None and cfg.teacher is not None:
        results["teacher_cache"] = built.cache_plan.reason
    distributed.barrier()  # rank 0's last checkpoint and best weights are on disk
    # A sharded model runs only with every rank taking part, so then all ranks test.
    if summary["complete"] and (main or sharded):
        device = trainer.device if sharded else torch.device("cpu")
        tested = test_results(built, run_dir, trainer.settings.eval_batch_size, device)
        if main:
            results.update(tested)
            atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2))
    return results


def test_results(
    built: Any, run_dir: Path, batch_size: int, device: torch.device | None = None
) -> dict[str, float]:
    """Test metrics of the best student weights, and of the teacher and their agreement.

    Models run on `device` (CPU by default); a sharded model stays where it is."""
    device = device or torch.device("cpu")
    restore_weights(built.student, weights_path(str(run_dir)), "student")
    for model in (built.student, built.teacher):
        if model is not None and not distributed.is_sharded(model):
            model.to(device)
    test = built.data.test
    scheme_test = getattr(built.scheme, "test_metrics", None)
    if scheme_test is not None:  # e.g. perplexity and token agreement for language models
        return scheme_test(test, batch_size=batch_size)
    if hasattr(test, "supervised"):  # token data without a language-model scheme
        return {f"test_{k}": v for k, v in evaluate(built.student, test, device=device).items()}
    targets = targets_of(test)
    student_logits = predict_logits(built.student, test, batch_size=batch_size, device=device)
    out = {f"test_{k}": v for k, v in classification_metrics(student_logits, targets).items()}
    if built.teacher is not None:  # (a cross-task teacher, with other labels, is skipped)
        teacher_test = test.paired_view() if hasattr(test, "paired_view") else test
        teacher_logits = predict_logits(
            built.teacher, teacher_test, batch_size=batch_size, device=device
        )
        if teacher_logits.shape[-1] != student_logits.shape[-1]:
            return out
        out.update(
            {
                f"teacher_test_{k}": v
                for k, v in classification_metrics(teacher_logits, targets).items()
            }
        )
        out["test_agreement"] = agreement(student_logits, teacher_logits)
    return out
