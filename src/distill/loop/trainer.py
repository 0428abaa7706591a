"""The one training loop: fit, epoch, step and end of epoch. Schemes decide what a step
computes (read through `distill.schemes.contract`); the loop's parts live in `distill.loop`:
the optimizer and LR schedule, the random state, the non-finite guard, the batch feed,
placement (devices, shards, compile), checkpoints, progress and signals."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from distill.core import distributed
from distill.core.errors import ConfigError, DataError
from distill.core.logs import MetricsLog
from distill.core.settings import TrainSettings
from distill.core.writer import BackgroundWriter
from distill.data import Augmentation
from distill.data.loading import is_stream, set_epoch
from distill.loop.checks import check_free_space, check_run_dir, check_train_data
from distill.loop.feed import BatchFeed, epoch_order, group_items, plan, stream_items
from distill.loop.guard import NonFiniteGuard
from distill.loop.loss_sums import LossSums
from distill.loop.optim import lr_factor, lr_groups, make_optimizer, resolve_device
from distill.loop.placement import autocast, shard_models, speed_up
from distill.loop.progress import EpochProgress, report_row, stop_on_signals
from distill.loop.resume import prepare_fit, restore, save, save_epoch, summary
from distill.loop.rng import seed_everything
from distill.loop.validation import validate
from distill.schemes.contract import Contract, Scheme


class Trainer:
    """Trains `scheme.modules` on `train_data`, evaluating `scheme.eval_model()` on `val_data`.

    The run dir receives `checkpoints/last.safetensors` (full state, for --resume),
    `checkpoints/best.safetensors` (the evaluated model's weights at its best val accuracy),
    and `metrics.jsonl` / `metrics.csv` with one row per epoch (and one per validation
    within an epoch, with `eval_every_steps`).
    """

    def __init__(
        self,
        scheme: Scheme,
        train_data: Any,
        val_data: Any,
        settings: TrainSettings,
        *,
        run_dir: str | Path,
        augment: Augmentation | None = None,
        export_info: dict | None = None,
        callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
        step_hooks: Sequence[Any] = (),
    ):
        self.scheme, self.train_data, self.val_data = scheme, train_data, val_data
        self.contract = Contract.of(scheme)  # what this loop reads of the scheme
        self.step_hooks = list(step_hooks)  # after every optimizer step, e.g. pruning masks
        # Called with each epoch's metrics row after it is logged and checkpointed; a callback
        # may raise to stop the run (e.g. a tuner pruning a bad trial). State stays consistent.
        self.callbacks = list(callbacks)
        # every log_every_steps steps: the steps' mean losses and lr (trackers' curves)
        self.step_callbacks: list[Callable[[dict[str, Any]], None]] = []
        self._window = LossSums()
        self.settings = settings
        check_run_dir(run_dir)
        self.run_dir = Path(run_dir)
        self.augment = augment
        self.export_info = export_info or {}
        # Under torchrun (WORLD_SIZE > 1) each process joins the group and trains its slice
        # of every global batch; see distill.core.distributed.
        self.device = distributed.init_from_env(settings.device) or resolve_device(settings.device)
        if settings.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("train.precision fp16 needs a CUDA device; on CPU use bf16 or fp32")
        self.scheme.to(self.device)
        # A DataLoader or IterableDataset is read in its own order (a stream); anything else
        # is indexed in the run's own seeded order.
        self.streamed = is_stream(train_data)
        check_train_data(self)  # empty data, labels beyond the model's classes: refused now
        shard_models(self)
        speed_up(self)
        params = [p for p in scheme.modules.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(params, settings, lr_groups(self.contract, params))
        self.scaler = torch.amp.GradScaler("cuda", enabled=settings.precision == "fp16")
        self.aug_gen = torch.Generator().manual_seed(settings.seed + 7919)
        plan(self)  # batches per epoch, optimizer steps per epoch and in all
        self.losses = LossSums()  # the running epoch's logged losses
        self._step_losses: list[dict[str, torch.Tensor]] = []  # this optimizer step's
        self.guard = NonFiniteGuard(self)  # NaN/inf losses and gradients stop a step
        self.writer = BackgroundWriter()  # checkpoints written while training goes on
        self.feed = BatchFeed(self)  # this epoch's batches, prefetched or streamed
        self._stop_signal: str | None = None
        self._restored = False
        self._log: MetricsLog | None = None  # the run's metrics log, while `fit` runs
        self.state = {
            "epoch": 0,
            "batch": 0,
            "step": 0,
            "best": -math.inf,
            "best_epoch": -1,
            "bad_epochs": 0,
        }

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def save(self) -> None:
        """The resume checkpoint (see `distill.loop.resume`), on disk when this returns."""
        save(self)
        self.writer.wait()

    def restore(self) -> None:
        """Continue from the run dir's resume checkpoint."""
        restore(self)

    # ----------------------------------------------------------------- the loop
    def _optimizer_step(self) -> None:
        factor = lr_factor(self.state["step"], self.total_steps, self.settings.schedule)
        if factor != getattr(self, "_lr_factor", None):  # constant stretches cost nothing
            for group in self.optimizer.param_groups:
                group["lr"] = group.setdefault("base_lr", group["lr"]) * factor
            self._lr_factor = factor
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        distributed.average_gradients(params)
        norm = None
        if self.settings.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(params, self.settings.clip_grad_norm)
        self.guard.check_step(self._step_losses, params, norm)
        self._step_losses = []
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        hook = self.contract.after_optimizer_step
        if hook is not None:  # e.g. an EMA teacher follows the updated weights
            hook(self.state["step"])
        for step_hook in self.step_hooks:  # e.g. pruning masks
            step_hook(self.state["step"])
        self.state["step"] += 1

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train to the end, to `max_steps`, or to a SIGINT/SIGTERM; return a summary.

        `resume` continues from the run dir's last checkpoint.
        """
        s = self.settings
        if distributed.is_main():
            check_free_space(self)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        previous_det = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(s.deterministic)
        try:
            if resume:
                if not self._restored:
                    self.restore()
            else:
                seed_everything(s.seed)
            self._log = log = prepare_fit(self)  # the metrics log, teacher cache, on_fit_start
            with stop_on_signals(self):
                result = self._run(log)
        except BaseException:
            with contextlib.suppress(Exception):  # what is queued still lands on disk
                self.writer.wait()
            raise
        else:
            self.writer.wait()  # every checkpoint on disk before the run reports
            return result
        finally:
            torch.use_deterministic_algorithms(previous_det)

    def _run(self, log: MetricsLog) -> dict[str, Any]:
        started = time.perf_counter()
        while self.state["epoch"] < self.settings.epochs:
            stopped_by = self._train_epoch()
            if stopped_by == "max_steps" and self.batches_per_epoch is None:
                # a stream of unknown length is planned by max_steps: this is its end, so the
                # part-pass is validated (and may become the best) like a finished epoch
                self._close_epoch_losses()
                self._end_epoch(log, final=True)
                return summary(self, started, None)
            if stopped_by == "early_stop":  # by a validation within the epoch
                return summary(self, started, None, early_stopped=True)
            if stopped_by is not None:  # the state is already saved
                return summary(self, started, stopped_by)
            if self._end_epoch(log):
                return summary(self, started, None, early_stopped=True)
        return summary(self, started, None)

    def _train_epoch(self) -> str | None:
        """Run the rest of the current epoch; returns why it stopped early, or None."""
        s, st = self.settings, self.state
        order = None if self.streamed else epoch_order(self, st["epoch"])
        self.scheme.train(True)
        if st["batch"] == 0:
            self.losses = LossSums()
        set_epoch(self.train_data, st["epoch"], s.seed)  # per-epoch transforms and shuffles
        self.feed.start(order)
        group: list = [1, None]  # this optimizer step's micro-batches and their items
        with EpochProgress(self) as progress:
            while self.batches_per_epoch is None or st["batch"] < self.batches_per_epoch:
                batch = self._next_batch(order, group)
                if batch is None:  # the stream ran out: this pass is over
                    break
                self._backward(batch, group[0])
                progress.update()
                last = self.batches_per_epoch is not None and st["batch"] >= self.batches_per_epoch
                if st["batch"] % s.grad_accum and not last:
                    continue  # still accumulating
                stopped_by = self._step_and_check()
                if stopped_by is not None:
                    return stopped_by
            if self.streamed:
                stopped_by = self._end_stream_pass()
                if stopped_by is not None:
                    return stopped_by
        self.feed.stop()
        self._close_epoch_losses()
        return None

    def _next_batch(self, order: torch.Tensor | None, group: list) -> dict | None:
        """The next micro-batch, with the items of its optimizer step (`group`: the step's
        micro-batch count and items, updated at the first micro-batch of each step)."""
        s, b = self.settings, self.state["batch"]
        if self.streamed:
            batch = self.feed.batch(None)
            if batch is None:
                return None
            group[:] = [s.grad_accum, stream_items(self, batch)]
        else:
            if b % s.grad_accum == 0 or group[1] is None:  # this step's micro-batches
                size = min(s.grad_accum, self.batches_per_epoch - b + b % s.grad_accum)
                group[:] = [size, group_items(self, order, b - b % s.grad_accum, size)]
            bs = s.batch_size
            batch = self.feed.batch(order[b * bs : (b + 1) * bs] if self.drop_last else order)
        if group[1] is not None:
            # items (e.g. supervised tokens) per micro-batch on average over the group: a
            # scheme dividing its sum by this makes the accumulated loss the group mean
            per = group[1] / group[0] / distributed.world_size()
            batch["group_items"] = torch.tensor(per, device=self.device)
        return batch

    def _backward(self, batch: dict, group_size: int) -> None:
        """The scheme's step on one micro-batch, its loss back-propagated and logged."""
        with autocast(self):
            losses = self.scheme.step(batch, self.state["step"])
        self._step_losses.append(losses)  # checked before the update (the guard)
        loss = losses["loss"] if group_size == 1 else losses["loss"] / group_size
        self.scaler.scale(loss).backward()
        self.losses.add(losses)
        if self.step_callbacks:
            self._window.add(losses)
        self.state["batch"] += 1

    def _close_epoch_losses(self) -> None:  # the epoch's train_* means, over the ranks
        self._epoch_losses = distributed.mean_over_ranks(self.losses.means("train_"))

    def _step_and_check(self) -> str | None:
        """The optimizer step, then a stop (signal, max_steps) or a step-cadence checkpoint."""
        s, st = self.settings, self.state
        self._optimizer_step()
        self._log_step()
        stopped_by = self._stop_reason()
        if stopped_by is not None:
            self.feed.stop()  # lets the workers go
            save(self)
            return stopped_by
        if (
            s.eval_every_steps
            and st["step"] % s.eval_every_steps == 0
            and (self._validate_within_epoch())
        ):
            return "early_stop"
        if s.checkpoint_every_steps and st["step"] % s.checkpoint_every_steps == 0:
            save(self)
        return None

    def _log_step(self) -> None:
        """Every log_every_steps steps: the mean losses since the last such row, and the lr,
        to the step callbacks (this process's micro-batches; the epoch rows average ranks)."""
        every, step = self.settings.log_every_steps, self.state["step"]
        if not (self.step_callbacks and every and step % every == 0):
            return
        row = {f"steps/{k}": v for k, v in self._window.means().items()}
        row.update(step=step, epoch=self.state["epoch"])
        row["steps/lr"] = float(self.optimizer.param_groups[0]["lr"])
        self._window = LossSums()
        for callback in self.step_callbacks:
            callback(row)

    def _end_stream_pass(self) -> str | None:
        """A stream ended: step on a part-filled accumulation group; an empty pass is an error."""
        st = self.state
        if st["batch"] == 0:
            raise DataError(
                f"the training stream yielded no batches in epoch {st['epoch'] + 1}; check the "
                f"dataset (an empty file, or every sample filtered out)"
            )
        if st["batch"] % self.settings.grad_accum:
            return self._step_and_check()
        return None

    def _stop_reason(self) -> str | None:
        if distributed.active():  # ranks must stop at the same step
            if distributed.any_rank(self._stop_signal is not None):
                return self._stop_signal or "SIGTERM"
        elif self._stop_signal is not None:
            return self._stop_signal
        if self.settings.max_steps is not None and self.state["step"] >= self.settings.max_steps:
            return "max_steps"
        return None

    def _end_epoch(self, log: MetricsLog, final: bool = False) -> bool:
        """Evaluate (every `eval_every` epochs unless validation goes by steps, and at the
        end), log, checkpoint (every `checkpoint_every` epochs, and at the end); True when
        early stopping says to stop."""
        with self.writer.held():  # its writes start after it, beside the next epoch
            return self._close_epoch(log, final)

    def _close_epoch(self, log: MetricsLog, final: bool) -> bool:
        s, st = self.settings, self.state
        done = st["epoch"] + 1
        final = final or done >= s.epochs
        metrics, improved = {}, False
        if final or (s.eval_every_steps is None and done % s.eval_every == 0):
            metrics, improved = validate(self)
        row = self._row(done, self._epoch_losses, metrics)
        st["epoch"] += 1
        st["batch"] = 0
        # Log first, then checkpoint: a crash in between leaves a row for an epoch the
        # checkpoint has not finished, which resume drops and redoes. The other order
        # would lose the row for good.
        if distributed.is_main():
            log.append(row)
        stop = s.early_stop_patience is not None and st["bad_epochs"] >= s.early_stop_patience
        last = final or stop or done % s.checkpoint_every == 0
        save_epoch(self, metrics if improved else None, last)
        report_row(self, row, metrics, improved)
        return stop

    def _validate_within_epoch(self) -> bool:
        """`eval_every_steps`: validate, log a row at the epoch's fraction done; True when
        early stopping says to stop (after a checkpoint)."""
        s, st = self.settings, self.state
        metrics, improved = validate(self)
        self.scheme.train(True)
        part = st["batch"] / self.batches_per_epoch if self.batches_per_epoch else 0.0
        losses = distributed.mean_over_ranks(self.losses.means("train_"))
        row = self._row(round(st["epoch"] + part, 4), losses, metrics)
        if distributed.is_main() and self._log is not None:
            self._log.append(row)
        stop = s.early_stop_patience is not None and st["bad_epochs"] >= s.early_stop_patience
        save_epoch(self, metrics if improved else None, stop)
        report_row(self, row, metrics, improved)
        return stop

    def _row(self, epoch: float, losses: dict, metrics: dict) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "step": self.state["step"],
            "lr": self.optimizer.param_groups[0]["lr"],
            **losses,
            **{f"val_{k}": v for k, v in metrics.items()},
        }
