"""Per-epoch metrics in the run dir, as JSON lines and CSV.

Each epoch's row is appended to both files (one write each, no fsync: a metrics row is not
worth a disk flush every epoch), so logging costs the same at epoch 1 and epoch 1,000.
Both files are rewritten atomically, from the rows in memory, only when a run starts or
resumes (which also drops rows of epochs the checkpoint had not finished and repairs a
line cut short by a crash) or when a row brings a column the CSV header lacks.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from distill.core.checkpoint import atomic_write_text


class MetricsLog:
    def __init__(self, run_dir: str | Path):
        self.jsonl = Path(run_dir) / "metrics.jsonl"
        self.csv = Path(run_dir) / "metrics.csv"
        self.rows: list[dict] = []
        self.columns: list[str] = []
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
        if not self.csv.is_file() or any(k not in self.columns for k in row):
            self._write()  # a new column: the CSV header changes
            return
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        buf = io.StringIO()
        csv.DictWriter(buf, fieldnames=self.columns).writerow(row)
        with open(self.csv, "a", newline="") as f:
            f.write(buf.getvalue())

    def _write(self) -> None:
        atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in self.rows))
        self.columns = list(dict.fromkeys(k for r in self.rows for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.csv, buf.getvalue())
