"""`distill auto`: a teacher, data and a budget in; the best student that fits out, with the
evidence that it is the best.

1. The teacher is profiled (validation accuracy, parameters, size, latency on the budget's
   device), and students are proposed from its family and measured before any training
   (`candidates`); those over budget are dropped.
2. An Optuna study searches students x methods x hyperparameters on validation accuracy,
   with the scratch and plain-KD baselines first, Hyperband pruning over epochs, one shared
   exact teacher cache, and its state in SQLite in the output folder (`study`).
3. The best few configurations and their baselines are trained again over several seeds
   and compared with confidence intervals; the test split is read once, at the end
   (`finals`). When distillation does not beat scratch beyond the noise of seeds and of
   a finite validation set, the scratch
   student is handed over and the verdict says so.
4. The student's weights, a `best.yaml` that `distill run` reproduces, an optional export
   and a report with the Pareto frontier are written to the output folder (`report`).

Kill it at any moment and run the same command again: finished trials and runs are kept,
and stopped ones continue from their checkpoints.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.app.auto.settings import AutoSettings, Budget

__all__ = ["AutoResult", "AutoSettings", "Budget", "auto", "choose_preprocessing"]

DEFAULT_TRIALS = 20


@dataclass
class AutoResult:
    """What `distill.auto` hands over."""

    student: Any  # the chosen student (torch.nn.Module) with its best weights
    config: dict[str, Any]  # best.yaml: what `distill run` reproduces
    trials: list[Any]  # every search trial (`distill.app.auto.study.Trial`)
    comparison: list[dict[str, Any]]  # the final comparison, one row per configuration
    verdict: list[str]
    distillation_pays: bool
    out: Path
    report: Path


def _say(settings: AutoSettings, text: str) -> None:
    if settings.progress:
        print(f"auto: {text}", file=sys.stderr, flush=True)


def auto(
    settings: AutoSettings | None = None, *, join: bool = False, **fields: Any
) -> AutoResult | None:
    """Run `distill auto` from Python: `auto(AutoSettings(...))` or `auto(teacher=..., data=...,
    budget=..., ...)` with the fields of `AutoSettings`. With `join=True` this process is
    one more worker on the study at `storage` (it searches, and returns None)."""
    from distill.core.config import validated

    if settings is None:
        settings = validated(fields, AutoSettings, "auto")
    if settings.trials is None and settings.time_s is None:
        settings = settings.model_copy(update={"trials": DEFAULT_TRIALS})
    from distill.core import rundir

    out = settings.out_dir
    _check_out(out)
    with rundir.RunLock(out):
        rundir.write_marker(out, "auto")
        return _auto(settings, join)


def _check_out(out: Path) -> None:
    from distill.core import rundir
    from distill.core.errors import ConfigError

    rundir.check_location(out)
    if out.is_dir() and not rundir.is_marked(out) and any(out.iterdir()):
        raise ConfigError(
            f"auto: {str(out)!r} holds files distill did not write; give another --out "
            "(nothing was changed)"
        )


@dataclass
class _Plan:
    """What the search is about: the data, the teacher, the candidates and the methods."""

    data: Any
    preprocessing: list[str]
    teacher: Any  # candidates.Profile
    proposed: list[Any]
    chosen: list[Any]
    pairing: Any
    methods: list[str]


def _auto(settings: AutoSettings, join: bool) -> AutoResult | None:
    started = time.time()
    deadline = started + settings.time_s if settings.time_s else None
    settings = choose_preprocessing(settings)
    plan = _plan(settings)
    search, trials = _search(settings, plan, deadline, join)
    if join:
        _say(settings, f"worker done: {len(trials)} trial(s) in the study")
        return None
    arms, verdict = _compare(settings, plan, search, trials, deadline)
    return _hand_over_and_report(settings, plan, trials, arms, verdict, started)


def _plan(settings: AutoSettings) -> _Plan:
    """Read the data, profile the teacher, measure and choose the candidates (compressed
    ones too when the budget asks), and pair layers for the feature methods."""
    from distill.app.auto import candidates as cands
    from distill.app.auto.compressed import propose_compressed
    from distill.app.auto.space import methods_for, pair_layers
    from distill.app.build import load_data
    from distill.models import build_model

    data = load_data(settings.data)
    preprocessing = preprocessing_chosen(settings, data)
    for line in preprocessing:
        _say(settings, line)
    _check_labels(data)
    _say(settings, "profiling the teacher and measuring the candidate students")
    teacher_model, teacher = cands.profile_teacher(settings, data)
    proposed = cands.propose(settings, data, teacher, teacher_model)
    compressed, notes = propose_compressed(settings, data, teacher_model, teacher, proposed)
    for note in notes:
        _say(settings, f"compression: {note}")
    proposed += compressed
    chosen = cands.choose(proposed, teacher, settings, compressed)
    _say(
        settings,
        f"teacher: val {100 * teacher.val_acc:.2f}%, {teacher.params:,} params, "
        f"{teacher.latency_ms:.3f} ms; searching {len(chosen)} student(s): "
        + ", ".join(f"{p.label} ({p.params:,} params, {p.latency_ms:.3f} ms)" for p in chosen),
    )
    spec = chosen[0].spec
    probe = build_model(spec["name"], data.input_shape, data.num_classes, spec["args"])
    pairing = pair_layers(probe, teacher_model, data.num_classes)
    methods = methods_for(pairing, settings.methods)
    return _Plan(data, preprocessing, teacher, proposed, chosen, pairing, methods)


def _search(settings: AutoSettings, plan: _Plan, deadline: float | None, join: bool):
    """The study, run to its budget; returns it and its trials."""
    from distill.app.auto.study import Search

    # finalists run every seed afresh; each baseline's search trial counts as its seed 0
    baselines = 2 * min(settings.finalists, len(plan.chosen)) * (settings.seeds - 1)
    search = Search(
        settings, plan.chosen, plan.methods, plan.pairing, deadline=deadline,
        finals_runs=settings.finalists * settings.seeds + baselines,
        second_look_runs=2 * (settings.max_seeds - settings.seeds), joined=join,
    )  # fmt: skip
    search.run()
    trials = search.trials()
    if not join and not any(t.state == "COMPLETE" for t in trials):
        from distill.core.errors import ConfigError

        raise ConfigError(
            "auto: no trial ran to the end within the budget of time or trials; give more "
            "--time or --trials (the study is kept: the same command continues it)"
        )
    return search, trials


def _compare(settings: AutoSettings, plan: _Plan, search: Any, trials: list, deadline):
    """The final comparison over seeds, a second look when undecided, the verdict (all on
    validation), then the test split, read once."""
    from distill.app.auto.finals import (
        MIN_MORE_SEEDS,
        decide,
        plan_arms,
        run_arms,
        test_arms,
        val_hits,
    )

    data, teacher = plan.data, plan.teacher
    arms = plan_arms(trials, {p.label: p for p in plan.chosen}, settings, plan.pairing)
    _say(settings, f"final comparison: {len(arms)} configuration(s) x {settings.seeds} seeds")
    finals_started = time.time()
    ran = run_arms(arms, trials, settings)
    run_s = _seconds_per_run(time.time() - finals_started, ran, settings, search)
    most = _seeds_that_fit(run_s, deadline)  # known before any p-value is read
    fits = most is None or most >= MIN_MORE_SEEDS
    val_hits(arms, data)
    verdict = decide(arms, teacher, settings, fits)
    if _second_look(verdict, settings, most):
        run_arms(arms, trials, settings)
        val_hits([verdict.best, verdict.scratch], data)
        verdict = decide(arms, teacher, settings, fits)
    test_arms(arms, data)
    teacher.test_acc = _teacher_test(settings, data)
    for line in verdict.text:
        _say(settings, line)
    return arms, verdict


def _hand_over_and_report(settings, plan: _Plan, trials, arms, verdict, started) -> AutoResult:
    """The chosen student's files, measured again; the report and auto.json."""
    from distill.app.auto.report import write_report
    from distill.core.checkpoint import atomic_write_text

    handed = _hand_over(verdict.chosen, settings)
    module, config = handed.pop("module"), handed.pop("config_dict")
    verdict.text.append(_as_shipped(handed["measured"], verdict.chosen.student))
    _say(settings, verdict.text[-1])
    passes = _teacher_passes(settings, trials, arms, len(plan.data.train))
    paths = write_report(
        settings.out_dir, settings=settings, teacher=plan.teacher, proposed=plan.proposed,
        chosen=plan.chosen, pairing=plan.pairing, trials=trials, arms=arms, verdict=verdict,
        teacher_passes=passes, handed=handed, preprocessing=plan.preprocessing,
    )  # fmt: skip
    comparison = [a.summary() for a in arms]
    teacher = plan.teacher
    summary = {
        "verdict": verdict.text,
        "distillation_pays": verdict.distillation_pays,
        "teacher": {**teacher.row(), "val_acc": teacher.val_acc, "test_acc": teacher.test_acc},
        "comparison": comparison,
        "handed_over": handed,
        "teacher_passes": passes,
        "preprocessing": plan.preprocessing,
        "trials": len(trials),
        "seconds": time.time() - started,
    }
    atomic_write_text(settings.out_dir / "auto.json", json.dumps(summary, indent=2, default=str))
    _say(settings, f"report: {paths['markdown']}")
    return AutoResult(
        student=module, config=config, trials=trials, comparison=comparison,
        verdict=verdict.text, distillation_pays=verdict.distillation_pays,
        out=settings.out_dir, report=paths["markdown"],
    )  # fmt: skip


