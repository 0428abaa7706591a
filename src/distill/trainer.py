"""The one training loop. Schemes decide what a step computes; this file decides everything else:
device, precision, accumulation, clipping, the LR schedule, evaluation, checkpoints and resume.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from distill import distributed
from distill.checkpoint import adapter_part, load_checkpoint, save_checkpoint, save_weights
from distill.compress.structure import structure_of
from distill.data import Augmentation, load_batch
from distill.data.core import batches_whole
from distill.data.loading import (
    collate_items,
    is_stream,
    set_epoch,
    stream_batches,
    stream_length,
    stream_loader,
)
from distill.errors import CheckpointError, ConfigError, DataError, NonFiniteError
from distill.evaluate import evaluate
from distill.logs import MetricsLog
from distill.schemes.contract import Contract, Scheme
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


def _lr_groups(contract: Contract, params: list[torch.nn.Parameter]) -> list[dict] | None:
    """Parameter groups for a scheme's `lr_scales` ({module name in scheme.modules: factor of
    the learning rate}, e.g. a generator that must move slower than the student); None when
    it has none. Parameters keep their order, so checkpoints line up."""
    scales, scheme = contract.lr_scales, contract.scheme
    if not scales:
        return None
    unknown = set(scales) - set(scheme.modules.keys())
    if unknown:
        raise ConfigError(f"lr_scales names modules the scheme does not train: {sorted(unknown)}")
    scale_of = {
        id(p): scales[k] for k, m in scheme.modules.items() if k in scales for p in m.parameters()
    }
    groups: list[dict] = []
    for p in params:
        scale = scale_of.get(id(p), 1.0)
        if not groups or groups[-1]["scale"] != scale:
            groups.append({"scale": scale, "params": []})
        groups[-1]["params"].append(p)
    return groups


def make_optimizer(
    params: list[torch.nn.Parameter],
    settings: TrainSettings,
    groups: list[dict] | None = None,
) -> torch.optim.Optimizer:
    """The configured optimizer over `params`; `groups` ([{"scale": f, "params": [...]}])
    give parts of them the learning rate times f."""
    opt = settings.optimizer
    if groups is not None:
        params = [{"params": g["params"], "lr": opt.lr * g["scale"]} for g in groups]
    flat = [p for g in groups for p in g["params"]] if groups is not None else params
    if opt.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=opt.lr,
            momentum=opt.momentum,
            nesterov=opt.nesterov,
            weight_decay=opt.weight_decay,
        )
    cls = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
    return cls(
        params,
        lr=opt.lr,
        betas=opt.betas,
        weight_decay=opt.weight_decay,
        **_kernel(flat, opt.impl),
    )


def _kernel(params: list[torch.nn.Parameter], impl: str) -> dict[str, bool]:
    """Keyword arguments choosing the optimizer's kernels.

    'auto' takes the fused kernel (one per parameter for the whole update; on CPU about 4x
    faster than the per-tensor loop PyTorch defaults to there) when every parameter is a
    floating-point tensor on a CPU or CUDA device, else PyTorch's default."""
    if impl == "fused" or (
        impl == "auto"
        and params
        and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    ):
        return {"fused": True}
    if impl == "foreach":
        return {"foreach": True}
    if impl == "loop":
        return {"foreach": False}
    return {}


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


