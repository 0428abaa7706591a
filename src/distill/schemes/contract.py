"""The scheme contract: everything the training loop reads of a scheme, in one place.

A scheme must have the five members of `Scheme`. Every other member the loop uses is
optional and listed in `Contract` with its default; `Contract.of(scheme)` reads them once,
so the loop never probes a scheme for attributes. A scheme gets what it needs (its models,
objective, data, the teacher cache) through its constructor (`SchemeContext`); the loop's
own extras (step hooks such as pruning masks) are the `Trainer`'s arguments. Nothing is
attached to a scheme after it is built.

Optional members:

- `lr_scales: dict[str, float]`: a learning-rate factor per entry of `modules` (a slower
  teacher in QKD's co-studying);
- `frozen: list[nn.Module]`: models that move with the scheme and stay in eval mode, but
  are neither optimised nor checkpointed;
- `wants_clean: bool`: also give the step the un-augmented batch as `batch['clean']`;
- `teacher_cache`: a `distill.loop.cache.TeacherCache` the scheme reads (built ahead of
  training by the loop, told the epoch);
- `on_fit_start(total_steps, steps_per_epoch)`: before the first step;
- `after_optimizer_step(step)`: after each optimizer update (EMA teachers);
- `count_items(batch) -> int`: what a micro-batch counts for the step's loss
  normalisation (supervised tokens for language models; samples by default);
- `evaluate(data, batch_size, device) -> dict`: the validation metrics (default: accuracy
  and NLL of `eval_model()`);
- `test_metrics(data, batch_size) -> dict`: the test metrics `results.json` reports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn


class Scheme(Protocol):
    """What every scheme has."""

    modules: nn.ModuleDict  # everything it trains: optimised and checkpointed

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Named losses for one batch; 'loss' is the one minimised."""
        ...

    def eval_model(self) -> nn.Module:
        """The model evaluated and exported (the student)."""
        ...

    def to(self, device: torch.device) -> Scheme: ...

    def train(self, mode: bool = True) -> None:
        """Train or eval mode; a frozen teacher stays in eval mode."""
        ...


class StepHook(Protocol):
    """What the `Trainer` runs after every optimizer step besides the scheme (its
    `step_hooks` argument), e.g. `distill.compress.prune.SparsityKeeper`."""

    def __call__(self, step: int) -> None: ...

    def settled(self, step: int) -> bool:
        """False while the model is still on its way (pruning towards its target): such an
        epoch is kept as best only provisionally."""
        ...


# the optional members and their defaults (see the module docstring)
OPTIONAL: dict[str, Any] = {
    "lr_scales": {},
    "frozen": [],
    "wants_clean": False,
    "teacher_cache": None,
    "on_fit_start": None,
    "after_optimizer_step": None,
    "count_items": None,
    "evaluate": None,
    "test_metrics": None,
}


@dataclass(frozen=True)
class Contract:
    """A scheme as the loop sees it: its required members and each optional one, resolved
    once, its default filled in."""

    scheme: Scheme
    lr_scales: dict[str, float]
    frozen: tuple[nn.Module, ...]
    wants_clean: bool
    teacher_cache: Any
    on_fit_start: Callable[[int, int], None] | None
    after_optimizer_step: Callable[[int], None] | None
    count_items: Callable[[dict[str, Tensor]], int] | None
    evaluate: Callable[..., dict[str, float]] | None
    test_metrics: Callable[..., dict[str, float]] | None

    @classmethod
    def of(cls, scheme: Scheme) -> Contract:
        missing = [
            m for m in ("modules", "step", "eval_model", "to", "train") if not hasattr(scheme, m)
        ]
        if missing:
            raise TypeError(
                f"{type(scheme).__name__} is not a scheme: it lacks {', '.join(missing)} "
                f"(see distill.schemes.contract.Scheme)"
            )
        found = {name: getattr(scheme, name, default) for name, default in OPTIONAL.items()}
        found["lr_scales"] = dict(found["lr_scales"] or {})
        found["frozen"] = tuple(found["frozen"] or ())
        found["wants_clean"] = bool(found["wants_clean"])
        return cls(scheme=scheme, **found)