def _seconds_per_run(wall: float, ran: int, settings: AutoSettings, search: Any) -> float:
    """What one more final run costs in wall time: as the final runs just took (they ran
    side by side), or, when none ran, a trial's length plus a process start."""
    from distill.app.auto.study import PROCESS_START_S, final_parallel

    if ran:
        return wall / ran
    return (search.mean_full_trial_s() + PROCESS_START_S) / final_parallel(settings)


def _seeds_that_fit(run_s: float, deadline: float | None) -> int | None:
    """New seeds per arm a second look can take in the time left (None: no time budget);
    each new seed is one run of each of its two arms."""
    if deadline is None:
        return None
    return int(max(0.0, deadline - time.time()) / (2 * max(run_s, 1e-3)))


def _second_look(verdict: Any, settings: AutoSettings, most: int | None) -> bool:
    """Whether an undecided verdict gets more seeds: as many as the time left allows."""
    from distill.app.auto.finals import more_seeds

    if not verdict.second_look_fits and settings.max_seeds > settings.seeds:
        verdict.text.append(
            "no time was left for a second look at more seeds, so the verdict is one look at "
            "p < 0.05; give more --time for a second look when the first is undecided"
        )  # (said with the verdict's other lines)
    if not more_seeds(verdict, settings, most):
        return False
    best, scratch = verdict.best, verdict.scratch
    _say(
        settings,
        f"undecided (gain {100 * verdict.gain:+.2f} points, p = {verdict.p:.3f}): a second "
        f"look with {best.seeds} seeds for {best.key} and {scratch.key}",
    )
    return True


