"""What the loop reads: batches as dicts, from map-style datasets, DataLoaders and streams.

The loop works on batch dicts `{'input', 'target', 'index', ...}`. Whatever a user brings is
turned into those here, once:

- a map-style dataset whose items are `(input, target)` pairs or dicts (a Hugging Face
  `Dataset.with_format("torch")` gives dicts): items are collated and the keys mapped;
- a torch `DataLoader`: iterated as it is, so its sampler, collate function, workers and
  batch size are the user's; each batch it yields is mapped the same way;
- an `IterableDataset` (a stream): wrapped in a DataLoader with the run's batch size and
  workers; it has no random access, so no teacher cache, class subsets or stratified splits.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, default_collate

from distill.core.errors import DataError

INPUT_KEYS = ("input", "inputs", "x", "pixel_values", "image", "img", "features")
TARGET_KEYS = ("target", "targets", "label", "labels", "y")


def _first(batch: Mapping[str, Any], keys: Sequence[str], role: str) -> str:
    for key in keys:
        if key in batch:
            return key
    raise DataError(
        f"a batch holds the keys {sorted(batch)}, none of which is the {role} ({', '.join(keys)}); "
        f"rename the column, or give the dataset a column mapping (input: ..., label: ...)"
    )


def as_batch(collated: Any) -> dict[str, Tensor]:
    """A collated batch (an (input, target) pair, or a dict) as the loop's batch dict."""
    if isinstance(collated, Mapping):
        in_key = _first(collated, INPUT_KEYS, "input")
        out = {k: v for k, v in collated.items() if isinstance(v, Tensor)}
        out["input"] = collated[in_key]
        tgt_key = _first(collated, TARGET_KEYS, "target")
        out["target"] = torch.as_tensor(collated[tgt_key])
        for key in {in_key, tgt_key} - {"input", "target"}:
            out.pop(key, None)
    elif isinstance(collated, Sequence) and len(collated) >= 2:
        out = {"input": collated[0], "target": torch.as_tensor(collated[1])}
    else:
        raise DataError(
            f"a batch is a {type(collated).__name__}; the items of a dataset must be "
            f"(input, target) pairs or dicts with an input and a label key"
        )
    if not isinstance(out["input"], Tensor):
        raise DataError(
            f"a batch's input is a {type(out['input']).__name__}, not a tensor; give the dataset a "
            f"transform that turns each sample into a tensor (e.g. transforms: [to_tensor])"
        )
    return out


def collate_items(items: list[Any]) -> dict[str, Tensor]:
    """default_collate, then mapped to the loop's batch dict."""
    return as_batch(default_collate(items))


def is_stream(data: Any) -> bool:
    """A DataLoader or an IterableDataset: read in its own order, without indexing."""
    return isinstance(data, DataLoader | IterableDataset) or _is_hf_iterable(data)


def _is_hf_iterable(data: Any) -> bool:
    return (
        type(data).__module__.startswith("datasets.") and type(data).__name__ == "IterableDataset"
    )


def stream_length(data: Any) -> int | None:
    """Batches per pass of a stream when it knows (a DataLoader over a sized dataset)."""
    if isinstance(data, DataLoader):
        try:
            return len(data)
        except TypeError:
            return None
    return None


def stream_loader(data: Any, *, batch_size: int, workers: int, pin_memory: bool) -> DataLoader:
    """The DataLoader a stream is read through: the user's own, or one around an
    IterableDataset with the run's batch size and workers."""
    if isinstance(data, DataLoader):
        return data
    return DataLoader(
        data,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_items,
        pin_memory=pin_memory,
    )


def stream_batches(loader: DataLoader, skip: int = 0) -> Iterator[dict[str, Tensor]]:
    """The loader's batches as batch dicts, after skipping `skip` of them (a resumed epoch).

    Batches carry `index`: the sample's position in this pass, counted from 0 (a stream has
    no stable sample ids; the loader's own 'index' key wins when it gives one)."""
    seen = 0
    for b, collated in enumerate(loader):
        batch = as_batch(collated)
        n = len(batch["target"])
        if b >= skip:
            if "index" not in batch:
                batch["index"] = torch.arange(seen, seen + n)
            yield batch
        seen += n


def set_epoch(data: Any, epoch: int, seed: int) -> None:
    """Tell the data which epoch starts: distill's on-disk splits seed their transforms with
    it; samplers and Hugging Face streams reshuffle with it."""
    from distill.data.records import EpochAware

    if isinstance(data, DataLoader):
        sampler = getattr(data, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        batch_sampler = getattr(data, "batch_sampler", None)
        if hasattr(getattr(batch_sampler, "sampler", None), "set_epoch"):
            batch_sampler.sampler.set_epoch(epoch)
        data = data.dataset
    if _is_hf_iterable(data):
        data.set_epoch(epoch)
    elif isinstance(data, EpochAware):
        data.set_epoch(epoch, seed)
