"""Run directories: how distill knows a folder is its own, keeps one writer in it, and the
only place where it ever deletes files.

Every command that trains into a run dir goes through `RunDir`:

- a **marker** (`.distill-run`, JSON with a random id) is written when a run starts, so a
  run dir is known by its marker, not by its path (a moved run dir still resumes);
- an exclusive **lock** (`fcntl.flock` on `.distill-lock`) is held for the whole run. The
  OS drops it when the process dies, so a SIGKILL never leaves a stale lock; a second
  writer is refused, naming the PID that holds it;
- `--overwrite` removes only what a run writes (`RUN_FILES`, at any depth), only in a dir
  with the marker (or an empty one), and never `.`, `/`, `~`,
  the working directory's ancestors or the config's own folder. Any other file blocks it,
  named in the error, and nothing is removed;
- temporary files that a killed writer left (`.<name>.<random>.tmp`) are removed when a
  run starts or resumes.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import uuid
from pathlib import Path

from distill.core.errors import ConfigError

MARKER = ".distill-run"
LOCK = ".distill-lock"

# What distill commands write into a run dir, at any depth. A folder is cleared by
# --overwrite only when every file below it has one of these names.
RUN_FILES = frozenset(
    {
        MARKER,
        LOCK,
        "config.yaml",
        "metrics.jsonl",
        "metrics.csv",
        "results.json",
        "eval.json",
        "pipeline.json",
        "preprocessing.json",
        "last.safetensors",
        "best.safetensors",
        "fisher.safetensors",
        "surgery.safetensors",
        # distill compress / federated / interpret
        "compress.yaml",
        "stage.json",
        "search.json",
        "search.png",
        "report.md",
        "pareto.png",
        "rules.txt",
    }
)
RUN_SUFFIXES = (".onnx",)  # compress exports, named after their stage
# atomic_write_bytes' temporaries (mkstemp: .<name>.<8 random chars>.tmp) and the copy
# helpers' <name>.tmp
_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$|^.+\.safetensors\.tmp$")

try:  # POSIX; on other systems runs are not locked (said once, when a run starts)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


def is_temp_file(name: str) -> bool:
    return bool(_TEMP.match(name))


def _is_run_file(name: str) -> bool:
    return name in RUN_FILES or name.endswith(RUN_SUFFIXES) or is_temp_file(name)


# Folders whose whole content a run writes: the experiment trackers' (distill.core.trackers)
RUN_DIRS = frozenset({"tensorboard", "mlruns", "wandb", "export"})  # trackers; distill export


def foreign_files(run_dir: Path) -> list[Path]:
    """Files below `run_dir` that no distill command writes (sorted; links count as foreign)."""
    found = []
    for root, dirs, files in os.walk(run_dir):
        if Path(root) == run_dir:  # the trackers' folders are the run's, whatever they hold
            dirs[:] = [d for d in dirs if d not in RUN_DIRS or (run_dir / d).is_symlink()]
        for name in files:
            path = Path(root) / name
            if path.is_symlink() or not _is_run_file(name):
                found.append(path)
        found += [Path(root) / d for d in dirs if (Path(root) / d).is_symlink()]
    return sorted(found)


def finished(run_dir: Path) -> bool:
    """True when `run_dir` holds the results of a run that ran to its end. A run stopped
    early (train.max_steps, a signal) also writes results.json, marked complete: false, and
    is resumed rather than counted as done by bench, stages and compress."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("complete", True) is not False
    except (OSError, ValueError):
        return False


def holds_run(run_dir: Path) -> bool:
    """True when `run_dir` holds a started run (a checkpoint, metrics or results)."""
    return (
        (run_dir / "checkpoints").is_dir()
        or (run_dir / "metrics.jsonl").is_file()
        or (run_dir / "results.json").is_file()
        or (run_dir / "pipeline.json").is_file()
    )


