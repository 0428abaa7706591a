"""Per-epoch metrics in the run dir, as JSON lines and CSV, rewritten atomically."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from distill.checkpoint import atomic_write_text


class MetricsLog:
    def __init__(self, run_dir: str | Path):
        self.jsonl = Path(run_dir) / "metrics.jsonl"
        self.csv = Path(run_dir) / "metrics.csv"
        self.rows: list[dict] = []
        if self.jsonl.is_file():
            lines = self.jsonl.read_text().splitlines()
            self.rows = [json.loads(line) for line in lines if line.strip()]

    def keep_epochs_before(self, epoch: int) -> None:
        """Forget rows of epochs the checkpoint being resumed from had not finished."""
        self.rows = [r for r in self.rows if r.get("epoch", 0) < epoch]
        self._write()

    def append(self, row: dict) -> None:
        self.rows.append(row)
        self._write()

    def _write(self) -> None:
        atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in self.rows))
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.csv, buf.getvalue())