def _teacher_test(settings: AutoSettings, data: Any) -> float:
    """The teacher's test accuracy, read with the students' at the end (for the report)."""
    from distill.app.build import load_model
    from distill.evaluate import evaluate

    return evaluate(load_model(settings.teacher, data, "teacher"), data.test, batch_size=512)["acc"]


def choose_preprocessing(settings: AutoSettings) -> AutoSettings:
    """What a user would otherwise get wrong, chosen here and said once the data is read
    (`preprocessing_chosen`): numeric table features are standardised with statistics of
    the training rows unless the data says how to scale (a text or image column is left as
    it is)."""
    data = settings.data
    if data.name == "table" and "scale" not in data.options:
        options = {**data.options, "scale": "auto"}
        settings = settings.model_copy(
            update={"data": data.model_copy(update={"options": options})}
        )
    return settings


def preprocessing_chosen(settings: AutoSettings, data: Any) -> list[str]:
    fitted = getattr(data, "preprocessing", None)
    if settings.data.options.get("scale") == "auto" and fitted:
        return [
            "table features standardised with statistics of the training rows (data.options."
            "scale: standard; set scale: none in the data to keep them as they are)"
        ]
    return []


def _check_labels(data: Any) -> None:
    """auto chooses on validation accuracy: it needs labelled validation samples."""
    from distill.core.errors import ConfigError
    from distill.evaluate import targets_of

    if not bool((targets_of(data.val) >= 0).any()):
        raise ConfigError(
            "auto: the validation split has no labelled samples, and auto chooses students "
            "on validation accuracy; label some samples (a few hundred), or give a labelled "
            "validation set. Unlabelled training inputs are fine: the teacher labels them"
        )


