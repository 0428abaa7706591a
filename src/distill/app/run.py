"""Run an experiment end to end: build, train, then test the best weights."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from distill.app.build import build, export_info, weights_path
from distill.app.run_check import check_run_dir
from distill.core import distributed, rundir
from distill.core.checkpoint import atomic_write_text
from distill.core.config import ExperimentConfig, dump_config
from distill.evaluate import classification_metrics, evaluate, predict_logits, targets_of
from distill.loop.checks import check_free_space
from distill.loop.trainer import Trainer
from distill.metrics import agreement
from distill.models.weights import restore_weights
from distill.schemes.contract import Contract


def run_experiment(
    cfg: ExperimentConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
    allow_changes: Sequence[str] = (),
    test: bool = True,
) -> dict[str, Any]:
    """Train per `cfg`; write config.yaml, checkpoints, metrics and results.json in the run dir.

    Everything that can fail on bad input (names, data, weights, shapes) fails before the
    run dir is touched, so a bad config never clobbers or half-writes a run. The run dir is
    locked for the whole run (a second writer is refused); `overwrite` removes only what an
    earlier run wrote (see distill.core.rundir). `allow_changes` names the settings that may
    differ from the saved config on resume (`CHANGEABLE_ON_REQUEST`). `test=False` leaves
    the test split unread (a search that chooses on validation tests its choice later).
    """
    from distill.app.stages import is_pipeline, run_pipeline

    if is_pipeline(cfg):
        return run_pipeline(
            cfg,
            resume=resume,
            overwrite=overwrite,
            callbacks=callbacks,
            allow_changes=allow_changes,
            run_stage=run_experiment,
        )
    run_dir = cfg.resolved_run_dir()
    check_run_dir(run_dir, cfg, resume=resume, overwrite=overwrite, allow=allow_changes)
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
        step_hooks=built.step_hooks,
    )
    if resume:
        trainer.restore()  # a bad checkpoint fails here, before anything is written
    main = distributed.is_main()
    with rundir.RunLock(run_dir) if main else contextlib.nullcontext():
        # checked again under the lock: another process may have started here meanwhile
        changes = check_run_dir(
            run_dir, cfg, resume=resume, overwrite=overwrite, allow=allow_changes
        )
        return _train(cfg, built, trainer, resume, overwrite, changes, test)


def _train(
    cfg, built, trainer: Trainer, resume: bool, overwrite: bool, changes, test: bool = True
) -> dict:
    """Write the run dir's config and marker, train, then test (under the run dir's lock)."""
    run_dir = trainer.run_dir
    distributed.barrier()  # under torchrun: every rank has checked the run dir before rank 0 writes
    main = distributed.is_main()
    if main:
        check_free_space(trainer)  # nothing is written for a run that cannot save
        if resume:
            print(_resume_line(trainer, run_dir / "config.yaml"), file=sys.stderr)
        for line in changes:
            print(line, file=sys.stderr)
        rundir.begin(run_dir, "run", overwrite=overwrite, source=cfg._source)
        config_text = dump_config(cfg)
        saved = run_dir / "config.yaml"
        if not (saved.is_file() and saved.read_text() == config_text):
            atomic_write_text(saved, config_text)
        if getattr(built.data, "preprocessing", None):  # e.g. table scaling fitted on train
            atomic_write_text(
                run_dir / "preprocessing.json", json.dumps(built.data.preprocessing, indent=1)
            )
    distributed.barrier()
    trackers = _trackers(cfg, run_dir, resume, trainer) if main else []
    try:
        summary = trainer.fit(resume=resume)
    finally:
        for tracker in trackers:
            tracker.close()
    results: dict[str, Any] = {"name": cfg.name, "run_dir": str(run_dir), **summary}
    models = {"student": built.student, "teacher": built.teacher}
    sharded = [k for k, m in models.items() if m is not None and distributed.is_sharded(m)]
    if distributed.world_size() > 1:
        results["world_size"] = distributed.world_size()
        results["sharded"] = sharded  # models split across the ranks with FSDP
    results.update(_cache_lines(cfg, built))
    distributed.barrier()  # rank 0's last checkpoint and best weights are on disk
    # A sharded model runs only with every rank taking part, so then all ranks test.
    # A run that ends (complete, or stopped by train.max_steps) is tested: its best weights,
    # or its final ones when no epoch was validated yet; a signal only saves and reports.
    tests = test and (summary["complete"] or summary.get("stopped_by") == "max_steps")
    if tests and (main or sharded):
        device = trainer.device if sharded else torch.device("cpu")
        best = weights_path(str(run_dir)).is_file()
        results.update(
            test_results(
                built, run_dir, trainer.settings.eval_batch_size, device, final_weights=not best
            )
        )
        results["tested"] = (
            f"best weights (epoch {summary['best_epoch']})"
            if best
            else f"final weights (step {summary['steps']}; no epoch was validated)"
        )
    if main:
        atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2))
    return results


def _cache_lines(cfg: ExperimentConfig, built: Any) -> dict[str, Any]:
    """What the results say of the teacher's outputs: cached (and why, or why not), or
    read from a `distill lm-cache` cache or a server instead of a teacher."""
    out: dict[str, Any] = {}
    if built.cache_plan is not None and cfg.teacher is not None:
        out["teacher_cache"] = built.cache_plan.reason
        out["teacher_cached"] = built.cache_plan.use
    source = getattr(built.scheme, "source", None)  # lm_kd from a cache or a server
    if source is not None and hasattr(source, "sparse"):
        from distill.llm.sources import describe

        key, line = describe(source)
        out[key] = line
    router = getattr(built.scheme, "router", None)  # lm_kd with several teachers
    if router is not None and hasattr(router, "describe"):
        out["teacher_source"] = router.describe()
    return out


def _trackers(cfg: ExperimentConfig, run_dir: Path, resume: bool, trainer: Trainer) -> list:
    """The experiment trackers `train.report_to` names, opened in the run dir and fed the
    trainer's epoch rows and its rows every `log_every_steps` steps."""
    if not cfg.train.report_to:
        return []
    from distill.core.trackers import flat_params, open_trackers

    params = flat_params(cfg.model_dump(mode="json"))
    trackers = open_trackers(cfg.train.report_to, run_dir, cfg.name, params, resume)
    for tracker in trackers:
        log = lambda row, t=tracker: t.log(row, row["step"])  # noqa: E731
        trainer.callbacks.append(log)
        trainer.step_callbacks.append(log)
    return trackers