def check_location(run_dir: Path) -> None:
    """A run dir must be a folder (or not exist yet) and must not lie under a file."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(
            f"run_dir {str(run_dir)!r} is a file, not a folder; set run_dir=<new dir>"
        )
    for parent in run_dir.absolute().parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(
                f"run_dir {str(run_dir)!r} lies under {str(parent)!r}, which is a file; "
                f"set run_dir=<new dir>"
            )
        if parent.is_dir():
            break


def protected_reason(run_dir: Path, source: Path | None = None) -> str | None:
    """Why `run_dir` must never be cleared, or None."""
    target = run_dir.resolve()
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if target == Path(target.anchor):
        return "it is the file-system root"
    if target == home:
        return "it is your home folder"
    if target == cwd or target in cwd.parents:
        return "it is the working directory or one of its parents"
    if source is not None:
        folder = source.resolve().parent
        if target == folder or target in folder.parents:
            return f"it holds the config file {str(source)!r}"
    return None


def check_clearable(run_dir: Path, source: Path | None = None) -> None:
    """Raise unless `clear(run_dir)` may go ahead: see the module docstring."""
    if not run_dir.exists():
        return
    check_location(run_dir)
    why = protected_reason(run_dir, source)
    if why:
        raise ConfigError(
            f"--overwrite refuses to clear {str(run_dir)!r}: {why}. Set run_dir=<a folder of its "
            f"own> (default runs/<name>)"
        )
    entries = sorted(p for p in run_dir.iterdir() if p.name != LOCK)
    if not is_marked(run_dir) and entries:
        # file names alone never prove a folder is distill's: a person's results.json,
        # report.md or model.onnx look the same, so only the marker allows a clear
        shown = _names(entries, run_dir)
        raise ConfigError(
            f"--overwrite refuses to clear {str(run_dir)!r}: no distill run made it (it has no "
            f"{MARKER} marker) and it holds {shown}. Choose another run_dir, or empty it yourself"
        )
    foreign = foreign_files(run_dir)
    if foreign:
        raise ConfigError(
            f"--overwrite refuses to clear {str(run_dir)!r}: it holds files that distill did "
            f"not write ({_names(foreign, run_dir)}). Move them elsewhere, or set "
            f"run_dir=<new dir>"
        )


def is_marked(run_dir: Path) -> bool:
    """True when a distill command made `run_dir` (it holds the run marker)."""
    return (Path(run_dir) / MARKER).is_file()


def replace_advice(run_dir: Path) -> str:
    """How to get past a folder that holds an earlier run: --overwrite only where distill
    made the folder (it will not clear any other)."""
    if is_marked(run_dir):
        return "replace it with --overwrite, or set run_dir=<new dir>"
    return (
        f"distill did not make it (no {MARKER} marker), so --overwrite will not clear it; "
        "set run_dir=<new dir>, or empty it yourself"
    )


def check_fresh(run_dir: Path) -> None:
    """A new run may go into a missing or empty folder, a run dir of distill's, or a folder of
    other files none of which it would overwrite."""
    if not run_dir.is_dir() or (run_dir / MARKER).is_file():
        return
    clash = sorted(
        p
        for p in run_dir.iterdir()
        if p.name != LOCK and (p.name in RUN_FILES or p.name == "checkpoints")
    )
    if clash:
        raise ConfigError(
            f"run dir {str(run_dir)!r} was not made by distill and holds "
            f"{_names(clash, run_dir)}, which a run would overwrite; set run_dir=<new dir>"
        )


def _names(paths: list[Path], base: Path) -> str:
    shown = ", ".join(repr(str(p.relative_to(base))) for p in paths[:5])
    return shown + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")


def clear(run_dir: Path, source: Path | None = None) -> None:
    """Remove what a run wrote in `run_dir` (for --overwrite); refuse, removing nothing, when
    anything else is there or the folder is protected."""
    check_clearable(run_dir, source)
    if not run_dir.exists():
        return
    for root, dirs, files in os.walk(run_dir, topdown=False):
        for name in files:
            if not (name == LOCK and Path(root) == run_dir):  # this process may hold it
                (Path(root) / name).unlink()
        for name in dirs:
            (Path(root) / name).rmdir()


def remove_temp_files(run_dir: Path) -> int:
    """Delete the temporary files a killed writer left below `run_dir`; their count."""
    removed = 0
    for root, _dirs, files in os.walk(run_dir):
        for name in files:
            if is_temp_file(name):
                (Path(root) / name).unlink(missing_ok=True)
                removed += 1
    return removed


def write_marker(run_dir: Path, kind: str = "run") -> None:
    """Mark `run_dir` as made by distill (kept when it exists: the run's id never changes)."""
    from distill.core.checkpoint import atomic_write_text

    path = run_dir / MARKER
    if not path.is_file():
        info = {"id": uuid.uuid4().hex, "kind": kind, "created": time.time()}
        atomic_write_text(path, json.dumps(info) + "\n")


def begin(run_dir: Path, kind: str, *, overwrite: bool, source: Path | None = None) -> None:
    """What every command does first in a run dir it holds the lock on: clear an earlier run
    (`overwrite`), remove a killed writer's temporary files, and mark the dir as a run's."""
    if overwrite:
        clear(run_dir, source)
    run_dir.mkdir(parents=True, exist_ok=True)
    removed = remove_temp_files(run_dir)
    if removed:
        print(
            f"removed {removed} temporary file(s) a killed run left in {run_dir}", file=sys.stderr
        )
    write_marker(run_dir, kind)


class RunLock:
    """An exclusive OS lock on a run dir, held while the `with` block runs.

    `flock` locks belong to the open file, so the kernel releases them when the process
    exits however it exits (SIGKILL included): a lock is never stale."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        if fcntl is None:  # pragma: no cover - Windows
            print(f"note: runs are not locked on {sys.platform}", file=sys.stderr)
            return self
        check_location(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"run dir {str(self.run_dir)!r} is in use by another distill process (PID "
                f"{holder}); wait for it to finish, stop it, or set run_dir=<new dir>"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file releases the lock
            self._fd = None


__all__ = [
    "LOCK",
    "MARKER",
    "RUN_DIRS",
    "RUN_FILES",
    "RunLock",
    "begin",
    "check_clearable",
    "check_fresh",
    "check_location",
    "clear",
    "foreign_files",
    "holds_run",
    "is_marked",
    "protected_reason",
    "replace_advice",
    "remove_temp_files",
    "write_marker",
]