def _hand_over(arm: Any, settings: AutoSettings) -> dict[str, Any]:
    """The chosen arm's best seed (by validation): its weights, best.yaml, an export."""
    import yaml

    from distill.app.build import weights_path
    from distill.core.checkpoint import atomic_write_bytes, atomic_write_text
    from distill.models import build_model
    from distill.models.weights import restore_weights

    out = settings.out_dir
    best = max(range(len(arm.val)), key=lambda i: arm.val[i])
    run_dir = Path(arm.run_dirs[best])
    weights = out / "student.safetensors"
    atomic_write_bytes(weights, weights_path(str(run_dir)).read_bytes())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config.update(name=f"auto-{arm.method}", run_dir=None)
    config["train"]["progress"] = True
    atomic_write_text(out / "best.yaml", yaml.safe_dump(config, sort_keys=False))
    handed: dict[str, Any] = {
        "weights": str(weights),
        "config": str(out / "best.yaml"),
        "from_run": str(run_dir),
        "config_dict": config,
    }
    if settings.export is not None:
        from distill.app.artifacts import export_run

        dest = out / "export" / settings.export
        info = export_run(run_dir, settings.export, dest, overwrite=True)
        handed["export"] = info["path"]
    spec = arm.student.spec
    from distill.app.build import load_data

    data = load_data(settings.data)
    module = build_model(spec["name"], data.input_shape, data.num_classes, spec["args"])
    restore_weights(module, weights, "student")
    from distill.app.auto.compressed import remeasure

    handed["measured"] = remeasure(module, arm.student, settings, data)
    handed["module"] = module
    return handed


def _as_shipped(measured: dict[str, Any], planned: Any) -> str:
    """One line: the handed-over student measured again after training, against the
    figures measured before training and the budget."""
    how = planned.route["measured"] if planned.route else "PyTorch"
    text = (
        f"handed-over student measured again ({how}): {measured['params']:,} params, "
        f"{measured['size_kib']} KiB, {measured['latency_ms']:.4f} ms at batch 1 "
        f"(before training: {planned.latency_ms:.4f} ms)"
    )
    if measured["over"]:
        text += (
            f"; now OVER the budget: {'; '.join(measured['over'])} (a latency within a few "
            "percent of its bound is timing noise; rerun on a quiet machine to confirm)"
        )
    return text


def _teacher_passes(
    settings: AutoSettings, trials: list[Any], arms: list[Any], n: int
) -> dict[str, int]:
    """Samples that went through the teacher: as run (the shared cache's entries, samples x
    views from their metadata, plus every run whose teacher could not be cached, one pass
    per training sample per epoch), and had every run used a live teacher."""
    done = 0
    for meta in (settings.out_dir / "teacher-cache").glob("*/meta.json"):
        info = json.loads(meta.read_text())
        done += info["samples"] * max(info.get("views") or 0, info.get("epoch_views") or 0, 1)
    live = 0
    runs = {t.run_dir for t in trials if t.method != "scratch" and t.run_dir}
    runs |= {d for a in arms if a.method != "scratch" for d in a.run_dirs}
    for run_dir in runs:
        path = Path(run_dir) / "results.json"
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        passes = int(result.get("epochs", 0)) * n
        live += passes
        if not result.get("teacher_cached", False):  # its teacher ran live
            done += passes
    return {"cached": done, "live": live}
