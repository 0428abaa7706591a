"""What a running `Trainer` says and hears: the epoch's progress (a bar on a terminal,
else a line every 30 s so a log shows the run is alive), and SIGINT/SIGTERM, which ask the
loop to checkpoint after the current step and return."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from tqdm.auto import tqdm

from distill.core import distributed


def _run_name(t: Any) -> str:
    """'<run dir's name>: ', so the lines of several runs in one stream (a demo) say whose
    they are; '' for a trainer without a run dir."""
    run_dir = getattr(t, "run_dir", None)
    return f"{run_dir.name}: " if run_dir is not None else ""


class EpochProgress:
    """The progress of one epoch of `t` (a context manager; `update()` after each batch)."""

    def __init__(self, t: Any):
        self.t = t
        s, st = t.settings, t.state
        self.quiet_since = None
        if not s.progress:  # no tqdm at all: even a disabled bar starts tqdm's monitor thread
            self.bar = None
            return
        self.bar = tqdm(
            total=t.batches_per_epoch,
            initial=st["batch"],
            desc=f"{_run_name(t)}epoch {st['epoch'] + 1}/{s.epochs}",
            disable=not s.progress or None,
            leave=False,
            dynamic_ncols=True,
        )
        # without a terminal there is no bar: a line every 30 s shows the run is alive
        self.quiet_since = time.monotonic() if self.bar.disable else None

    def __enter__(self) -> EpochProgress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def update(self) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if self.quiet_since is not None and time.monotonic() - self.quiet_since > 30:
            self.quiet_since = time.monotonic()
            t, st = self.t, self.t.state
            print(
                f"{_run_name(t)}epoch {st['epoch'] + 1}/{t.settings.epochs}: batch {st['batch']}/"
                f"{t.batches_per_epoch}, step {st['step']}",
                file=sys.stderr,
                flush=True,
            )


def report_row(t: Any, row: dict, metrics: dict, improved: bool) -> None:
    """Hand a logged row to `t`'s callbacks (trackers: once the row's files are on disk)
    and print it."""
    if t.callbacks:
        t.writer.wait()
    for callback in t.callbacks:
        callback(row)
    if t.settings.progress and distributed.is_main():
        where = f"{_run_name(t)}epoch {row['epoch']}/{t.settings.epochs}"
        tqdm.write(  # (printed with or without a terminal)
            f"{where}  loss {row.get('train_loss', float('nan')):.4f}  "
            + "  ".join(f"val {k} {v:.4f}" for k, v in metrics.items())
            + ("  *best" if improved else ""),
            file=sys.stderr,
        )


@contextlib.contextmanager
def stop_on_signals(t: Any):
    """SIGINT/SIGTERM ask the loop to save a checkpoint after the current step and return.

    A second signal aborts at once; atomic writes keep the files on disk intact.
    """
    t._stop_signal = None
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        if t._stop_signal is not None:
            raise KeyboardInterrupt
        t._stop_signal = signal.Signals(signum).name
        tqdm.write(
            f"{t._stop_signal}: saving a checkpoint after this step (send again to abort now)",
            file=sys.stderr,
        )

    with on_stop_signals(handler):
        yield


@contextlib.contextmanager
def on_stop_signals(handler: Any) -> Iterator[None]:
    """`handler` for SIGINT and SIGTERM while the block runs; the previous handlers after."""
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
