"""Progress of a long piece of work that is not a training epoch (a teacher cache being
built): a bar on a terminal, else a line every 30 s, so a log never goes silent. In the
foundation layer so that every layer's long work can show it."""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm.auto import tqdm


class WorkProgress:
    """Progress of a long piece of work that is not an epoch (a teacher cache being built):
    a bar on a terminal, else a line every 30 s with the share done and the time left, so
    a log never goes silent. `enabled=False` says nothing and starts no tqdm."""

    def __init__(self, total: int, desc: str, *, enabled: bool = True, every_s: float = 30.0):
        self.total, self.desc, self.done = max(1, total), desc, 0
        self.started = self.said = time.monotonic()
        self.every_s = every_s
        self.bar = None
        if enabled:
            # disable=None: a bar on a terminal only (tqdm's own test)
            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=None)
            self.lines = bool(self.bar.disable)  # no terminal: lines instead of a bar

    def __enter__(self) -> WorkProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is None:
            return
        self.bar.update(n)
        now = time.monotonic()
        if self.lines and now - self.said > self.every_s:
            self.said = now
            elapsed = now - self.started
            left = elapsed * (self.total - self.done) / max(self.done, 1)
            print(
                f"{self.desc}: {100 * self.done / self.total:.0f}% ({self.done:,} of "
                f"{self.total:,}), {clock(elapsed)} elapsed, about {clock(left)} left",
                file=sys.stderr,
                flush=True,
            )


def clock(seconds: float) -> str:
    """'45s', '3m07s', '2h05m'."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
