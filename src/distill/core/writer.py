"""The background writer: files written on one thread, in order, while training goes on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor


def snapshot(t: Tensor) -> Tensor:
    """A contiguous copy of `t` on the CPU, detached, that later training cannot change (one
    copy: a device tensor is copied once to the host, a host tensor cloned once)."""
    t = t.detach()
    if t.device.type == "cpu":
        return t.clone(memory_format=torch.contiguous_format)
    return t.to("cpu", memory_format=torch.contiguous_format)


def _same_layout(spare: dict[str, Tensor], sources: dict[str, Tensor]) -> bool:
    """Whether `spare` can take a copy of `sources` in place: the same keys in the same
    order, each of the same dtype and shape, every source on the CPU."""
    if list(spare) != list(sources):
        return False
    return all(
        s.is_cpu and s.dtype == d.dtype and s.shape == d.shape
        for s, d in zip(sources.values(), spare.values(), strict=True)
    )


def _copied_into(spare: dict[str, Tensor], sources: dict[str, Tensor]) -> bool:
    """`sources` copied into `spare` with one fused call; False where that call is refused
    (a dtype it lacks, or a torch without it): the caller then makes fresh copies."""
    try:
        torch._foreach_copy_(list(spare.values()), list(sources.values()))
    except (RuntimeError, AttributeError):
        return False
    return True


class BackgroundWriter:
    """Checkpoint writes on a thread, in the order submitted, while training goes on.

    A write is atomic (`atomic_write_bytes`), so a crash mid-write leaves the previous file
    intact. `wait()` returns once everything submitted is on disk, and re-raises the first
    write that failed (later ones are then dropped); the loop waits before it returns, and
    before anything reads the files. Jobs submitted inside `held()` start when it ends.

    The thread starts with the first write and ends after `idle_s` seconds without one, so
    the writes of epoch after epoch share one thread (starting a thread per write cost the
    loop ~0.4 ms each) and no thread outlives a run for long.
    """

    def __init__(self, idle_s: float = 5.0) -> None:
        import threading

        self.idle_s = idle_s
        self._jobs: list[Any] = []
        self._error: BaseException | None = None
        self._lock = threading.Condition()
        self._running = False  # the thread exists
        self._busy = False  # it is running a job
        self._held = 0  # open `held()` blocks
        self._flushing = 0  # callers inside `wait()`: held jobs run anyway
        self._spare: dict[str, dict[str, Tensor]] = {}  # per file: copies a write is done with

    def _idle(self) -> bool:  # (under the lock) nothing the thread may start now
        return not self._jobs or (self._held > 0 and not self._flushing)

    def _work(self) -> None:
        while True:
            with self._lock:
                while self._idle():
                    if not self._lock.wait(timeout=self.idle_s) and self._idle():
                        self._running = False
                        self._lock.notify_all()
                        return
                job = self._jobs.pop(0)
                self._busy = True
            try:
                if self._error is None:
                    job()
            except BaseException as e:  # noqa: BLE001 (re-raised by wait)
                self._error = e
            finally:
                with self._lock:
                    self._busy = False
                    self._lock.notify_all()

    def _wake(self) -> None:  # (under the lock) the thread sees the queue
        if self._running:
            self._lock.notify_all()
            return
        import threading

        self._running = True
        threading.Thread(target=self._work, name="distill-writer", daemon=True).start()

    def submit(self, job: Any) -> None:
        if self._error is not None:
            self.wait()  # raises the failed write
        with self._lock:
            self._jobs.append(job)
            if not self._held:
                self._wake()

    def copies(self, key: str, sources: dict[str, Tensor]) -> dict[str, Tensor]:
        """Snapshots of `sources` for a write of file `key`: copied with one fused call into
        the tensors the last write of `key` was done with, when they match; else fresh
        copies. (The checkpoint of a 2.9k-parameter student and its Adam state is 73 small
        tensors: 73 copies, each a dispatch and an allocation, every epoch.)"""
        spare = self._spare.pop(key, None)
        if spare is not None and _same_layout(spare, sources) and _copied_into(spare, sources):
            return spare
        return {k: snapshot(v) for k, v in sources.items()}

    spare_bytes = 64 << 20  # copies kept between writes of a file, at most

    def release(self, key: str, tensors: dict[str, Tensor]) -> None:
        """A write of `key` is done with `tensors`: the next `copies(key, ...)` may fill them.
        Copies over `spare_bytes` are let go: a big state's copy costs its bytes, not its
        calls, and holding it between writes would keep that much memory taken."""
        if sum(t.numel() * t.element_size() for t in tensors.values()) <= self.spare_bytes:
            self._spare[key] = tensors

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Jobs submitted inside start when it ends: the loop's end-of-epoch work
        (validation, the best weights, the checkpoint's snapshot) runs without the writer's
        thread competing for the interpreter, and the writes overlap the next epoch."""
        with self._lock:
            self._held += 1
        try:
            yield
        finally:
            with self._lock:
                self._held -= 1
                if not self._held and self._jobs:
                    self._wake()

    def wait(self) -> None:
        with self._lock:
            if self._jobs or self._busy:
                self._flushing += 1
                try:
                    if self._jobs:
                        self._wake()
                    while self._jobs or self._busy:
                        self._lock.wait()
                finally:
                    self._flushing -= 1
        if self._error is not None:
            error, self._error = self._error, None
            raise error
