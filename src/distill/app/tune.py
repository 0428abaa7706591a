"""`distill tune CONFIG`: Optuna search over temperature, alpha and loss weights.

Each trial trains the config with sampled values and is scored on the *validation* split
(its best val accuracy), never on test. Trials are pruned early (median pruner on the
per-epoch val accuracy). The best config is saved as YAML and printed.

The default space, derived from the config: task_weight (alpha) in [0, 1]; each term's
weight log-uniform in [w/10, 10w]; each term's `temperature` arg in [1, 10]. A space file
can replace it: {"objective.terms.0.args.temperature": [1.0, 8.0], "train.optimizer.lr": [1e-4, 1e-2, "log"]}.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from distill.core.checkpoint import atomic_write_text
from distill.core.config import (
    ExperimentConfig,
    apply_override,
    dump_config,
    parse_config,
    read_yaml,
)
from distill.core.errors import ConfigError


def default_space(cfg: ExperimentConfig) -> dict[str, list]:
    space: dict[str, list] = {"objective.task_weight": [0.0, 1.0]}
    for i, term in enumerate(cfg.objective.terms):
        if term.weight > 0:
            space[f"objective.terms.{i}.weight"] = [term.weight / 10, term.weight * 10, "log"]
        temp = term.args.get("temperature")
        if isinstance(temp, (int, float)):
            space[f"objective.terms.{i}.args.temperature"] = [1.0, 10.0]
    return space


def _sample(trial: Any, space: dict[str, list]) -> dict[str, float]:
    values = {}
    for key, bounds in space.items():
        if len(bounds) not in (2, 3) or (len(bounds) == 3 and bounds[2] != "log"):
            raise ConfigError(
                f"tune space {key!r}: give [low, high] or [low, high, 'log'], got {bounds}"
            )
        values[key] = trial.suggest_float(
            key, float(bounds[0]), float(bounds[1]), log=len(bounds) == 3
        )
    return values


def tune(
    cfg: ExperimentConfig,
    *,
    trials: int = 20,
    out: str | Path = "runs/tune",
    space: dict[str, list] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the search; write best.yaml and trials.json into `out`; return the best trial."""
    import optuna

    from distill.app.run import run_experiment

    space = space or default_space(cfg)
    out = Path(out)
    base = cfg.model_dump(mode="json")

    def objective(trial: optuna.Trial) -> float:
        data = copy.deepcopy(base)
        for key, value in _sample(trial, space).items():
            apply_override(data, f"{key}={value}")
        data["run_dir"] = str(out / f"trial-{trial.number:03d}")
        data["train"]["progress"] = False

        def prune(row: dict[str, Any]) -> None:
            trial.report(row["val_acc"], row["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned()

        return run_experiment(parse_config(data), overwrite=True, callbacks=[prune])["best_val_acc"]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
    )
    study.optimize(objective, n_trials=trials)
    best = copy.deepcopy(base)
    for key, value in study.best_params.items():
        apply_override(best, f"{key}={value}")
    best["run_dir"] = None
    best_cfg = parse_config(best)
    atomic_write_text(out / "best.yaml", dump_config(best_cfg))
    history = [
        {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params}
        for t in study.trials
    ]
    atomic_write_text(out / "trials.json", json.dumps(history, indent=2))
    pruned = sum(t["state"] == "PRUNED" for t in history)
    return {
        "best_val_acc": study.best_value,
        "best_params": study.best_params,
        "trials": len(history),
        "pruned": pruned,
        "best_config": str(out / "best.yaml"),
    }


def load_space(path: str | Path | None) -> dict[str, list] | None:
    if path is None:
        return None
    data = read_yaml(Path(path), "tune space")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a tune space is a mapping of dotted keys to [low, high] or [low, high, 'log']"
        )
    return data