def _non_finite_keys(state: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys of the floating-point tensors in a nested state that hold NaN or inf."""
    bad = []
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            bad += _non_finite_keys(value, name + ".")
        elif isinstance(value, (list, tuple)):
            bad += _non_finite_keys(dict(enumerate(value)), name + ".")
        elif (
            isinstance(value, torch.Tensor)
            and value.is_floating_point()
            and not bool(torch.isfinite(value).all())
        ):
            bad.append(name)
    return bad


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Indexed(torch.utils.data.Dataset):
    """A map-style dataset's (input, target) items, each with its index."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.dataset[i], i

    def __getitems__(self, indices: list[int]) -> list[tuple[Any, int]]:
        many = getattr(self.dataset, "__getitems__", None)
        items = many(indices) if many is not None else [self.dataset[i] for i in indices]
        return list(zip(items, indices))


def _collate_indexed(items: list[tuple[Any, int]]) -> dict[str, torch.Tensor]:
    batch = collate_items([x for x, _ in items])
    batch["index"] = torch.tensor([i for _, i in items])
    return batch


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
        callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
        step_hooks: Sequence[Any] = (),
    ):
        self.scheme, self.train_data, self.val_data = scheme, train_data, val_data
        self.contract = Contract.of(scheme)  # what this loop reads of the scheme
        # called after every optimizer step, e.g. pruning masks (`distill.schemes.contract.StepHook`)
        self.step_hooks = list(step_hooks)
        # Called with each epoch's metrics row after it is logged and checkpointed; a callback
        # may raise to stop the run (e.g. a tuner pruning a bad trial). State stays consistent.
        self.callbacks = list(callbacks)
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.augment = augment
        self.export_info = export_info or {}
        # Under torchrun (WORLD_SIZE > 1) each process joins the group and trains its slice
        # of every global batch; see distill.distributed.
        self.device = distributed.init_from_env(settings.device) or resolve_device(settings.device)
        if settings.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("train.precision fp16 needs a CUDA device; on CPU use bf16 or fp32")
        self.scheme.to(self.device)
        self._shard_models()
        self._speed_up_models()
        params = [p for p in scheme.modules.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(params, settings, _lr_groups(self.contract, params))
        self.scaler = torch.amp.GradScaler("cuda", enabled=settings.precision == "fp16")
        self.aug_gen = torch.Generator().manual_seed(settings.seed + 7919)
        # A DataLoader or IterableDataset is read in its own order (a stream); anything else
        # is indexed in the run's own seeded order.
        self.streamed = is_stream(train_data)
        if self.streamed:
            self._plan_stream()
        else:
            n = len(train_data)
            self.drop_last = n > settings.batch_size  # a final batch of 1 would break BatchNorm
            self.batches_per_epoch = n // settings.batch_size if self.drop_last else 1
            self.steps_per_epoch = math.ceil(self.batches_per_epoch / settings.grad_accum)
            self.total_steps = self.steps_per_epoch * settings.epochs
        self._sums: dict[str, float] = {}
        self._summed = 0
        self._pending: list[dict[str, torch.Tensor]] = []  # losses not yet added to _sums
        self._step_losses: list[dict[str, torch.Tensor]] = []  # this optimizer step's
        self._finite_flags: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._stream = None  # this epoch's prefetched batches (train.workers > 0)
        self._stop_signal: str | None = None
        self._restored = False
        self.state = {
            "epoch": 0,
            "batch": 0,
            "step": 0,
            "best": -math.inf,
            "best_epoch": -1,
            "bad_epochs": 0,
        }

    def _plan_stream(self) -> None:
        """Steps and schedule for a stream: from the loader's length when it has one, else
        from train.max_steps (a pass then ends when the stream runs out)."""
        s = self.settings
        self.drop_last = True
        self.batches_per_epoch = stream_length(self.train_data)
        if self.batches_per_epoch is None:
            if s.max_steps is None:
                raise ConfigError(
                    "the training data is a stream of unknown length (an IterableDataset or a "
                    "streamed dataset), so the LR schedule cannot know the run's length; set "
                    "train.max_steps"
                )
            self.total_steps = s.max_steps
            self.steps_per_epoch = max(1, s.max_steps // s.epochs)
        else:
            self.steps_per_epoch = math.ceil(self.batches_per_epoch / s.grad_accum)
            self.total_steps = self.steps_per_epoch * s.epochs
        if distributed.active() and isinstance(self.train_data, torch.utils.data.DataLoader):
            print(
                "distributed run with your own DataLoader: its sampler decides what each rank "
                "reads (use a DistributedSampler)",
                file=sys.stderr,
            )

    def _shard_models(self) -> None:
        """Under torchrun, shard the trained and/or frozen models with FSDP when asked to."""
        placement = self.settings.distributed
        self.sharded = distributed.active() and placement.student == "shard"
        shard_frozen = distributed.active() and placement.teacher == "shard"
        if not (self.sharded or shard_frozen):
            return
        if self.sharded and self.settings.precision == "fp16":
            raise ConfigError(
                "train.distributed.student shard with precision fp16 is not supported (the "
                "loss scaler does not handle sharded gradients); use precision bf16"
            )
        frozen = list(self.contract.frozen)
        if (
            self.contract.after_optimizer_step is not None
            and frozen
            and placement.student != placement.teacher
        ):
            raise ConfigError(
                "this scheme updates a frozen copy of the student from its weights after every "
                "step (an EMA teacher), so both must be laid out alike: set "
                "train.distributed.student and train.distributed.teacher to the same value"
            )
        trained = {id(p) for p in self.scheme.modules.parameters()}
        if shard_frozen and any(id(p) in trained for m in frozen for p in m.parameters()):
            raise ConfigError(
                "a frozen model shares parameters with a trained one, so it cannot be sharded "
                "on its own; set train.distributed.teacher to replicate"
            )
        if self.sharded:
            distributed.shard_module(self.scheme.modules, self.device)
        if shard_frozen:
            for m in frozen:
                if any(True for _ in m.parameters()):
                    distributed.shard_module(m, self.device)

    def _models(self) -> list[nn.Module]:
        """The trained models (not the objective's loss modules) and the frozen ones."""
        trained = [m for k, m in self.scheme.modules.items() if k != "objective"]
        return [*trained, *self.contract.frozen]

    def _speed_up_models(self) -> None:
        """channels_last memory layout and torch.compile, when the config asks for them."""
        s = self.settings
        if s.channels_last:
            for m in self._models():
                if any(p.dim() == 4 for p in m.parameters()):
                    m.to(memory_format=torch.channels_last)
        c = s.compile
        if not c.enabled:
            return
        if self.sharded:
            raise ConfigError(
                "train.compile with train.distributed.student shard is not supported; turn "
                "one of them off"
            )
        for m in self._models():
            if any(True for _ in m.parameters()):
                m.compile(
                    backend=c.backend,
                    mode=None if c.mode == "default" else c.mode,
                    dynamic=c.dynamic,
                )

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    # ----------------------------------------------------------------- checkpoints
    def save(self) -> None:
        # Sharded tensors are gathered in full on every rank (a collective), so the file is
        # the same whatever the strategy and world size; then one rank writes it.
        modules = distributed.gather_state(self.scheme.modules.state_dict())
        optimizer = distributed.gather_state(self.optimizer.state_dict())
        if not distributed.is_main():  # every rank holds the same state; one writes it
            self._fold()
            return
        bad = _non_finite_keys({"modules": modules, "optimizer": optimizer})
        if bad:  # keep the last good checkpoint: a resume must start from finite values
            self._fold()
            shown = ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
            print(
                f"checkpoint at step {self.state['step']} not written: non-finite values in "
                f"{shown}; {self._last_good()}",
                file=sys.stderr,
            )
            return
        save_checkpoint(
            self.ckpt_dir / "last.safetensors",
            {
                "modules": modules,
                "optimizer": optimizer,
                "scaler": self.scaler.state_dict(),
                "trainer": dict(self.state),
                # running loss sums of the unfinished epoch, so its logged means stay exact
                "epoch_sums": {k: float(v) for k, v in self._epoch_sums().items()},
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
        configured_lr = [g["lr"] for g in self.optimizer.param_groups]
        try:
            distributed.load_full_state(self.scheme.modules, ckpt["modules"])
            distributed.load_full_optimizer_state(self.optimizer, ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(
                f"{str(path)!r} does not match the models and optimizer this config builds "
                f"({str(e).splitlines()[0]}); resume with the config the run started with "
                f"(its config.yaml), or start a new run_dir"
            ) from None
        # The schedule scales each group's base lr; it comes from this config, not the
        # checkpoint, so a resume with --allow-change train.optimizer.lr takes the new one
        # (unchanged, it is the same number).
        for group, lr in zip(self.optimizer.param_groups, configured_lr):
            group["base_lr"] = lr
        if ckpt["scaler"]:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.state = dict(ckpt["trainer"])
        self._sums = {k: float(v) for k, v in ckpt["epoch_sums"].items()}
        self._summed = ckpt["epoch_count"]
        _set_rng_state(ckpt["rng"], self.aug_gen)
        self._restored = True

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

    def _batch(self, index: torch.Tensor | None) -> dict[str, torch.Tensor] | None:
        """This process's part of the global batch `index`, augmented, on the device.

        Random draws (views, augmentation) are made for the whole global batch on every
        rank before it is sliced, so any number of processes sees the same views."""
        cache = self.contract.teacher_cache
        views = cache is not None and cache.views
        random_draws = views or self.augment is not None
        if self.streamed:  # each rank reads its own part of a stream
            batch = next(self._stream, None)
            if batch is None:
                return None
            return self._augment_and_move(batch, cache, views=False, shard=False)
        wanted = self._load_index(index)
        batch = None
        if self._stream is not None:  # collated ahead by DataLoader workers
            batch = next(self._stream, None)
            if batch is None or not torch.equal(batch["index"], wanted):
                raise RuntimeError("the prefetched batches went out of step with the loop")
        if batch is None:
            batch = load_batch(self.train_data, wanted)
        return self._augment_and_move(batch, cache, views=views, shard=random_draws)

    def _augment_and_move(
        self, batch: dict[str, torch.Tensor], cache: Any, *, views: bool, shard: bool
    ) -> dict[str, torch.Tensor]:
        epoch_views = cache is not None and getattr(cache, "epoch_views", 0)
        if epoch_views:  # the teacher's outputs were cached on this epoch's views
            batch["view"] = torch.full_like(batch["index"], self.state["epoch"])
        if views:  # the student sees exactly the cached views
            view = torch.randint(cache.views, (len(batch["index"]),), generator=self.aug_gen)
            batch["view"] = view
            batch["input"] = cache.view_inputs(batch["index"], view)
        elif self.augment is not None:
            if self.contract.wants_clean:
                batch["clean"] = batch["input"]
            batch["input"] = self.augment(batch["input"], self.aug_gen)
        if shard and distributed.active():
            batch = {k: distributed.shard(v) for k, v in batch.items()}
        device = self.device
        batch = {
            k: v if v.device == device else v.to(device, non_blocking=True)
            for k, v in batch.items()
        }
        if self.settings.channels_last and batch["input"].dim() == 4:
            batch["input"] = batch["input"].contiguous(memory_format=torch.channels_last)
        return batch

    def _load_index(self, index: torch.Tensor) -> torch.Tensor:
        """The samples this process loads for global batch `index`: its slice, or the whole
        batch when random draws are made for the global batch first."""
        cache = self.contract.teacher_cache
        if (cache is not None and cache.views) or self.augment is not None:
            return index
        return distributed.shard(index)

    def _start_stream(self, order: torch.Tensor) -> None:
        """With `train.workers` > 0 and a dataset that is collated sample by sample (no
        `.batch()`), DataLoader worker processes load the rest of this epoch's batches ahead
        of the loop, in the loop's exact order (pinned for a CUDA device)."""
        self._stream = None
        workers = self.settings.workers
        if self.streamed:
            loader = stream_loader(
                self.train_data,
                batch_size=self.settings.batch_size,
                workers=workers,
                pin_memory=self.device.type == "cuda",
            )
            self._stream = stream_batches(loader, skip=self.state["batch"])
            return
        if workers == 0 or batches_whole(self.train_data):
            return
        from torch.utils.data import DataLoader

        bs, first = self.settings.batch_size, self.state["batch"]
        batches = [
            self._load_index(order[b * bs : (b + 1) * bs] if self.drop_last else order).tolist()
            for b in range(first, self.batches_per_epoch)
        ]
        loader = DataLoader(
            _Indexed(self.train_data),
            batch_sampler=batches,
            collate_fn=_collate_indexed,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
        )
        self._stream = iter(loader)

    def _last_good(self) -> str:
        path = self.ckpt_dir / "last.safetensors"
        if path.is_file():
            try:
                step = load_checkpoint(path)["trainer"]["step"]
            except CheckpointError:
                return f"{str(path)!r} is unreadable"
            return f"the last good checkpoint is {str(path)!r} (step {step}); continue from it with --resume"
        return "no checkpoint had been saved yet"

    def _check_step(self, params: list[torch.nn.Parameter], norm: torch.Tensor | None) -> None:
        """Stop before the update when a loss of this step or a gradient is NaN/inf.

        One fused check and one host sync per step over the step's total losses and every
        gradient (a weighted non-finite term makes the total non-finite too). The detail
        (which term, which parameters) is only worked out on failure. Under fp16 the
        GradScaler skips steps with inf/NaN gradients by design, so only the losses are
        checked.
        """
        if not self._step_losses:
            return
        check_grads = self.settings.precision != "fp16"
        tensors = [losses["loss"].detach() for losses in self._step_losses]
        if check_grads:
            if norm is not None:
                tensors.append(distributed.local(norm.detach()))
            else:
                tensors += [distributed.local(p.grad) for p in params if p.grad is not None]
        finite = self._all_finite(tensors)
        if self.sharded:  # each rank saw its own shards: all stop, or none
            finite = not distributed.any_rank(not finite)
        if finite:
            return
        for losses in self._step_losses:
            self._check_losses(losses)
        if check_grads:
            self._check_gradients(params, norm)
        if not self.sharded:
            return
        # the bad shard or loss is on another rank, which raised with the detail
        raise NonFiniteError(
            f"a loss or gradient went non-finite on another rank at epoch "
            f"{self.state['epoch'] + 1}, step {self.state['step']}; the step was not applied; "
            f"{self._last_good()}. Fix: lower train.optimizer.lr, set train.clip_grad_norm, "
            f"or use precision fp32."
        )

    def _all_finite(self, tensors: list[torch.Tensor]) -> bool:
        """True when no element of `tensors` is NaN/inf, with one fused pass and one sync.

        Uses the kernel GradScaler checks gradients with (multiplying by 1 changes nothing),
        once per (device, dtype) group, with its flag tensors kept between steps; where a
        device lacks it, falls back to per-tensor norms."""
        groups: dict[tuple, list[torch.Tensor]] = {}
        for t in tensors:
            groups.setdefault((t.device, t.dtype), []).append(t)
        try:
            bad = False
            for (device, _dtype), group in groups.items():
                flags = self._finite_flags.get(device)
                if flags is None:
                    flags = self._finite_flags[device] = (
                        torch.zeros(1, device=device),
                        torch.ones(1, device=device),
                    )
                found, one = flags
                found.zero_()
                torch._amp_foreach_non_finite_check_and_unscale_(group, found, one)
                bad = bad or bool(found)
            return not bad
        except (RuntimeError, NotImplementedError):
            norms = [n.float().reshape(()) for n in torch._foreach_norm(tensors)]
            return bool(torch.isfinite(torch.stack(norms).sum()))

    def _check_losses(self, losses: dict[str, torch.Tensor]) -> None:
        if bool(torch.isfinite(losses["loss"].detach())):
            return
        st = self.state
        bad = [k for k, v in losses.items() if k != "loss" and not torch.isfinite(v).all()]
        values = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
        raise NonFiniteError(
            f"the loss went non-finite at epoch {st['epoch'] + 1}, step {st['step']}: "
            f"{'term ' + ', '.join(repr(b) for b in bad) if bad else 'the total'} is not finite "
            f"({values}). Nothing was updated from this batch; {self._last_good()}. "
            f"Fix: lower train.optimizer.lr, set train.clip_grad_norm, use precision fp32, "
            f"or check the inputs for NaN."
        )

    def _check_gradients(self, params: list[torch.nn.Parameter], norm: torch.Tensor | None) -> None:
        """A NaN/inf gradient stops the run before the optimizer applies it."""
        if norm is None:
            grads = [p.grad for p in params if p.grad is not None]
            if not grads:
                return
            local = [distributed.local(g) for g in grads]
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(local)).float())
        if bool(torch.isfinite(distributed.local(norm))):
            return
        names = {id(p): n for n, p in self.scheme.modules.named_parameters()}
        bad = [
            names.get(id(p), "?")
            for p in params
            if p.grad is not None and not distributed.local(p.grad).isfinite().all()
        ]
        raise NonFiniteError(
            f"non-finite gradient at epoch {self.state['epoch'] + 1}, step {self.state['step']} "
            f"in {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} although the loss was finite. "
            f"The step was not applied; {self._last_good()}. Fix: lower train.optimizer.lr, set "
            f"train.clip_grad_norm, or use precision fp32."
        )

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
        self._check_step(params, norm)
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

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """SIGINT/SIGTERM ask the loop to save a checkpoint after the current step and return.

        A second signal aborts at once; atomic writes keep the files on disk intact.
        """
        self._stop_signal = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, _frame: object) -> None:
            if self._stop_signal is not None:
                raise KeyboardInterrupt
            self._stop_signal = signal.Signals(signum).name
            tqdm.write(
                f"{self._stop_signal}: saving a checkpoint after this step (send again to abort now)",
                file=sys.stderr,
            )

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train to the end, to `max_steps`, or to a SIGINT/SIGTERM; return a summary.

        `resume` continues from the run dir's last checkpoint.
        """
        s = self.settings
        self.run_dir.mkdir(parents=True, exist_ok=True)
        previous_det = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(s.deterministic)
        try:
            if resume:
                if not self._restored:
                    self.restore()
            else:
                seed_everything(s.seed)
            log = MetricsLog(self.run_dir)
            if distributed.is_main():
                log.keep_epochs_before(self.state["epoch"] + 1)
            cache = self.contract.teacher_cache
            if cache is not None:  # built (or checked) once, before the first step
                if distributed.is_main():  # under torchrun rank 0 builds, the others open it
                    cache.ensure()
                distributed.barrier()
                cache.ensure()
            hook = self.contract.on_fit_start
            if hook is not None:  # schemes that schedule by epoch learn its length
                hook(self.total_steps, self.steps_per_epoch)
            with self._stop_on_signals():
                return self._run(log)
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
                return self._summary(started, None)
            if stopped_by is not None:  # the state is already saved
                return self._summary(started, stopped_by)
            if self._end_epoch(log):
                return self._summary(started, None, early_stopped=True)
        return self._summary(started, None)

    def _train_epoch(self) -> str | None:
        """Run the rest of the current epoch; returns why it stopped early, or None."""
        s, st = self.settings, self.state
        order = None if self.streamed else self._epoch_order(st["epoch"])
        bs = s.batch_size
        self.scheme.train(True)
        if st["batch"] == 0:
            self._sums, self._summed, self._pending = {}, 0, []
        set_epoch(self.train_data, st["epoch"], s.seed)  # per-epoch transforms and shuffles
        self._start_stream(order)
        bar = tqdm(
            total=self.batches_per_epoch,
            initial=st["batch"],
            desc=f"epoch {st['epoch'] + 1}/{s.epochs}",
            disable=not s.progress or None,
            leave=False,
            dynamic_ncols=True,
        )
        group_size, group_items = 1, None
        # without a terminal there is no bar: a line every 30 s shows the run is alive
        quiet_since = time.monotonic() if s.progress and bar.disable else None
        with bar:
            while self.batches_per_epoch is None or st["batch"] < self.batches_per_epoch:
                b = st["batch"]
                if self.streamed:
                    batch = self._batch(None)
                    if batch is None:  # the stream ran out: this pass is over
                        break
                    group_size, group_items = s.grad_accum, self._stream_items(batch)
                else:
                    if b % s.grad_accum == 0 or group_items is None:  # this step's micro-batches
                        group_size = min(
                            s.grad_accum, self.batches_per_epoch - b + b % s.grad_accum
                        )
                        group_items = self._group_items(order, b - b % s.grad_accum, group_size)
                    index = order[b * bs : (b + 1) * bs] if self.drop_last else order
                    batch = self._batch(index)
                if group_items is not None:
                    # items (e.g. supervised tokens) per micro-batch on average over the group:
                    # a scheme dividing its sum by this makes the accumulated loss the group mean
                    batch["group_items"] = torch.tensor(
                        group_items / group_size / distributed.world_size(), device=self.device
                    )
                with self._autocast():
                    losses = self.scheme.step(batch, st["step"])
                self._step_losses.append(losses)  # checked before the update (_check_step)
                loss = losses["loss"] if group_size == 1 else losses["loss"] / group_size
                self.scaler.scale(loss).backward()
                self._accumulate(losses)
                st["batch"] += 1
                bar.update(1)
                if quiet_since is not None and time.monotonic() - quiet_since > 30:
                    quiet_since = time.monotonic()
                    print(
                        f"epoch {st['epoch'] + 1}/{s.epochs}: batch {st['batch']}/"
                        f"{self.batches_per_epoch}, step {st['step']}",
                        file=sys.stderr,
                        flush=True,
                    )
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
        self._stream = None
        self._close_epoch_losses()
        return None

    def _close_epoch_losses(self) -> None:
        self._epoch_losses = distributed.mean_over_ranks(
            {f"train_{k}": float(v / max(self._summed, 1)) for k, v in self._epoch_sums().items()}
        )

    def _step_and_check(self) -> str | None:
        """The optimizer step, then a stop (signal, max_steps) or a step-cadence checkpoint."""
        s, st = self.settings, self.state
        self._optimizer_step()
        stopped_by = self._stop_reason()
        if stopped_by is not None:
            self._stream = None  # lets the workers go
            self.save()
            return stopped_by
        if s.checkpoint_every_steps and st["step"] % s.checkpoint_every_steps == 0:
            self.save()
        return None

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

    def _stream_items(self, batch: dict[str, torch.Tensor]) -> float | None:
        """For a stream (no look-ahead), a scheme's `count_items` of this micro-batch alone."""
        count = self.contract.count_items
        return None if count is None else float(count(batch)) * self.settings.grad_accum

    def _accumulate(self, losses: dict[str, torch.Tensor]) -> None:
        """Running sums of the logged losses. Steps only queue their detached values; the
        queue is summed every 256 steps and whenever the sums are read."""
        self._pending.append({k: v.detach() for k, v in losses.items()})
        self._summed += 1
        if len(self._pending) >= 256:
            self._fold()

    def _fold(self) -> None:
        # Summed one value at a time in float64, so the result does not depend on where the
        # queue was cut (a resumed epoch logs exactly what an uninterrupted one does).
        for k in dict.fromkeys(k for losses in self._pending for k in losses):
            values = [losses[k].float().reshape(()) for losses in self._pending if k in losses]
            total = self._sums.get(k, 0.0)
            for x in torch.stack(values).tolist():
                total += x
            self._sums[k] = total
        self._pending = []

    def _epoch_sums(self) -> dict[str, float]:
        self._fold()
        return self._sums

    def _group_items(self, order: torch.Tensor, first: int, size: int) -> float | None:
        """Items the scheme normalises by (its `count_items`) over one optimizer step's
        micro-batches, or None for schemes that average per micro-batch."""
        count = self.contract.count_items
        if count is None:
            return None
        bs = self.settings.batch_size
        total = 0
        for b in range(first, first + size):
            index = order[b * bs : (b + 1) * bs] if self.drop_last else order
            total += int(count(load_batch(self.train_data, index)))
        return float(total)

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
        """Evaluate (every `eval_every` epochs, and at the end), log, checkpoint (every
        `checkpoint_every` epochs, and at the end); True when early stopping says to stop."""
        s, st = self.settings, self.state
        done = st["epoch"] + 1
        final = final or done >= s.epochs
        metrics, improved = {}, False
        if final or done % s.eval_every == 0:
            metrics, improved = self._validate()
        row = {
            "epoch": done,
            "step": st["step"],
            "lr": self.optimizer.param_groups[0]["lr"],
            **self._epoch_losses,
            **{f"val_{k}": v for k, v in metrics.items()},
        }
        st["epoch"] += 1
        st["batch"] = 0
        # Log first, then checkpoint: a crash in between leaves a row for an epoch the
        # checkpoint has not finished, which resume drops and redoes. The other order
        # would lose the row for good.
        if distributed.is_main():
            log.append(row)
        stop = s.early_stop_patience is not None and st["bad_epochs"] >= s.early_stop_patience
        if final or stop or done % s.checkpoint_every == 0:
            self.save()
        for callback in self.callbacks:
            callback(row)
        if s.progress and distributed.is_main():
            tqdm.write(  # (printed with or without a terminal)
                f"epoch {row['epoch']}/{s.epochs}  loss {row.get('train_loss', float('nan')):.4f}  "
                + "  ".join(f"val {k} {v:.4f}" for k, v in metrics.items())
                + ("  *best" if improved else ""),
                file=sys.stderr,
            )
        return stop

    def _validate(self) -> tuple[dict[str, float], bool]:
        """Validation metrics; the best weights saved when they improve (the patience of
        early stopping counts validated epochs)."""
        s, st = self.settings, self.state
        # Ranks normalised their own slices, so their BatchNorm statistics differ: all take
        # rank 0's (the ones its checkpoint saves, and what DDP's broadcast_buffers keeps).
        distributed.broadcast_buffers(self.scheme.modules)
        scheme_eval = self.contract.evaluate  # e.g. perplexity for LMs
        evaluator = scheme_eval or partial(evaluate, self.scheme.eval_model(), workers=s.workers)
        metrics = evaluator(self.val_data, batch_size=s.eval_batch_size, device=self.device)
        # best-epoch and early-stopping decisions (and the collectives behind them) must agree
        metrics = distributed.from_rank0(metrics)
        score = -metrics["nll"] if s.monitor == "nll" else metrics[s.monitor]
        # a model still being compressed (pruning on its way to its target sparsity) is not
        # yet the model the run promises: each such epoch is kept as "best" provisionally
        # and the first settled epoch replaces it
        settled = all(h.settled(st["step"]) for h in self.step_hooks)
        improved = score > st["best"] or not settled
        if improved:
            st["best"], st["best_epoch"], st["bad_epochs"] = score, st["epoch"] + 1, 0
            if not settled:
                st["best"] = -math.inf
            self._save_best(metrics)
        else:
            st["bad_epochs"] += 1
        return metrics, improved

    def _save_best(self, metrics: dict[str, float]) -> None:
        st = self.state
        weights = distributed.gather_state(self.scheme.eval_model().state_dict())
        adapter: dict = {}
        if self.export_info.get("peft_base"):  # a LoRA student on a base file: its adapter
            weights, adapter = adapter_part(self.scheme.eval_model(), weights)
        structure = structure_of(self.scheme.eval_model())
        if distributed.is_main():
            save_weights(
                self.ckpt_dir / "best.safetensors",
                weights,
                {
                    **self.export_info,
                    **adapter,
                    **({"structure": structure} if structure else {}),
                    "epoch": st["epoch"] + 1,
                    **{f"val_{k}": v for k, v in metrics.items()},
                },
            )

    def _summary(
        self, started: float, stopped_by: str | None, early_stopped: bool = False
    ) -> dict[str, Any]:
        st = self.state
        return {
            "complete": stopped_by is None,
            "stopped_by": stopped_by or ("early_stop" if early_stopped else None),
            "epochs": st["epoch"],
            "steps": st["step"],
            # the best validation value of the monitored metric (nll is stored negated);
            # None before any epoch was validated (JSON has no infinity)
            f"best_val_{self.settings.monitor}": None
            if not math.isfinite(st["best"])
            else (-st["best"] if self.settings.monitor == "nll" else st["best"]),
            "best_epoch": st["best_epoch"],
            "seconds": time.perf_counter() - started,
        }
