"""Many training runs, a few at a time, each a `distill run` in its own process: what
`distill bench` (and any command that sweeps configs) stands on.

Why processes of the CLI rather than a process pool: a run is then exactly what a user
would start by hand, with its own run dir lock, checkpoint and exit code; a signal to the
sweep is forwarded to each running child, which checkpoints and stops; a child whose
parent dies is stopped too (Linux), so no run is left training as an orphan holding its
run dir's lock. A rerun of the sweep skips finished runs, resumes a run stopped part-way
from its checkpoint, and redoes one that failed.

Progress is a line when each run starts and ends (with its result, time and the time the
sweep has left) and, when nothing has been said for 30 s, a line per running child: its
epoch, or its log's last line (a teacher cache being built).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distill.core import rundir
from distill.core.checkpoint import atomic_write_text
from distill.core.errors import RunStopped
from distill.core.progress import clock as _clock
from distill.loop.progress import on_stop_signals


@dataclass
class Job:
    """One training run: its label and its config (a dict that names its run_dir)."""

    label: str
    config: dict[str, Any]
    flags: tuple[str, ...] = ()  # more `distill run` flags, e.g. ("--no-test",)
    result: dict[str, Any] | None = None
    failed: str | None = None
    log: Path | None = None
    seconds: float = 0.0
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _started: float = field(default=0.0, repr=False)

    @property
    def run_dir(self) -> Path:
        return Path(self.config["run_dir"])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGTERM (checkpoint and stop) if the sweep itself dies."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # no libc of that name: nothing to set
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _how(run_dir: Path) -> list[str]:
    """The flags that continue what a run dir holds: resume a stopped run from its
    checkpoint, replace a failed one that never saved, start afresh in an empty place."""
    if rundir.is_marked(run_dir) and (run_dir / "checkpoints" / "last.safetensors").is_file():
        return ["--resume"]
    if rundir.is_marked(run_dir):
        return ["--overwrite"]
    return []


def _last_line(path: Path | None) -> str:
    if path is None or not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 2048))
        tail = f.read().decode(errors="replace").replace("\r", "\n")
    lines = [x.strip() for x in tail.splitlines() if x.strip()]
    return lines[-1] if lines else ""


def _epoch_of(job: Job) -> str:
    path = job.run_dir / "metrics.jsonl"
    if path.is_file():
        line = _last_line(path)
        with contextlib.suppress(ValueError):
            row = json.loads(line)
            return f"epoch {row.get('epoch')}/{job.config.get('train', {}).get('epochs', '?')}"
    line = _last_line(job.log)[:120]
    return "starting" if not line or line.startswith("--- distill run") else line


class Sweep:
    """Runs `jobs`, `parallel` at a time, writing each child's output to `logs/`."""

    def __init__(
        self, jobs: list[Job], *, parallel: int, logs: Path, name: str, heartbeat_s: float = 30.0
    ):
        self.jobs, self.parallel, self.logs, self.name = jobs, max(1, parallel), logs, name
        self.heartbeat_s = heartbeat_s  # a line per running child after this long in silence
        self.configs = logs / "configs"
        self._signal: str | None = None
        self._said = time.monotonic()

    def say(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)
        self._said = time.monotonic()

    def run(self) -> list[Job]:
        """Every job run (or found finished); raises RunStopped after a signal, once every
        child has checkpointed and stopped."""
        todo = []
        for job in self.jobs:
            if rundir.finished(job.run_dir):  # finished earlier: a rerun does not redo it
                job.result = json.loads((job.run_dir / "results.json").read_text())
            else:
                todo.append(job)
        done_before = len(self.jobs) - len(todo)
        self.say(
            f"{self.name}: {len(todo)} run(s) to do"
            + (f", {done_before} finished earlier" if done_before else "")
            + f", {self.parallel} at a time; each run's output is in {self.logs}/"
        )
        with self._signals():
            self._loop(todo)
        if self._signal is not None:
            left = [j.label for j in self.jobs if j.result is None]
            raise RunStopped(
                self._signal,
                f"{self.name} ({len(left)} run(s) not finished; each stopped run saved its "
                f"checkpoint, and the same command continues them)",
            )
        return self.jobs

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        def stop(signum: int, _frame: Any) -> None:
            self._signal = signal.Signals(signum).name
            for job in self.jobs:
                if job._proc is not None and job._proc.poll() is None:
                    job._proc.send_signal(signal.SIGTERM)  # the child checkpoints and exits

        with on_stop_signals(stop):
            yield

    def _loop(self, todo: list[Job]) -> None:
        waiting, running = list(todo), []
        total, finished, started = len(todo), 0, time.monotonic()
        while waiting or running:
            while waiting and len(running) < self.parallel and self._signal is None:
                job = waiting.pop(0)
                self._start(job)
                running.append(job)
            for job in [j for j in running if j._proc.poll() is not None]:
                running.remove(job)
                finished += 1
                self._finish(job)
                elapsed = time.monotonic() - started
                left = len(waiting) + len(running)
                eta = f", about {_clock(elapsed / finished * left)} left" if left else ""
                self.say(f"[{finished}/{total}] {job.label}: {self._outcome(job)}{eta}")
            if self._signal is not None and not running:
                return
            if running and time.monotonic() - self._said > self.heartbeat_s:
                self.say("running: " + "; ".join(f"{j.label} ({_epoch_of(j)})" for j in running))
            time.sleep(0.2)

    def _start(self, job: Job) -> None:
        self.configs.mkdir(parents=True, exist_ok=True)
        slug = job.label.replace("/", "-")
        cfg_path = self.configs / f"{slug}.yaml"
        atomic_write_text(cfg_path, yaml.safe_dump(job.config, sort_keys=False))
        job.log = self.logs / f"{slug}.log"
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")  # one core per run: runs go side by side
        env["PYTHONUNBUFFERED"] = "1"
        how = _how(job.run_dir)
        with open(job.log, "a") as log:
            log.write(f"--- distill run {cfg_path} {' '.join(how)}\n")
            log.flush()
            job._proc = subprocess.Popen(
                [sys.executable, "-m", "distill", "run", str(cfg_path), *how, *job.flags],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C reaches the sweep, which stops each child
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        job._started = time.monotonic()
        self.say(f"started {job.label}" + (" (resuming)" if how == ["--resume"] else ""))

    def _finish(self, job: Job) -> None:
        code = job._proc.returncode
        job.seconds = time.monotonic() - job._started
        job._proc = None
        if code == 0 and rundir.finished(job.run_dir):
            job.result = json.loads((job.run_dir / "results.json").read_text())
        elif code < 0 or code > 128:
            signum = -code if code < 0 else code - 128
            with contextlib.suppress(ValueError):
                job.failed = f"stopped by {signal.Signals(signum).name}"
            job.failed = job.failed or f"stopped (exit {code})"
        else:
            job.failed = f"failed (exit {code}): {_last_line(job.log)[:300]}"

    @staticmethod
    def _outcome(job: Job) -> str:
        if job.result is not None:
            acc, val = job.result.get("test_acc"), job.result.get("best_val_acc")
            score = f"test {100 * acc:.1f}%" if isinstance(acc, float) else "done"
            if not isinstance(acc, float) and isinstance(val, float):
                score = f"val {100 * val:.1f}%"
            return f"{score} in {_clock(job.seconds)}"
        return f"{job.failed} after {_clock(job.seconds)} (log: {job.log})"