def _resume_line(trainer: Trainer, saved: Path) -> str:
    """'resuming at epoch k of N', with the earlier length when train.epochs changed."""
    epochs = trainer.settings.epochs
    line = f"resuming {trainer.run_dir} at epoch {trainer.state['epoch'] + 1} of {epochs}"
    if saved.is_file():
        was = (yaml.safe_load(saved.read_text()) or {}).get("train", {}).get("epochs")
        if was is not None and was != epochs:
            line += f" (was {was})"
    return line + f", step {trainer.state['step']}"


def test_results(
    built: Any,
    run_dir: Path,
    batch_size: int,
    device: torch.device | None = None,
    *,
    final_weights: bool = False,
) -> dict[str, float]:
    """Test metrics of the best student weights (the student as it is with
    `final_weights`), and of the teacher and their agreement.

    Models run on `device` (CPU by default); a sharded model stays where it is."""
    device = device or torch.device("cpu")
    if not final_weights:
        restore_weights(built.student, weights_path(str(run_dir)), "student")
    for model in (built.student, built.teacher):
        if model is not None and not distributed.is_sharded(model):
            model.to(device)
    test = built.data.test
    scheme_test = Contract.of(built.scheme).test_metrics
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
    elif built.cfg.teachers:
        out.update(_teachers_test(built, test, student_logits, targets, batch_size, device))
    return out


def _teachers_test(built, test, student_logits, targets, batch_size, device) -> dict[str, Any]:
    """Several teachers (multi-teacher KD): each one's test accuracy (a specialist's on the
    samples of its classes), and for the generalists' ensemble (mean probabilities) the
    fields a single teacher gets: `teacher_test_*` and the student's `test_agreement`."""
    models = getattr(built.scheme, "teachers", None) or []
    accs, probs = [], []
    for model, spec in zip(models, built.cfg.teachers):
        model.to(device)
        logits = predict_logits(model, test, batch_size=batch_size, device=device).float()
        if spec.classes is None:
            accs.append(float((logits.argmax(-1) == targets).float().mean()))
            probs.append(logits.softmax(-1))
            continue
        cls = torch.tensor(spec.classes)
        own = torch.isin(targets, cls)
        pred = cls[logits.argmax(-1)]
        accs.append(float((pred[own] == targets[own]).float().mean()) if own.any() else 0.0)
    out: dict[str, Any] = {"teachers_test_acc": accs}
    if probs:
        ensemble = torch.stack(probs).mean(0).clamp_min(1e-12).log()
        out.update(
            {f"teacher_test_{k}": v for k, v in classification_metrics(ensemble, targets).items()}
        )
        out["test_agreement"] = agreement(student_logits, ensemble)
    return out
