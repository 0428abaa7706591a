"""The one training loop. Schemes decide what a step computes; this file decides everything else:
device, precision, accumulation, clipping, the LR schedule, evaluation, checkpoints and resume.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from distill.checkpoint import load_checkpoint, save_checkpoint, save_weights
from distill.data import Augmentation, load_batch
from distill.errors import ConfigError
from distill.evaluate import evaluate
from distill.logs import MetricsLog
from distill.schemes import Scheme
from distill.settings import ScheduleSettings, TrainSettings


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device is {name!r} but no CUDA device is available; use 'cpu' or 'auto'"
        )
    return torch.device(name)


def lr_factor(step: int, total_steps: int, schedule: ScheduleSettings) -> float:
    """Multiplier of the base LR at optimizer step `step` (0-based) out of `total_steps`."""
    if step < schedule.warmup_steps:
        return (step + 1) / schedule.warmup_steps
    if schedule.name == "constant":
        return 1.0
    if schedule.name == "step":
        frac = step / max(total_steps, 1)
        return schedule.gamma ** sum(frac >= m for m in schedule.milestones)
    span = max(total_steps - schedule.warmup_steps, 1)
    progress = min((step - schedule.warmup_steps) / span, 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return schedule.min_lr_ratio + (1.0 - schedule.min_lr_ratio) * cosine


def make_optimizer(
    params: list[torch.nn.Parameter], settings: TrainSettings
) -> torch.optim.Optimizer:
    opt = settings.optimizer
    if opt.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=opt.lr,
            momentum=opt.momentum,
            nesterov=opt.nesterov,
            weight_decay=opt.weight_decay,
        )
    cls = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
    return cls(params, lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay)


def _rng_state(aug_gen: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
        "augment": aug_gen.get_state(),
    }


def _set_rng_state(state: dict[str, Any], aug_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(state["python"])
    aug_gen.set_state(state["augment"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Trains `scheme.modules` on `train_data`, evaluating `scheme.eval_model()` on `val_data`.

    The run dir receives `checkpoints/last.safetensors` (full state, for --resume),
    `checkpoints/best.safetensors` (the evaluated model's weights at its best val accuracy),
    and `metrics.jsonl` / `metrics.csv` with one row per epoch.
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
    ):
        self.scheme, self.train_data, self.val_data = scheme, train_data, val_data
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.augment = augment
        self.export_info = export_info or {}
        self.device = resolve_device(settings.device)
        if settings.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("train.precision fp16 needs a CUDA device; on CPU use bf16 or fp32")
        self.scheme.to(self.device)
        params = [p for p in scheme.modules.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(params, settings)
        self.scaler = torch.amp.GradScaler("cuda", enabled=settings.precision == "fp16")
        self.aug_gen = torch.Generator().manual_seed(settings.seed + 7919)
        n = len(train_data)
        self.drop_last = n > settings.batch_size  # a final batch of 1 would break BatchNorm
        self.batches_per_epoch = n // settings.batch_size if self.drop_last else 1
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / settings.grad_accum)
        self.total_steps = self.steps_per_epoch * settings.epochs
        self._sums: dict[str, torch.Tensor] = {}
        self._summed = 0
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

    # ----------------------------------------------------------------- checkpoints
    def save(self) -> None:
        save_checkpoint(
            self.ckpt_dir / "last.safetensors",
            {
                "modules": self.scheme.modules.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "trainer": dict(self.state),
                # running loss sums of the unfinished epoch, so its logged means stay exact
                "epoch_sums": {k: float(v) for k, v in self._sums.items()},
                "epoch_count": self._summed,
                "rng": _rng_state(self.aug_gen),
            },
        )

    def restore(self) -> None:
        path = self.ckpt_dir / "last.safetensors"
        if not path.is_file():
            raise ConfigError(
                f"nothing to resume: {str(path)!r} does not exist; run without --resume"
            )
        ckpt = load_checkpoint(path)
        self.scheme.modules.load_state_dict(ckpt["modules"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt["scaler"]:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.state = dict(ckpt["trainer"])
        self._sums = {k: torch.tensor(v, device=self.device) for k, v in ckpt["epoch_sums"].items()}
        self._summed = ckpt["epoch_count"]
        _set_rng_state(ckpt["rng"], self.aug_gen)

    # ----------------------------------------------------------------- the loop
    def _epoch_order(self, epoch: int) -> torch.Tensor:
        # The order depends only on (seed, epoch), so a resumed run sees the same batches.
        gen = torch.Generator().manual_seed(self.settings.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.train_data), generator=gen)

    def _autocast(self):
        if self.settings.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.settings.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = load_batch(self.train_data, index)
        if self.augment is not None:
            batch["input"] = self.augment(batch["input"], self.aug_gen)
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _optimizer_step(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = group.setdefault("base_lr", group["lr"]) * lr_factor(
                self.state["step"], self.total_steps, self.settings.schedule
            )
        if self.settings.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.settings.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.state["step"] += 1

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train to the end (or to `max_steps`), return a summary. `resume` continues from last."""
        s = self.settings
        self.run_dir.mkdir(parents=True, exist_ok=True)
        previous_det = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(s.deterministic)
        try:
            if resume:
                self.restore()
            else:
                seed_everything(s.seed)
            log = MetricsLog(self.run_dir)
            log.keep_epochs_before(self.state["epoch"] + 1)
            return self._run(log)
        finally:
            torch.use_deterministic_algorithms(previous_det)

    def _run(self, log: MetricsLog) -> dict[str, Any]:
        s, st = self.settings, self.state
        started = time.perf_counter()
        stopped_early = False
        while st["epoch"] < s.epochs and not stopped_early:
            finished = self._train_epoch()
            if not finished:  # max_steps reached mid-epoch: state already saved
                return self._summary(started, complete=False)
            stopped_early = self._end_epoch(log)
        return self._summary(started, complete=True)

    def _train_epoch(self) -> bool:
        s, st = self.settings, self.state
        order = self._epoch_order(st["epoch"])
        bs = s.batch_size
        self.scheme.train(True)
        if st["batch"] == 0:
            self._sums, self._summed = {}, 0
        bar = tqdm(
            total=self.batches_per_epoch,
            initial=st["batch"],
            desc=f"epoch {st['epoch'] + 1}/{s.epochs}",
            disable=not s.progress or None,
            leave=False,
            dynamic_ncols=True,
        )
        group_size = 1
        while st["batch"] < self.batches_per_epoch:
            b = st["batch"]
            if b % s.grad_accum == 0:  # the micro-batches of this optimizer step
                group_size = min(s.grad_accum, self.batches_per_epoch - b)
            index = order[b * bs : (b + 1) * bs] if self.drop_last else order
            with self._autocast():
                losses = self.scheme.step(self._batch(index), st["step"])
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {loss.item()} at epoch {st['epoch'] + 1}, step {st['step']}: "
                    + ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
                    + ". The last checkpoint is intact; lower the LR, enable clip_grad_norm, or use fp32."
                )
            self.scaler.scale(loss / group_size).backward()
            for k, v in losses.items():
                self._sums[k] = self._sums.get(k, 0.0) + v.detach().float()
            self._summed += 1
            st["batch"] += 1
            bar.update(1)
            if st["batch"] % s.grad_accum == 0 or st["batch"] == self.batches_per_epoch:
                self._optimizer_step()
                if s.checkpoint_every_steps and st["step"] % s.checkpoint_every_steps == 0:
                    self.save()
                if s.max_steps is not None and st["step"] >= s.max_steps:
                    bar.close()
                    self.save()
                    return False
        bar.close()
        self._epoch_losses = {
            f"train_{k}": float(v / max(self._summed, 1)) for k, v in self._sums.items()
        }
        return True

    def _end_epoch(self, log: MetricsLog) -> bool:
        s, st = self.settings, self.state
        metrics = evaluate(
            self.scheme.eval_model(),
            self.val_data,
            batch_size=s.eval_batch_size,
            device=self.device,
        )
        improved = metrics["acc"] > st["best"]
        if improved:
            st["best"], st["best_epoch"], st["bad_epochs"] = metrics["acc"], st["epoch"] + 1, 0
            save_weights(
                self.ckpt_dir / "best.safetensors",
                self.scheme.eval_model(),
                {**self.export_info, "epoch": st["epoch"] + 1, "val_acc": metrics["acc"]},
            )
        else:
            st["bad_epochs"] += 1
        row = {
            "epoch": st["epoch"] + 1,
            "step": st["step"],
            "lr": self.optimizer.param_groups[0]["lr"],
            **self._epoch_losses,
            **{f"val_{k}": v for k, v in metrics.items()},
        }
        st["epoch"] += 1
        st["batch"] = 0
        self.save()
        log.append(row)
        if s.progress:
            tqdm.write(
                f"epoch {row['epoch']}/{s.epochs}  loss {row.get('train_loss', float('nan')):.4f}  "
                f"val acc {metrics['acc']:.4f}  val nll {metrics['nll']:.4f}"
                + ("  *best" if improved else "")
            )
        patience = s.early_stop_patience
        return patience is not None and st["bad_epochs"] >= patience

    def _summary(self, started: float, complete: bool) -> dict[str, Any]:
        st = self.state
        return {
            "complete": complete,
            "epochs": st["epoch"],
            "steps": st["step"],
            "best_val_acc": st["best"],
            "best_epoch": st["best_epoch"],
            "seconds": time.perf_counter() - started,
        }
