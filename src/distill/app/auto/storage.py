"""The Optuna storage `distill auto`'s study lives in (SQLite or PostgreSQL), opened with
heartbeats and with the race of two processes creating one fresh database handled, and the
test of a trial whose worker died on this machine."""

from __future__ import annotations

import contextlib
import os
import socket
import time
import warnings
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna marks the features used here (heartbeats, grouped TPE) experimental, and
    says so on every call; the search works the same without the notes."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def open_storage(url: str) -> Any:
    """RDB storage with heartbeats, so that a dead worker's trial is tried again by another
    (Optuna 4.9 renamed the retry callback; both spellings are accepted)."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(5):
        try:
            return rdb_storage(url)
        except (IntegrityError, OperationalError):
            # two processes creating one fresh database's schema at once (a worker joining
            # as the study starts, a dashboard): the loser finds it made; open it again
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def rdb_storage(url: str) -> Any:
    from optuna.storages import RDBStorage

    with quiet_optuna():
        try:
            from optuna.storages import RetryHeartbeatStaleTrialCallback

            return RDBStorage(
                url,
                heartbeat_interval=30,
                grace_period=120,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
            )
        except (ImportError, TypeError):
            from optuna.storages import RetryFailedTrialCallback

            return RDBStorage(
                url,
                heartbeat_interval=30,
                grace_period=120,
                failed_trial_callback=RetryFailedTrialCallback(max_retry=2),
            )


def dead_here(attrs: dict[str, Any]) -> bool:
    """Whether the trial's worker ran on this machine and its process is gone."""
    worker = attrs.get("worker") or {}
    if worker.get("host") != socket.gethostname() or not worker.get("pid"):
        return False
    try:
        os.kill(int(worker["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False
