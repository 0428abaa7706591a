"""Error types and the helper that turns a typo into a suggestion."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """A configuration value is wrong. The message names the value, the choices and the fix."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, tampered with or does not match the model."""


class LayerError(KeyError):
    """A layer name that the model does not have; the message suggests the closest ones."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


USER_ERRORS: tuple[
    type[Exception], ...
] = ()  # filled below: what the CLI reports without a traceback


class DataError(ValueError):
    """A dataset is empty, mislabelled or holds non-finite values."""


class NonFiniteError(FloatingPointError):
    """A loss or gradient became NaN/inf; the message names the term and the last good checkpoint."""


USER_ERRORS = (ConfigError, CheckpointError, DataError, LayerError, NonFiniteError)


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The choices most similar to `name`, best first (may be empty)."""
    choices = list(choices)
    found = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not found:
        # A prefix or substring hit catches 'layer' -> 'layer1', 'layer2', ...
        found = [c for c in choices if name and (c.startswith(name) or name in c)][:n]
    return found


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """'; did you mean 'x'?' or '' when nothing is close."""
    found = closest(name, choices)
    if not found:
        return ""
    return "; did you mean " + " or ".join(repr(f) for f in found) + "?"


def unknown_name(kind: str, name: str, table: Iterable[str], fix: str = "") -> str:
    """Message for a name missing from a name table, listing the valid ones."""
    names = sorted(table)
    msg = f"unknown {kind} {name!r}{did_you_mean(name, names)} valid: {', '.join(names)}"
    if fix:
        msg += f"\n{fix}"
    return msg


class RunStopped(Exception):
    """SIGINT/SIGTERM stopped one training run of a command that runs several (demos): the
    run's checkpoint is saved, and the command stops instead of going on without it."""

    def __init__(self, signal_name: str, where: str):
        self.signal_name = signal_name
        super().__init__(
            f"stopped by {signal_name} while training {where}; its checkpoint is saved"
        )


def ensure_complete(summary: dict, where: str) -> dict:
    """Raise RunStopped when a signal stopped the run that produced `summary`."""
    stopped = summary.get("stopped_by")
    if stopped in ("SIGINT", "SIGTERM"):
        raise RunStopped(stopped, where)
    return summary
