"""The final comparison of `distill auto`, and the verdict.

The search's best few configurations (by validation accuracy), and for each of their
students the same student from scratch and with plain KD at its defaults, are trained
again over `seeds` seeds at full length (a search trial that already ran to the end with
seed 0 counts as that seed's run). The runs go through `distill.app.runner`, so a kill
or signal loses nothing and a rerun continues them. Every choice is made on validation
accuracy; the test split is read once, at the end, for the runs of the comparison.

The verdict hands over the best configuration by mean validation accuracy, unless it does
not beat the same student from scratch beyond noise: then it says so plainly and hands
over the scratch student. Two one-sided tests must both pass: over the seeds (Welch's
t-test on the runs' validation accuracies: is the gain more than training noise?) and
over the validation samples (a paired t-test on each sample's share of runs right: is it
more than the luck of a finite validation set, which every run shares?). With an
accuracy floor, the smallest student whose mean validation accuracy meets it is
preferred.

An undecided verdict (a gain whose p is above the bound but below P_PROMISING) gets a
second look: the best configuration and its scratch baseline run `seeds` more seeds (up to
`max_seeds`) and the test is made again on all of them. Two looks at the data at 5% each
would pass a true null about 8% of the time, so with a second look possible both use
Pocock's boundary for two looks, p < 0.029, which keeps the whole procedure at 5% (Pocock
1977, "Group sequential methods in the design and analysis of clinical trials").
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.app.auto.candidates import Profile
from distill.app.auto.settings import AutoSettings
from distill.app.auto.space import objective_for
from distill.app.auto.study import Trial, final_parallel, run_config
from distill.app.bench import ci95, welch_p

P_NOISE = 0.05  # "beyond seed noise": one-sided Welch p below this, with one look
P_TWO_LOOKS = 0.029  # the same at each of two looks (Pocock), when a second look may come
P_PROMISING = 0.3  # an undecided gain with p below this earns a second look


@dataclass
class Arm:
    """One configuration of the final comparison, over seeds."""

    key: str
    role: str  # 'finalist', 'scratch' or 'kd'
    student: Profile
    method: str
    objective: dict[str, Any]
    lr: float
    trial: int | None = None
    seeds: int = 0  # how many seeds it runs (0: settings.seeds)
    run_dirs: list[str] = field(default_factory=list)
    # per labelled validation sample: the share of its runs that classify it right
    hits: Any = None
    val: list[float] = field(default_factory=list)
    test: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def stats(values: list[float]) -> dict[str, float | None]:
            if not values:
                return {"mean": None, "std": None, "ci95": None}
            return {
                "mean": statistics.mean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "ci95": ci95(values),
            }

        return {
            "key": self.key,
            "role": self.role,
            "student": self.student.label,
            "params": self.student.params,
            "method": self.method,
            "trial": self.trial,
            "val": stats(self.val),
            "test": stats(self.test),
            "val_runs": self.val,
            "test_runs": self.test,
            "run_dirs": self.run_dirs,
        }


def _full(trial: Trial, epochs: int) -> bool:
    return trial.state == "COMPLETE" and trial.epochs >= epochs and trial.run_dir is not None


def plan_arms(
    trials: list[Trial], candidates: dict[str, Profile], settings: AutoSettings, pairing: Any
) -> list[Arm]:
    """The finalists (best distinct searched configurations) and their students' baselines."""
    searched = sorted(
        (t for t in trials if t.state == "COMPLETE" and not t.baseline and t.config is not None),
        key=lambda t: -(t.val_acc or 0.0),
    )
    arms: list[Arm] = []
    seen = set()
    for t in searched:
        sig = (t.student, t.method, repr(sorted(t.config["objective"].items())), t.params.get("lr"))
        if sig in seen or t.method == "scratch":
            continue
        seen.add(sig)
        arms.append(
            Arm(
                key=f"{t.method} (trial {t.number}) on {t.student}",
                role="finalist",
                student=candidates[t.student],
                method=t.method,
                objective=t.config["objective"],
                lr=t.config["train"]["optimizer"]["lr"],
                trial=t.number,
            )
        )
        if len(arms) == settings.finalists:
            break
    students = [a.student.label for a in arms]
    if not students:  # no searched trial finished: compare the baselines of the best student
        best = max((t for t in trials if t.state == "COMPLETE"), key=lambda t: t.val_acc or 0.0)
        students = [best.student]
    for label in dict.fromkeys(students):
        for method in ("scratch", "kd"):
            base = next(
                (t for t in trials if t.baseline and t.student == label and t.method == method),
                None,
            )
            arms.append(
                Arm(
                    key=f"{method} at its defaults on {label}",
                    role=method,
                    student=candidates[label],
                    method=method,
                    objective=objective_for(method, None, pairing),
                    lr=settings.lr,
                    trial=base.number if base is not None else None,
                )
            )
    return arms


