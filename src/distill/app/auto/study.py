"""The search of `distill auto`: an Optuna study over (student, method, hyperparameters),
scored on validation accuracy, never on test.

- **Storage**: Optuna's RDB storage, SQLite in the output folder by default, so the study
  survives a kill: rerun the command and it continues. A trial that was stopped part-way
  (a signal, a kill, a crashed worker) is tried again with the same parameters, resuming
  its run dir from the last checkpoint. `storage` may name PostgreSQL or MySQL
  (SQLAlchemy URLs), and workers on several machines then join one study
  (`distill auto --join URL`); Optuna's heartbeats hand a dead worker's trial to another.
- **Sampler and pruner**: TPE (multivariate, with a constant liar when workers share the
  study) and Hyperband over epochs: a trial is stopped at a rung when its validation
  accuracy is in the bottom part of the trials that reached it. The baselines are never
  pruned.
- **Baselines first**: every candidate student trained from scratch and with plain KD at its
  defaults are the first trials.
- **One teacher cache**: every trial points at the same exact teacher cache (its entries are
  keyed by teacher, data and augmentation), so the teacher runs once per sample and view
  however many trials read it.
- **Time**: the search stops when the next trial plus the final comparison would not fit in
  `time_s`; the final comparison's length is estimated from the trials' own durations.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.app.auto.candidates import Profile, spec_for
from distill.app.auto.settings import AutoSettings
from distill.app.auto.space import BASELINES, Pairing, objective_for
from distill.app.auto.storage import dead_here, open_storage, quiet_optuna
from distill.core.errors import ConfigError, RunStopped

STUDY = "distill-auto"
SECOND_LOOK_SHARE = 0.2  # time is kept for a second look costing at most this share of --time
PROCESS_START_S = 5.0  # a final run's own process: Python, torch and the data, before training


def final_parallel(settings: AutoSettings) -> int:
    """How many final runs go side by side: one per core on a CPU (each with one thread),
    up to 4; one on an accelerator."""
    if settings.device not in ("auto", "cpu"):
        return 1
    return max(1, min(4, os.cpu_count() or 1))


@dataclass
class Trial:
    """One finished search trial, as the report and the finals read it."""

    number: int
    student: str
    method: str
    state: str  # COMPLETE, PRUNED, FAIL
    val_acc: float | None
    epochs: int
    seconds: float
    baseline: bool
    params: dict[str, Any]
    run_dir: str | None
    config: dict[str, Any] | None


def run_config(
    settings: AutoSettings,
    student: Profile,
    method: str,
    objective: dict[str, Any],
    *,
    lr: float,
    seed: int,
    run_dir: Path,
) -> dict[str, Any]:
    """The `distill run` config of one trial or final run."""
    teacher = settings.teacher.model_dump(mode="json", exclude_none=True)
    cfg: dict[str, Any] = {
        "name": f"auto-{method}",
        "run_dir": str(run_dir),
        "scheme": "supervised" if method == "scratch" else "offline",
        "data": settings.data.model_dump(mode="json"),
        "student": spec_for(student, method),
        "objective": objective,
        "train": {
            "epochs": settings.epochs,
            "batch_size": settings.batch_size,
            "optimizer": {"name": "adamw", "lr": lr, "weight_decay": 5e-4},
            "schedule": {"name": "cosine", "warmup_steps": 50},
            "seed": seed,
            "device": settings.device,
            "workers": settings.workers,
            "progress": False,
            # one exact cache for every trial: the teacher runs once per sample and view
            "cache": {"dir": str((settings.out_dir / "teacher-cache").resolve())},
        },
    }
    if method != "scratch":
        cfg["teacher"] = teacher
    return cfg


def fingerprint(settings: AutoSettings, candidates: list[Profile], methods: list[str]) -> str:
    """What a study was made for: a rerun with other data, teacher or candidates is refused."""
    key = {
        "teacher": settings.teacher.model_dump(mode="json"),
        "data": settings.data.model_dump(mode="json"),
        "candidates": [c.label for c in candidates],
        "methods": methods,
        "epochs": settings.epochs,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


# what a worker on another machine needs to join: everything but where it writes and how
# long it works
LOCAL_FIELDS = {"out", "storage", "time_s", "trials", "progress", "device", "workers"}


def shared_settings(settings: AutoSettings) -> dict[str, Any]:
    return settings.model_dump(mode="json", exclude=LOCAL_FIELDS)


def settings_of_study(url: str) -> dict[str, Any]:
    """The settings a study was started with, for a worker that joins it."""
    import optuna

    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).is_file():
        raise ConfigError(  # (opening it would create an empty database file)
            f"auto --join: {url!r} does not exist; give the URL of the study the first "
            "worker made (its --out holds study.db)"
        )

    with quiet_optuna():
        try:
            study = optuna.load_study(study_name=STUDY, storage=open_storage(url))
        except KeyError:
            raise ConfigError(
                f"auto --join: {url.split('@')[-1]!r} holds no distill auto study yet; start "
                "one with --storage URL first"
            ) from None
        except Exception as e:
            raise ConfigError(
                f"auto --join: cannot open the study storage: {str(e).splitlines()[0][:300]}"
            ) from None
    if "settings" not in study.user_attrs:
        raise ConfigError("auto --join: that study was not started by distill auto")
    return dict(study.user_attrs["settings"])


class Search:
    """Runs the study (see the module docstring); `trials()` lists what it found."""

    def __init__(
        self,
        settings: AutoSettings,
        candidates: list[Profile],
        methods: list[str],
        pairing: Pairing | None,
        *,
        deadline: float | None,
        finals_runs: int,
        second_look_runs: int = 0,
        joined: bool = False,
    ):
        self.settings, self.pairing, self.methods = settings, pairing, methods
        self.candidates = {c.label: c for c in candidates}
        self.deadline, self.finals_runs, self.joined = deadline, finals_runs, joined
        self.second_look_runs = second_look_runs
        self.started = time.time()
        self.study = self._open(fingerprint(settings, candidates, methods))

    # ------------------------------------------------------------------ the study
    def _open(self, key: str) -> Any:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)  # the lines above say enough
        try:
            storage = open_storage(self.settings.storage_url)
        except Exception as e:  # SQLAlchemy's errors: an unreachable server, a bad URL
            raise ConfigError(
                f"auto: cannot open the study storage {self._shown_url()}: "
                f"{str(e).splitlines()[0][:300]}; check the URL and that the server is up"
            ) from None
        self.storage = storage
        known = {s.study_name for s in optuna.get_all_study_summaries(storage)}
        if self.joined and STUDY not in known:
            raise ConfigError(
                f"auto --join: {self._shown_url()} holds no distill auto study yet; start "
                "one with --storage URL first"
            )
        with quiet_optuna():
            study = self._create(storage)
        made_for = study.user_attrs.get("fingerprint")
        if made_for is None and STUDY in known and study.trials:
            made_for = "unknown"
        if made_for is not None and made_for != key:
            raise ConfigError(
                f"auto: {self._shown_url()} holds another study (made for other data, teacher, "
                f"candidates or epochs); choose another --out (or --storage), or remove it "
                f"yourself if it is no longer wanted"
            )
        if made_for is None:
            study.set_user_attr("fingerprint", key)
            study.set_user_attr("settings", shared_settings(self.settings))
            for label in self.candidates:  # the baselines, first
                for method in BASELINES:
                    study.enqueue_trial(
                        {"student": label, "method": method, "lr": self.settings.lr},
                        user_attrs={"baseline": True},
                    )
        return study

    def _create(self, storage: Any) -> Any:
        import optuna

        return optuna.create_study(
            study_name=STUDY,
            storage=storage,
            direction="maximize",
            load_if_exists=True,
            sampler=optuna.samplers.TPESampler(
                seed=self.settings.seed,
                multivariate=True,
                group=True,
                constant_liar=True,
                n_startup_trials=max(4, 2 * len(self.candidates)),
            ),
            pruner=optuna.pruners.HyperbandPruner(
                min_resource=max(1, self.settings.epochs // 10),
                max_resource=self.settings.epochs,
                reduction_factor=3,
            ),
        )

    def _shown_url(self) -> str:
        url = self.settings.storage_url
        if "@" in url:  # never print a password
            scheme, rest = url.split("://", 1)
            url = f"{scheme}://***@{rest.split('@', 1)[1]}"
        return repr(url)

    def _retry_interrupted(self) -> None:
        """Trials a signal stopped, or left RUNNING by a killed process of this machine: tried
        again with the same parameters, resuming their run dirs. (A dead worker elsewhere is
        found by Optuna's heartbeat, which hands its trial to another worker.)"""
        import optuna

        retried = {t.user_attrs.get("retry_of") for t in self.study.trials}
        study_id = self.storage.get_study_id_from_name(STUDY)
        for t in self.study.trials:
            stale = t.state == optuna.trial.TrialState.RUNNING and dead_here(t.user_attrs)
            stopped = t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get("interrupted")
            if (stale or stopped) and t.number not in retried:
                if stale:  # its process is gone: nobody runs it
                    trial_id = self.storage.get_trial_id_from_study_id_trial_number(
                        study_id, t.number
                    )
                    self.storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
                attrs = {
                    k: v for k, v in t.user_attrs.items() if k not in ("interrupted", "worker")
                }
                self.study.enqueue_trial(
                    t.params, user_attrs={**attrs, "retry_of": t.number}, skip_if_exists=False
                )

    # ------------------------------------------------------------------ one trial
    def objective(self, trial: Any) -> float:
        """One trial. A signal while it trains lets its run checkpoint and stop (the
        trainer's own handler); one while it is set up or measured stops it at once. Either
        way the trial is marked interrupted, the command ends with RunStopped, and a rerun
        tries the trial again."""
        from distill.loop.progress import on_stop_signals

        def stop(signum: int, _frame: object) -> None:
            raise RunStopped(signal.Signals(signum).name, f"trial {trial.number} of distill auto")

        scope = (
            on_stop_signals(stop)
            if threading.current_thread() is threading.main_thread()
            else contextlib.nullcontext()
        )
        try:
            with scope:
                return self._objective(trial)
        except RunStopped:
            trial.set_user_attr("interrupted", True)
            raise

    def _objective(self, trial: Any) -> float:
        import optuna

        from distill.app.run import run_experiment
        from distill.core.config import parse_config

        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
        baseline = bool(trial.user_attrs.get("baseline"))
        label = trial.suggest_categorical("student", list(self.candidates))
        # the baselines are always choices, so their enqueued trials fit the distribution
        choices = [*BASELINES, *(m for m in self.methods if m not in BASELINES)]
        method = trial.suggest_categorical("method", choices)
        base_lr = self.settings.lr
        lr = base_lr if baseline else trial.suggest_float("lr", base_lr / 3, base_lr * 3, log=True)
        objective = objective_for(method, None if baseline else trial, self.pairing)
        run_dir = Path(trial.user_attrs.get("run_dir") or self._trial_dir(trial.number))
        cfg = run_config(
            self.settings, self.candidates[label], method, objective, lr=lr, seed=0, run_dir=run_dir
        )
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("config", cfg)
        resume = (run_dir / "checkpoints" / "last.safetensors").is_file()

        def report(row: dict[str, Any]) -> None:
            trial.report(row["val_acc"], row["epoch"])
            trial.set_user_attr("epochs", row["epoch"])
            if not baseline and trial.should_prune():
                raise optuna.TrialPruned()

        started = time.monotonic()
        try:
            result = run_experiment(
                parse_config(cfg), resume=resume, overwrite=not resume, callbacks=[report],
                test=False,
            )  # fmt: skip
        finally:
            trial.set_user_attr(
                "seconds", trial.user_attrs.get("seconds", 0) + time.monotonic() - started
            )
        stopped = result.get("stopped_by")
        if stopped in ("SIGINT", "SIGTERM"):
            trial.set_user_attr("interrupted", True)
            raise RunStopped(stopped, f"trial {trial.number} of distill auto")
        if result.get("best_val_acc") is None:
            raise optuna.TrialPruned()  # no epoch was validated
        return float(result["best_val_acc"])

    def _trial_dir(self, number: int) -> Path:
        return self.settings.out_dir / "trials" / f"trial-{number:04d}"

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        import optuna

        self._retry_interrupted()
        callbacks = [self._progress, self._stop_in_time]
        if self.settings.trials is not None:  # searched trials, the baselines not counted
            states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
            total = self.settings.trials + len(BASELINES) * len(self.candidates)
            callbacks.append(optuna.study.MaxTrialsCallback(total, states=states))
            if self._count(states) >= total:
                return
        timeout = None if self.deadline is None else max(1.0, self.deadline - time.time())
        with quiet_optuna():
            self.study.optimize(
                self.objective, timeout=timeout, callbacks=callbacks, catch=(), gc_after_trial=True
            )

    def _count(self, states: tuple) -> int:
        return sum(t.state in states for t in self.study.trials)

    def mean_full_trial_s(self) -> float:
        """Seconds of a trial run to the end (from the complete ones; else the longest)."""
        import optuna

        done = [t for t in self.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        times = [t.user_attrs.get("seconds", 0.0) for t in done] or [
            t.user_attrs.get("seconds", 0.0) for t in self.study.trials
        ]
        return max(times) if not done else sum(times) / len(times)

    def _stop_in_time(self, study: Any, _trial: Any) -> None:
        """Stop when one more trial and then the final runs would not end by the deadline.
        A final run is a process of its own: a trial's length plus its start-up."""
        if self.deadline is None:
            return
        trial_s = self.mean_full_trial_s()
        run_s = (trial_s + PROCESS_START_S) / final_parallel(self.settings)
        finals_s = self.finals_runs * run_s
        second_s = self.second_look_runs * run_s
        if second_s <= SECOND_LOOK_SHARE * (self.deadline - self.started):
            finals_s += second_s  # kept for a second look when it is cheap enough
        if time.time() + trial_s + finals_s > self.deadline:
            study.stop()

    def _progress(self, study: Any, trial: Any) -> None:
        if not self.settings.progress:
            return
        import optuna

        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        best = max(done, key=lambda t: t.value) if done else None
        state = trial.state.name.lower()
        if trial.state == optuna.trial.TrialState.PRUNED:
            state += f" at epoch {trial.user_attrs.get('epochs', 0)}"
        value = f"val {100 * trial.value:.1f}%" if trial.value is not None else "no score"
        left = ""
        if self.deadline is not None:
            left = f" · {max(0, self.deadline - time.time()) / 60:.0f} min left"
        elif self.settings.trials is not None:
            finished = self._count(
                (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
            )
            total = self.settings.trials + len(BASELINES) * len(self.candidates)
            left = f" · {max(0, total - finished)} trial(s) left"
        best_s = (
            f"best {100 * best.value:.1f}% (trial {best.number}, {best.params.get('method')})"
            if best
            else "no best yet"
        )
        print(
            f"trial {trial.number}: {trial.params.get('method')} on "
            f"{trial.params.get('student')} ({self.candidates[trial.params['student']].params:,} "
            f"params): {value}, {state} · {best_s}{left}",
            file=sys.stderr,
            flush=True,
        )

    def trials(self) -> list[Trial]:
        out = []
        for t in self.study.trials:
            if t.state.name not in ("COMPLETE", "PRUNED", "FAIL"):
                continue
            out.append(
                Trial(
                    number=t.number,
                    student=t.params.get("student", "?"),
                    method=t.params.get("method", "?"),
                    state=t.state.name,
                    val_acc=t.value,
                    epochs=int(t.user_attrs.get("epochs", 0)),
                    seconds=float(t.user_attrs.get("seconds", 0.0)),
                    baseline=bool(t.user_attrs.get("baseline")),
                    params={k: v for k, v in t.params.items() if k not in ("student", "method")},
                    run_dir=t.user_attrs.get("run_dir"),
                    config=t.user_attrs.get("config"),
                )
            )
        return out
