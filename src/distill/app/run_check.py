"""Checks on a run dir before anything is written: a fresh dir, an overwrite of an
earlier run distill wrote, or a resume under the config the run started with (and which
settings may change on resume)."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from distill.core import rundir
from distill.core.config import ExperimentConfig
from distill.core.errors import ConfigError

# Settings that may change when a run is resumed; anything else must match the saved config.
RESUMABLE_CHANGES = {
    "epochs",
    "max_steps",
    "progress",
    "checkpoint_every_steps",
    "checkpoint_every",
    "eval_every",
    "eval_every_steps",
    "early_stop_patience",
    "device",
    "workers",
    "distributed",  # placement on the ranks; checkpoints hold full tensors either way
    "report_to",  # trackers only watch
    "log_every_steps",
}
# Settings that may change on resume when the user names them with --allow-change: the
# usual mends after a divergence. (A changed lr applies from the resumed step on.)
CHANGEABLE_ON_REQUEST = (
    "train.optimizer.lr",
    "train.clip_grad_norm",
    "objective.task_weight",
    "objective.terms.*.weight",
)


def _allowed(key: str, allow: Sequence[str]) -> bool:
    if key.startswith("train.") and key[6:].split(".")[0] in RESUMABLE_CHANGES:
        return True
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in allow)


def check_allow(allow: Sequence[str]) -> None:
    for key in allow:
        if not any(fnmatch.fnmatchcase(key, p) for p in CHANGEABLE_ON_REQUEST):
            raise ConfigError(
                f"--allow-change {key!r}: only {', '.join(CHANGEABLE_ON_REQUEST)} may change when "
                f"a run resumes (* is a term's index); start a new run_dir for anything else"
            )


def check_run_dir(
    run_dir: Path,
    cfg: ExperimentConfig,
    *,
    resume: bool,
    overwrite: bool,
    allow: Sequence[str] = (),
) -> list[str]:
    """Refuse to overwrite a previous run or files distill did not write, or to resume a run
    under a different config. Returns the allowed changes a resume makes, as log lines."""
    if resume and overwrite:
        raise ConfigError("resume continues a run and overwrite deletes it; choose one")
    check_allow(allow)
    rundir.check_location(run_dir)
    if overwrite:
        rundir.check_clearable(run_dir, cfg._source)
    has_run = rundir.holds_run(run_dir)
    if has_run and not resume and not overwrite:
        raise ConfigError(
            f"run dir {str(run_dir)!r} already holds a run; continue it with --resume, or "
            + rundir.replace_advice(run_dir)
        )
    if not resume and not overwrite:
        rundir.check_fresh(run_dir)
    saved = run_dir / "config.yaml"
    if not (resume and saved.is_file()):
        return []
    old = yaml.safe_load(saved.read_text())
    new = cfg.model_dump(mode="json")
    # a run dir is known by its marker, not its path: a moved one still resumes
    was_at = old.get("run_dir") or str(Path("runs") / str(old.get("name")))
    old = _with_new_defaults(_moved(old, str(was_at), str(run_dir)), cfg)
    changed = [k for k in _changed_keys(old, new) if k != "run_dir"]
    refused = [k for k in changed if not _allowed(k, allow)]
    if refused:
        raise ConfigError(
            f"cannot resume {str(run_dir)!r} with a different config: {', '.join(refused)} "
            f"changed since the run started (see its config.yaml). Only train."
            f"{{{', '.join(sorted(RESUMABLE_CHANGES))}}} may change on resume, and "
            f"{', '.join(CHANGEABLE_ON_REQUEST)} when named with --allow-change KEY; start a new "
            f"run_dir for anything else."
        )
    return [
        f"resume: {k} changed from {_at(old, k)!r} to {_at(new, k)!r}"
        for k in changed
        if any(fnmatch.fnmatchcase(k, p) for p in allow)
    ]


def _with_new_defaults(old: dict, cfg: ExperimentConfig) -> dict:
    """The saved config as this version of distill reads it: settings added since the run
    started take their defaults, so they are not changes (the run never set them)."""
    try:
        return type(cfg).model_validate(old).model_dump(mode="json")
    except Exception:  # a config this version no longer accepts: compared as written
        return old


def _moved(value: Any, old_dir: str, new_dir: str) -> Any:
    """`value` with paths under the run dir's old location moved to its new one."""
    if old_dir == new_dir:
        return value
    if isinstance(value, dict):
        return {k: _moved(v, old_dir, new_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_moved(v, old_dir, new_dir) for v in value]
    if isinstance(value, str) and (value == old_dir or value.startswith(old_dir + "/")):
        return new_dir + value[len(old_dir) :]
    return value


def _at(tree: Any, key: str) -> Any:
    for part in key.split("."):
        tree = tree[int(part)] if isinstance(tree, list) else (tree or {}).get(part)
    return tree


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(dict.fromkeys([*old, *new]))
        return [c for k in keys for c in _changed_keys(old.get(k), new.get(k), f"{prefix}{k}.")]
    if (  # lists of sections (terms, stages, teachers) by index; lists of values whole
        isinstance(old, list)
        and isinstance(new, list)
        and len(old) == len(new)
        and all(isinstance(v, dict) for v in [*old, *new])
    ):
        pairs = enumerate(zip(old, new))
        return [c for i, (a, b) in pairs for c in _changed_keys(a, b, f"{prefix}{i}.")]
    return [] if old == new else [prefix.rstrip(".")]