def run_arms(arms: list[Arm], trials: list[Trial], settings: AutoSettings) -> int:
    """Every arm over every seed, full length, without reading the test split.

    A baseline's search trial counts as its seed-0 run when it ran to the end. A
    finalist's never does: it was picked as the best of many on that very run, so its
    score there is biased upwards (the winner's curse); finalists run seeds 1..seeds."""
    from distill.app.runner import Job, Sweep

    by_number = {t.number: t for t in trials}
    jobs = []
    for i, arm in enumerate(arms):
        n = arm.seeds or settings.seeds
        seeds = range(n) if arm.role != "finalist" else range(1, n + 1)
        arm.run_dirs = []  # (runs finished by an earlier call are found, not redone)
        for seed in seeds:
            reused = by_number.get(arm.trial)
            if seed == 0 and reused is not None and _full(reused, settings.epochs):
                arm.run_dirs.append(reused.run_dir)
                continue
            run_dir = settings.out_dir / "finals" / f"arm{i}-{arm.role}" / f"seed{seed}"
            cfg = run_config(
                settings, arm.student, arm.method, arm.objective, lr=arm.lr, seed=seed,
                run_dir=run_dir.resolve(),
            )  # fmt: skip
            cfg["train"]["progress"] = True  # into the run's log, which the sweep's lines read
            arm.run_dirs.append(str(run_dir.resolve()))
            jobs.append(Job(f"arm{i}-{arm.role}/seed{seed}", cfg, flags=("--no-test",)))
    if jobs:
        Sweep(
            jobs,
            parallel=final_parallel(settings),
            logs=settings.out_dir / "finals" / "logs",
            name="final runs",
        ).run()
        failed = [j for j in jobs if j.result is None]
        if failed:
            from distill.core.errors import ConfigError

            raise ConfigError(
                f"auto: {len(failed)} final run(s) did not finish: "
                + "; ".join(f"{j.label} ({j.failed}; log {j.log})" for j in failed[:4])
                + ". Fix the cause and run the same command again: finished runs are kept"
            )
    import json

    for arm in arms:
        arm.val = [
            float(json.loads((Path(d) / "results.json").read_text())["best_val_acc"])
            for d in arm.run_dirs
        ]
    return len(jobs)


def _run_model(arm: Arm, run_dir: str, data: Any) -> Any:
    """The student of one of the arm's runs, with its best weights."""
    from distill.app.build import weights_path
    from distill.models import build_model
    from distill.models.weights import restore_weights

    spec = arm.student.spec
    model = build_model(spec["name"], data.input_shape, data.num_classes, spec["args"])
    restore_weights(model, weights_path(run_dir), "student")
    return model.eval()


def test_arms(arms: list[Arm], data: Any) -> None:
    """The test split, read once: every arm's runs, from their best weights."""
    from distill.evaluate import evaluate

    for arm in arms:
        arm.test = [
            evaluate(_run_model(arm, d, data), data.test, batch_size=512)["acc"]
            for d in arm.run_dirs
        ]


def val_hits(arms: list[Arm], data: Any) -> None:
    """Each arm's `hits`: per labelled validation sample, the share of its runs that get it
    right (what the paired test over validation samples reads)."""
    import numpy as np

    from distill.evaluate import predict_logits, targets_of

    targets = targets_of(data.val)
    labelled = targets >= 0
    for arm in arms:
        right = [
            (predict_logits(_run_model(arm, d, data), data.val, batch_size=512).argmax(-1)
             == targets)[labelled].numpy()
            for d in arm.run_dirs
        ]  # fmt: skip
        arm.hits = np.mean(right, axis=0)


def paired_p(better: Any, than: Any) -> float:
    """One-sided p that `better` beats `than` on new samples: a paired t-test over the
    validation samples of the per-sample differences in the share of runs right. It
    counts the noise of a finite validation set, which the runs share and a test over
    seeds cannot see. 1.0 when no sample differs."""
    import numpy as np
    from scipy import stats

    diff = np.asarray(better, dtype=float) - np.asarray(than, dtype=float)
    if not np.any(diff):
        return 1.0
    if np.all(diff == diff[0]):  # every sample moved the same way: no spread to test
        return 0.0 if diff[0] > 0 else 1.0
    return float(stats.ttest_1samp(diff, 0.0, alternative="greater").pvalue)


@dataclass
class Verdict:
    chosen: Arm
    text: list[str]
    distillation_pays: bool
    floor: float | None
    meets_floor: bool | None
    best: Arm | None = None  # the best distilled arm, handed over or not
    scratch: Arm | None = None
    p: float = 1.0  # over the seeds (Welch)
    gain: float = 0.0
    second_look_fits: bool = True
    p_samples: float | None = None  # over the validation samples (paired), when measured

    @property
    def undecided(self) -> bool:
        """A gain that more seeds might settle either way, with a second look to come."""
        return (
            self.second_look_fits
            and not self.distillation_pays
            and self.gain > 0
            and self.p < P_PROMISING
            # more seeds do not shrink the noise of the validation set itself
            and (self.p_samples is None or self.p_samples < P_PROMISING)
        )


