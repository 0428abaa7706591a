"""The loop's batches: the epoch's index batches loaded (ahead of the loop on DataLoader
workers, in its exact order, when `train.workers` > 0), or a stream's batches as they
come; augmented (draws made for the global batch on every rank before it is sliced, so
any number of processes sees the same views), and moved to the device."""

from __future__ import annotations

import math
import sys
from typing import Any

import torch

from distill.core import distributed
from distill.core.errors import ConfigError
from distill.data import load_batch
from distill.data.core import batches_whole
from distill.data.loading import collate_items, stream_batches, stream_length, stream_loader


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


class BatchFeed:
    """The batches of a `Trainer` (`t`), epoch by epoch."""

    def __init__(self, trainer: Any):
        self.t = trainer
        self.stream: Any = None  # this epoch's prefetched or streamed batches

    def stop(self) -> None:
        """Drop the epoch's batch iterator (DataLoader workers exit)."""
        self.stream = None

    def batch(self, index: torch.Tensor | None) -> dict[str, torch.Tensor] | None:
        """This process's part of the global batch `index`, augmented, on the device.

        Random draws (views, augmentation) are made for the whole global batch on every
        rank before it is sliced, so any number of processes sees the same views."""
        cache = self.t.contract.teacher_cache
        views = cache is not None and cache.views
        random_draws = views or self.t.augment is not None
        if self.t.streamed:  # each rank reads its own part of a stream
            batch = next(self.stream, None)
            if batch is None:
                return None
            return self.augment_and_move(batch, cache, views=False, shard=False)
        wanted = self.load_index(index)
        batch = None
        if self.stream is not None:  # collated ahead by DataLoader workers
            batch = next(self.stream, None)
            if batch is None or not torch.equal(batch["index"], wanted):
                raise RuntimeError("the prefetched batches went out of step with the loop")
        if batch is None:
            batch = load_batch(self.t.train_data, wanted)
        return self.augment_and_move(batch, cache, views=views, shard=random_draws)

    def augment_and_move(
        self, batch: dict[str, torch.Tensor], cache: Any, *, views: bool, shard: bool
    ) -> dict[str, torch.Tensor]:
        epoch_views = cache is not None and getattr(cache, "epoch_views", 0)
        if epoch_views:  # the teacher's outputs were cached on this epoch's views
            batch["view"] = torch.full_like(batch["index"], self.t.state["epoch"])
        if views:  # the student sees exactly the cached views
            view = torch.randint(cache.views, (len(batch["index"]),), generator=self.t.aug_gen)
            batch["view"] = view
            batch["input"] = cache.view_inputs(batch["index"], view)
        elif self.t.augment is not None:
            if self.t.contract.wants_clean:
                batch["clean"] = batch["input"]
            batch["input"] = self.t.augment(batch["input"], self.t.aug_gen)
        if shard and distributed.active():
            batch = {k: distributed.shard(v) for k, v in batch.items()}
        device = self.t.device
        batch = {
            k: v if v.device == device else v.to(device, non_blocking=True)
            for k, v in batch.items()
        }
        if self.t.settings.channels_last and batch["input"].dim() == 4:
            batch["input"] = batch["input"].contiguous(memory_format=torch.channels_last)
        return batch

    def load_index(self, index: torch.Tensor) -> torch.Tensor:
        """The samples this process loads for global batch `index`: its slice, or the whole
        batch when random draws are made for the global batch first."""
        cache = self.t.contract.teacher_cache
        if (cache is not None and cache.views) or self.t.augment is not None:
            return index
        return distributed.shard(index)

    def start(self, order: torch.Tensor) -> None:
        """With `train.workers` > 0 and a dataset that is collated sample by sample (no
        `.batch()`), DataLoader worker processes load the rest of this epoch's batches ahead
        of the loop, in the loop's exact order (pinned for a CUDA device)."""
        self.stream = None
        workers = self.t.settings.workers
        if self.t.streamed:
            loader = stream_loader(
                self.t.train_data,
                batch_size=self.t.settings.batch_size,
                workers=workers,
                pin_memory=self.t.device.type == "cuda",
            )
            self.stream = stream_batches(loader, skip=self.t.state["batch"])
            return
        if workers == 0 or batches_whole(self.t.train_data):
            return
        from torch.utils.data import DataLoader

        bs, first = self.t.settings.batch_size, self.t.state["batch"]
        batches = [
            self.load_index(order[b * bs : (b + 1) * bs] if self.t.drop_last else order).tolist()
            for b in range(first, self.t.batches_per_epoch)
        ]
        loader = DataLoader(
            _Indexed(self.t.train_data),
            batch_sampler=batches,
            collate_fn=_collate_indexed,
            num_workers=workers,
            pin_memory=self.t.device.type == "cuda",
        )
        self.stream = iter(loader)


def plan_stream(t: Any) -> None:
    """Steps and schedule for a stream: from the loader's length when it has one, else
    from train.max_steps (a pass then ends when the stream runs out)."""
    s = t.settings
    t.drop_last = True
    t.batches_per_epoch = stream_length(t.train_data)
    if t.batches_per_epoch is None:
        if s.max_steps is None:
            raise ConfigError(
                "the training data is a stream of unknown length (an IterableDataset or a "
                "streamed dataset), so the LR schedule cannot know the run's length; set "
                "train.max_steps"
            )
        t.total_steps = s.max_steps
        t.steps_per_epoch = max(1, s.max_steps // s.epochs)
    else:
        t.steps_per_epoch = math.ceil(t.batches_per_epoch / s.grad_accum)
        t.total_steps = t.steps_per_epoch * s.epochs
    if distributed.active() and isinstance(t.train_data, torch.utils.data.DataLoader):
        print(
            "distributed run with your own DataLoader: its sampler decides what each rank "
            "reads (use a DistributedSampler)",
            file=sys.stderr,
        )


def plan(t: Any) -> None:
    """A `Trainer`'s epoch plan: a stream's (`plan_stream`), or, for indexed data, every
    full batch (the last partial one dropped: a batch of 1 would break BatchNorm; data
    smaller than a batch is one batch)."""
    if t.streamed:
        plan_stream(t)
        return
    s, n = t.settings, len(t.train_data)
    t.drop_last = n > s.batch_size
    t.batches_per_epoch = n // s.batch_size if t.drop_last else 1
    t.steps_per_epoch = math.ceil(t.batches_per_epoch / s.grad_accum)
    t.total_steps = t.steps_per_epoch * s.epochs


def epoch_order(t: Any, epoch: int) -> torch.Tensor:
    # The order depends only on (seed, epoch), so a resumed run sees the same batches.
    gen = torch.Generator().manual_seed(t.settings.seed * 1_000_003 + epoch)
    return torch.randperm(len(t.train_data), generator=gen)


def stream_items(t: Any, batch: dict[str, torch.Tensor]) -> float | None:
    """For a stream (no look-ahead), a scheme's `count_items` of this micro-batch alone."""
    count = t.contract.count_items
    return None if count is None else float(count(batch)) * t.settings.grad_accum


def group_items(t: Any, order: torch.Tensor, first: int, size: int) -> float | None:
    """Items the scheme normalises by (its `count_items`) over one optimizer step's
    micro-batches, or None for schemes that average per micro-batch."""
    count = t.contract.count_items
    if count is None:
        return None
    bs = t.settings.batch_size
    total = 0
    for b in range(first, first + size):
        index = order[b * bs : (b + 1) * bs] if t.drop_last else order
        total += int(count(load_batch(t.train_data, index)))
    return float(total)
