"""Experiment trackers for `train.report_to`: TensorBoard, MLflow, Weights & Biases.

Each tracker receives every row the metrics log writes (one per epoch: lr, each training
loss component, every validation metric), under the row's optimizer step, and nothing else.
`metrics.jsonl` / `metrics.csv` are always written ('csv' in `report_to` names them). Each
tracker is an optional dependency, imported only when named; a missing one is a clear error
at validate time, naming the package to install. Everything is written inside the run dir
(`tensorboard/`, `mlruns/`, `wandb/`), so no tracker needs a server or the network:

- tensorboard: `torch.utils.tensorboard.SummaryWriter` event files (`tensorboard --logdir`);
- mlflow: a local SQLite store (`mlflow ui --backend-store-uri sqlite:///<run_dir>/mlruns/mlflow.db`);
- wandb: offline mode unless `WANDB_MODE` says otherwise (`wandb sync` uploads later).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from distill.core.errors import ConfigError

# tracker name -> (module to import, package to install)
PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
}
TRACKERS = ("csv", *PACKAGES)
# what trackers write into a run dir: whole folders of theirs (distill.core.rundir)
TRACKER_DIRS = ("tensorboard", "mlruns", "wandb")


class Tracker(Protocol):
    def log(self, row: dict[str, Any], step: int) -> None: ...

    def close(self) -> None: ...


def missing(names: Sequence[str]) -> list[str]:
    """For each named tracker whose package is not installed: the problem and the fix."""
    out = []
    for name in names:
        module, package = PACKAGES.get(name, (None, None))
        if module is not None and importlib.util.find_spec(module) is None:
            out.append(
                f"train.report_to: {name!r} needs the {package} package, which is not "
                f"installed; pip install {package} (or drop it from report_to)"
            )
    return out


def _scalars(row: dict[str, Any]) -> dict[str, float]:
    skip = ("epoch", "step")
    return {
        k: float(v)
        for k, v in row.items()
        if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class TensorBoardTracker:
    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, row: dict[str, Any], step: int) -> None:
        for key, value in _scalars(row).items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def tracking_uri(run_dir: Path) -> str:
    """The run dir's MLflow store: SQLite in `mlruns/mlflow.db` (MLflow 3 keeps the plain
    file store in maintenance mode and refuses it by default)."""
    return f"sqlite:///{(run_dir / 'mlruns' / 'mlflow.db').absolute()}"


class MLflowTracker:
    """One MLflow run per `distill run` (a resume opens a new one, tagged as such), through
    an explicit client: no global tracking URI is set for the rest of the process."""

    def __init__(self, run_dir: Path, name: str, params: dict[str, Any], resumed: bool):
        from mlflow.tracking import MlflowClient

        store = (run_dir / "mlruns").absolute()
        store.mkdir(parents=True, exist_ok=True)
        self.uri = tracking_uri(run_dir)
        _forget_store(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name("distill")
        experiment = (
            found.experiment_id
            if found
            else self.client.create_experiment("distill", (store / "artifacts").as_uri())
        )
        tags = {"distill.resumed": str(resumed).lower()}
        self.run_id = self.client.create_run(experiment, run_name=name, tags=tags).info.run_id
        from mlflow.entities import Param

        items = [Param(k, str(v)[:500]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes 100 params per batch
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log(self, row: dict[str, Any], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in _scalars(row).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)
        _forget_store(self.uri)


def _forget_store(uri: str) -> None:
    """Drop MLflow's per-process caches of the store and SQLAlchemy engine for `uri`, so the
    database is opened afresh (--overwrite may have removed the file since). Guarded: these
    are MLflow internals, and without them nothing is cached to drop."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
        from mlflow.tracking._tracking_service import utils
    except ImportError:
        return
    engines = getattr(SqlAlchemyStore, "_engine_map", {})
    engine = engines.pop(uri, None)
    if engine is not None:
        engine.dispose()
    registry = getattr(utils, "_tracking_store_registry", None)
    cached = getattr(registry, "_get_store_with_resolved_uri", None)
    getattr(cached, "cache_clear", lambda: None)()


class WandbTracker:
    def __init__(self, run_dir: Path, name: str, params: dict[str, Any]):
        import wandb

        mode = os.environ.get("WANDB_MODE", "offline")  # no network unless asked for
        self.run = wandb.init(
            project="distill", name=name, dir=str(run_dir), mode=mode, config=params
        )

    def log(self, row: dict[str, Any], step: int) -> None:
        self.run.log(_scalars(row), step=step)

    def close(self) -> None:
        self.run.finish()


def open_trackers(
    names: Sequence[str], run_dir: Path, name: str, params: dict[str, Any], resumed: bool
) -> list[Tracker]:
    """The trackers `names` asks for ('csv' is the metrics log itself: none to open)."""
    problems = missing(names)
    if problems:
        raise ConfigError("; ".join(problems))
    out: list[Tracker] = []
    for tracker in dict.fromkeys(names):
        if tracker == "tensorboard":
            out.append(TensorBoardTracker(run_dir))
        elif tracker == "mlflow":
            out.append(MLflowTracker(run_dir, name, params, resumed))
        elif tracker == "wandb":
            out.append(WandbTracker(run_dir, name, params))
    return out


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys, for trackers' parameter tables."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


__all__ = [
    "PACKAGES",
    "TRACKERS",
    "TRACKER_DIRS",
    "Tracker",
    "flat_params",
    "missing",
    "open_trackers",
]
