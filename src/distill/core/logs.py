"""Per-epoch metrics in the run dir, as JSON lines and CSV.

Each epoch's row is appended to both files (one write each, no fsync: a metrics row is not
worth a disk flush every epoch), so logging costs the same at epoch 1 and epoch 1,000; in
the loop these writes run on the checkpoint writer's thread.
Both files are rewritten atomically, from the rows in memory, only when a run starts or
resumes (which also drops rows of epochs the checkpoint had not finished and repairs a
line cut short by a crash) or when a row brings a column the CSV header lacks.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from distill.core.checkpoint import atomic_write_text


class MetricsLog:
    """The run's metrics rows, in memory and in the two files.

    With a `writer` (the loop's `BackgroundWriter`) the file writes are queued on its thread,
    in order with the checkpoints: a row always lands before the checkpoint submitted after
    it, as the loop's log-then-checkpoint order needs, and the loop does not wait for the
    disk (0.2 ms an epoch on the overhead benchmark's job)."""

    def __init__(self, run_dir: str | Path, writer: Any = None):
        self.jsonl = Path(run_dir) / "metrics.jsonl"
        self.csv = Path(run_dir) / "metrics.csv"
        self.writer = writer
        self.rows: list[dict] = []
        self.columns: list[str] = []
        self._on_disk = False  # both files written with the current columns
        if self.jsonl.is_file():
            for line in self.jsonl.read_text().splitlines():
                if not line.strip():
                    continue
                try:
                    self.rows.append(json.loads(line))
                except json.JSONDecodeError:  # a row cut short by a crash: rewritten below
                    break

    def keep_epochs_before(self, epoch: int, step: int | None = None) -> None:
        """Forget rows of epochs the checkpoint being resumed from had not finished, and
        (given its `step`) rows written after it, such as a validation within an epoch."""
        self.rows = [
            r
            for r in self.rows
            if r.get("epoch", 0) < epoch and (step is None or r.get("step", 0) <= step)
        ]
        self._write()

    def append(self, row: dict) -> None:
        self.rows.append(row)
        if not self._on_disk or any(k not in self.columns for k in row):
            self._write()  # a new column: the CSV header changes
            return
        columns = self.columns

        def write() -> None:
            with open(self.jsonl, "a") as f:
                f.write(json.dumps(row) + "\n")
            buf = io.StringIO()
            csv.DictWriter(buf, fieldnames=columns).writerow(row)
            with open(self.csv, "a", newline="") as f:
                f.write(buf.getvalue())

        self._do(write)

    def _write(self) -> None:
        """Both files rewritten (atomically) from the rows in memory."""
        rows = list(self.rows)
        self.columns = columns = list(dict.fromkeys(k for r in rows for k in r))
        self._on_disk = True

        def write() -> None:
            atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in rows))
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
            atomic_write_text(self.csv, buf.getvalue())

        self._do(write)

    def _do(self, job: Any) -> None:
        if self.writer is None:
            job()
        else:
            self.writer.submit(job)
