"""The running sums of an epoch's logged losses (the metrics log's train_* means).

Steps only queue their detached values; the queue is summed every 256 steps and whenever
the sums are read, one value at a time in float64, so the result does not depend on where
the queue was cut: a resumed epoch logs exactly what an uninterrupted one does."""

from __future__ import annotations

from torch import Tensor


class LossSums:
    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0  # micro-batches added
        self.pending: list[dict[str, Tensor]] = []  # not yet in `sums`

    @classmethod
    def restored(cls, sums: dict[str, float], count: int) -> LossSums:
        """The sums a checkpoint saved (`totals()` and `count`)."""
        out = cls()
        out.sums, out.count = {k: float(v) for k, v in sums.items()}, int(count)
        return out

    def add(self, losses: dict[str, Tensor]) -> None:
        self.pending.append({k: v.detach() for k, v in losses.items()})
        self.count += 1
        if len(self.pending) >= 256:
            self.fold()

    def fold(self) -> None:
        import torch

        for k in dict.fromkeys(k for losses in self.pending for k in losses):
            values = [losses[k].float().reshape(()) for losses in self.pending if k in losses]
            total = self.sums.get(k, 0.0)
            for x in torch.stack(values).tolist():
                total += x
            self.sums[k] = total
        self.pending = []

    def totals(self) -> dict[str, float]:
        self.fold()
        return {k: float(v) for k, v in self.sums.items()}

    def means(self, prefix: str = "") -> dict[str, float]:
        return {prefix + k: float(v / max(self.count, 1)) for k, v in self.totals().items()}
