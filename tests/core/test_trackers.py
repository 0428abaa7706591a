"""train.report_to: the metrics log's rows reach real trackers, read back with their own
readers (TensorBoard's event accumulator, MLflow's client on the local file store)."""

import json

import pytest
from helpers import synthetic_cfg

from distill.app.run import run_experiment
from distill.app.validate import validate
from distill.core import rundir
from distill.core.config import parse_config
from distill.core.errors import ConfigError
from distill.core.trackers import missing, open_trackers, tracking_uri


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_and_mlflow_receive_every_epoch_row(tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = synthetic_cfg(
        tmp_path / "r",
        train={
            "epochs": 3,
            "report_to": ["csv", "tensorboard", "mlflow"],
            "log_every_steps": 1,
        },
    )
    run_experiment(parse_config(cfg))
    rows = _rows(tmp_path / "r")
    events = EventAccumulator(str(tmp_path / "r/tensorboard"))
    events.Reload()
    for key in ("val_acc", "train_loss", "lr"):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [r["step"] for r in rows]
        assert [s.value for s in scalars] == pytest.approx([r[key] for r in rows], rel=1e-6)
    # between the epochs, a point per logging step (issue 42): the steps' losses and lr
    steps = events.Scalars("steps/loss")
    assert [s.step for s in steps] == list(range(1, rows[-1]["step"] + 1))
    first = [s.value for s in steps[: rows[0]["step"]]]
    assert sum(first) / len(first) == pytest.approx(rows[0]["train_loss"], rel=1e-5)
    assert len(events.Scalars("steps/lr")) == len(steps)
    client = MlflowClient(tracking_uri=tracking_uri(tmp_path / "r"))
    [run] = client.search_runs([client.get_experiment_by_name("distill").experiment_id])
    history = client.get_metric_history(run.info.run_id, "val_acc")
    assert [(m.step, m.value) for m in history] == [
        (r["step"], pytest.approx(r["val_acc"])) for r in rows
    ]
    assert run.data.params["train.epochs"] == "3" and run.info.status == "FINISHED"
    # the trackers' folders are the run's: --overwrite may clear them
    assert rundir.foreign_files(tmp_path / "r") == []
    run_experiment(parse_config(cfg), overwrite=True)


def test_a_tracker_that_is_not_installed_is_a_clear_error(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    cfg = parse_config(synthetic_cfg(tmp_path / "r", train={"report_to": ["wandb"]}))
    problems = validate(cfg)
    assert any(
        "'wandb' needs the wandb package" in p and "pip install wandb" in p for p in problems
    )
    assert missing(["csv"]) == []
    with pytest.raises(ConfigError, match="pip install wandb"):
        open_trackers(["wandb"], tmp_path, "x", {}, False)


def test_wandb_offline_run_gets_every_row(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the default: offline, no network
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged = []
    real_log = wandb.sdk.wandb_run.Run.log

    def spy(run, data, step=None, **kw):  # records what reaches W&B, then logs it for real
        logged.append((step, dict(data)))
        return real_log(run, data, step=step, **kw)

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", spy)
    cfg = synthetic_cfg(tmp_path / "r", train={"epochs": 2, "report_to": ["wandb"]})
    run_experiment(parse_config(cfg))
    rows = _rows(tmp_path / "r")
    epochs = [(step, d) for step, d in logged if "val_acc" in d]
    assert [step for step, _ in epochs] == [r["step"] for r in rows]
    assert [d["val_acc"] for _, d in epochs] == pytest.approx([r["val_acc"] for r in rows])
    assert any("steps/loss" in d for _, d in logged)  # and the logging steps' rows
    [offline] = list((tmp_path / "r/wandb").glob("offline-run-*"))
    assert list(offline.glob("*.wandb"))  # the run's record, for `wandb sync`
    assert rundir.foreign_files(tmp_path / "r") == []