def _mean(values: list[float]) -> float:
    return statistics.mean(values) if values else float("nan")


def bound(settings: AutoSettings, second_look_fits: bool = True) -> float:
    """The p-value bound of each look: two looks at Pocock's 2.9% when a second look may
    come (`max_seeds` above `seeds`, and time for it), else one look at 5%. Whether a
    second look fits is known before the first p-value is read, so the choice of bound
    does not depend on the data."""
    two = settings.max_seeds > settings.seeds and second_look_fits
    return P_TWO_LOOKS if two else P_NOISE


MIN_MORE_SEEDS = 2  # a second look at fewer new seeds per arm than this is not worth it


def more_seeds(verdict: Verdict, settings: AutoSettings, most: int | None = None) -> bool:
    """Give the undecided verdict's two arms their second look's seeds: `seeds` more each
    (up to `max_seeds`, and to `most` when time allows no more). False when the verdict is
    decided, they have had them, or fewer than MIN_MORE_SEEDS new seeds each would fit."""
    arms = [verdict.best, verdict.scratch]
    if not verdict.undecided or any(a is None or a.seeds for a in arms):
        return False
    more = min(settings.max_seeds, 2 * settings.seeds) - settings.seeds
    if most is not None:
        more = min(more, most)
    if more < MIN_MORE_SEEDS:
        return False
    for arm in arms:
        arm.seeds = settings.seeds + more
    return True


def _notes(teacher: Profile, scratch: Arm, settings: AutoSettings, floor, meets) -> list[str]:
    """The verdict's notes: a teacher below scratch, and the accuracy floor."""
    notes = []
    if teacher.val_acc is not None and teacher.val_acc < _mean(scratch.val):
        notes.append(
            f"note: the teacher ({100 * teacher.val_acc:.2f}% on validation) scores below the "
            "scratch student; a better teacher is the first thing to try"
        )
    if floor is not None:
        notes.append(
            f"accuracy floor {settings.budget.min_accuracy} = {100 * floor:.2f}%: "
            + ("met" if meets else "NOT met by any student that fits the budget")
        )
    return notes


def decide(
    arms: list[Arm], teacher: Profile, settings: AutoSettings, second_look_fits: bool = True
) -> Verdict:
    """Which arm is handed over, and why, in plain words."""
    floor = None
    if settings.budget.min_accuracy is not None:
        floor = settings.budget.min_accuracy.floor(teacher.val_acc or 0.0)
    ranked = sorted(arms, key=lambda a: -_mean(a.val))
    best = (
        next(a for a in ranked if a.role != "scratch")
        if any(a.role != "scratch" for a in ranked)
        else ranked[0]
    )
    if floor is not None:  # the smallest student that meets the floor, then the best of it
        meeting = [a for a in ranked if a.role != "scratch" and _mean(a.val) >= floor]
        if meeting:
            smallest = min(a.student.params for a in meeting)
            best = next(a for a in meeting if a.student.params == smallest)
    scratch = next(a for a in arms if a.role == "scratch" and a.student is best.student)
    gain = _mean(best.val) - _mean(scratch.val)
    p = welch_p(best.val, scratch.val, alternative="greater")
    p_samples = None
    if best.hits is not None and scratch.hits is not None:
        p_samples = paired_p(best.hits, scratch.hits)
    shown = lambda v: "< 0.001" if v < 0.001 else f"= {v:.3f}"  # noqa: E731
    text = [
        f"best distilled configuration: {best.key}, validation {100 * _mean(best.val):.2f}% "
        f"(+/- {100 * (ci95(best.val) or 0):.2f}, 95% CI over {len(best.val)} seeds)",
        f"the same student from scratch: {100 * _mean(scratch.val):.2f}%; gain "
        f"{100 * gain:+.2f} points, one-sided p over the seeds (Welch) {shown(p)}"
        + (
            f", over the {len(best.hits)} validation samples (paired) {shown(p_samples)}"
            if p_samples is not None
            else ""
        ),
    ]
    limit = bound(settings, second_look_fits)
    pays = gain > 0 and p < limit and (p_samples is None or p_samples < limit)
    chosen = best if pays else scratch
    if pays:
        text.append(
            "distillation beats scratch beyond the noise of seeds and of a finite validation "
            "set: handing over the distilled student"
        )
    else:
        text.append(
            "distillation does not beat training from scratch beyond noise (a p >= "
            f"{limit}, or no gain) for this student and budget: handing over the scratch "
            "student"
        )
    meets = None if floor is None else _mean(chosen.val) >= floor
    text += _notes(teacher, scratch, settings, floor, meets)
    return Verdict(
        chosen, text, pays, floor, meets, best, scratch, p, gain, second_look_fits, p_samples
    )
