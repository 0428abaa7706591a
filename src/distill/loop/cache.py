"""Teacher-output cache: a frozen teacher's outputs computed once, reused across epochs and runs.

A cache entry holds, for every training sample (and, with augmentation, every stored view of
it), what the objective reads from the teacher: its logits and any tapped layers. Arrays are
`.npy` files written through memory maps, so they may exceed memory; small caches are loaded
into memory (on the run's device) for speed.

Correctness rules:

- The entry's name is a fingerprint of the teacher's weights, the training inputs, the
  augmentation, the number of views, the tapped layers and the storage layout. Anything that
  changes the teacher's outputs changes the name, so a stale entry is never found.
- `meta.json` records each array's shape, dtype and checksum; a missing, truncated or
  altered file is detected on open, reported, and the entry is rebuilt.
- An entry is built in a temporary folder and renamed into place when complete, so an
  interrupted build leaves nothing that looks valid.
- With random augmentation, a student view must meet the teacher output of the same view
  (Beyer et al. 2022, "consistent teaching"). The cache then stores `views` augmented copies
  of each input next to the teacher's outputs for them, and the student is fed exactly those
  views. Without `views`, an augmented run uses the live teacher (`plan_cache` says why).

Large label spaces may keep only the top-k logits per row plus the mass of the rest
(`topk`): the teacher's distribution at temperature 1 is then exact on the top k classes and
spreads the remaining probability evenly over the others. This is an approximation and is
only used when asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from distill.core.checkpoint import fsync_dir
from distill.core.errors import ConfigError
from distill.core.fingerprints import file_checksum, weights_fingerprint
from distill.core.progress import WorkProgress
from distill.core.settings import CacheSettings
from distill.data import load_batch, teacher_input
from distill.data.core import batches_whole
from distill.loop.cache_keys import data_fingerprint, topk_compress, topk_expand
from distill.schemes.table import SCHEMES, with_capability

FORMAT_VERSION = 1
_DTYPES = {"fp32": np.float32, "fp16": np.float16}


def default_cache_dir() -> Path:
    """`teacher/` under the folder generated datasets use ($DISTILL_CACHE_DIR, ~/.cache/distill)."""
    from distill.data.raw import cache_dir

    return cache_dir() / "teacher"


@dataclass(frozen=True)
class CachePlan:
    """What `plan_cache` decided: use a cache or not, and why (logged at the run's start)."""

    use: bool
    reason: str


def plan_cache(
    settings: CacheSettings,
    *,
    scheme: str,
    augmented: bool,
    reads_input_grad: bool,
    sharded_teacher: bool = False,
    streamed: bool = False,
    epoch_views: bool = False,
) -> CachePlan:
    """Whether a run should cache its teacher. `on` raises when the cache would not be exact.

    `epoch_views`: the data is read from disk with random per-sample transforms seeded by
    (seed, epoch, sample), so the cache can hold the teacher's outputs on each epoch's views."""
    problems = []
    if streamed:
        problems.append(
            "the training data is streamed: a stream has no stable sample ids to store the "
            "teacher's outputs by (load it map-style to cache)"
        )
    if sharded_teacher:
        problems.append(
            "the teacher is sharded across ranks (train.distributed.teacher: shard), and the "
            "cache is built by rank 0 alone; use teacher: replicate to cache its outputs"
        )
    spec = SCHEMES.get(scheme)
    if spec is None or not spec.cacheable:
        serves = ", ".join(with_capability("cacheable"))
        problems.append(f"scheme {scheme!r} runs its teachers itself (the cache serves {serves})")
    if reads_input_grad:
        problems.append("a term reads the gradient of the teacher's loss w.r.t. its input")
    if augmented and not settings.views and not epoch_views:
        problems.append(
            "data.augment draws a new view every step; set train.cache.views to cache that "
            "many views per sample (the student then sees only those views)"
        )
    if settings.mode == "off":
        return CachePlan(False, "train.cache.mode is off")
    if problems:
        if settings.mode == "on":
            raise ConfigError(
                "train.cache.mode on, but the cache cannot be used: " + "; ".join(problems)
            )
        return CachePlan(False, "live teacher: " + "; ".join(problems))
    if settings.views and not augmented and not epoch_views:
        raise ConfigError(
            "train.cache.views is set but data.augment is empty: every view would be the same "
            "input; remove views"
        )
    how = f"{settings.views} augmented views per sample" if settings.views else "exact"
    if epoch_views:
        how = "exact: every epoch's transformed views, seeded per sample"
    return CachePlan(True, f"teacher outputs cached ({how})")


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


class TeacherCache:
    """The cached outputs of `teacher` on `dataset` (see the module docstring).

    `layers` are the teacher's tapped layer names the objective reads; `augment` and `views`
    store that many augmented views per sample (views are drawn with generators seeded from
    `seed` and the view number, so a rebuilt entry holds the same views).
    """

    def __init__(
        self,
        teacher: nn.Module,
        dataset: Any,
        layers: Sequence[str] = (),
        *,
        settings: CacheSettings | None = None,
        augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
        augment_spec: Any = None,
        seed: int = 0,
        epochs: int = 0,
        workers: int = 0,
        batch_size: int = 512,
        log: Callable[[str], None] = print,
        warn: Callable[[str], None] | None = None,
        progress: bool = True,
    ):
        settings = settings or CacheSettings()
        if settings.views and augment is None:
            raise ConfigError("train.cache.views needs data.augment (views of what?)")
        # Data read from disk with random per-sample transforms (distill.data.records): its
        # view of a sample in epoch e is a pure function of (seed, e, sample), so the cache
        # holds the teacher's outputs on every epoch's views (view = epoch) and no inputs;
        # the student reads its own batches as a live-teacher run would.
        self.epoch_views = epochs if getattr(dataset, "random", False) else 0
        from distill.taps import model_tensor

        self.teacher, self.dataset = teacher, dataset
        # the teacher's own tensors ('head.weight') are not per-sample: read, never stored
        self.constants = [n for n in layers if model_tensor(teacher, n) is not None]
        self.layers = [n for n in layers if n not in self.constants]
        self.settings, self.augment, self.seed = settings, augment, seed
        self.augment_spec = augment_spec
        self.views = settings.views or 0
        if self.epoch_views and self.views:
            raise ConfigError(
                "train.cache.views stores augmented copies of in-memory inputs; this data is "
                "read from disk with random transforms, which the cache follows epoch by epoch "
                "without stored views: remove train.cache.views"
            )
        self.batch_size, self.log = batch_size, log
        self.progress = progress  # a bar (or a line every 30 s) while the cache is built
        self.workers = workers
        # damage and rebuilds: to `warn` (default: stderr) when given, else to `log`
        self.warn = warn or (log if log is not print else _to_stderr)
        self.root = Path(settings.dir) if settings.dir else default_cache_dir()
        self.arrays: dict[str, Tensor | np.ndarray] = {}
        self.path: Path | None = None
        self.num_classes: int | None = None
        self.derived: dict[str, Callable[[Tensor], tuple[Tensor, ...]]] = {}
        self.in_memory = False
        self._parts: dict[str, int] = {}  # derived key -> how many arrays it has

    def derive(self, key: str, fn: Callable[[Tensor], tuple[Tensor, ...]]) -> None:
        """Also serve `fn(teacher logits)` under `key` in every lookup's knowledge.

        Computed once over the whole in-memory table when the entry is opened (e.g. a KD
        term's soft targets at its temperature: `distill.losses.PreparedTeacher`), so a step
        only gathers rows; `fn` returns a tuple of tensors with the logits' leading dims,
        served as a tuple. Entries too large for `memory_mb` (read from disk per batch) skip
        it and the term prepares from the logits per step, as without a cache."""
        self.derived[key] = fn
        if self.path is not None:
            self._derive()

    def _derive(self) -> None:
        if not self.in_memory:
            return
        for key, fn in self.derived.items():
            if f"{key}.0" in self.arrays:
                continue
            if "logits" in self.arrays:
                logits = self.arrays["logits"].float()
            else:
                logits = topk_expand(
                    self.arrays["logits.values"],
                    self.arrays["logits.indices"],
                    self.arrays["logits.tail"],
                    self.num_classes,
                )
            for i, part in enumerate(fn(logits)):
                self.arrays[f"{key}.{i}"] = part.contiguous()
            self._parts[key] = i + 1

    # ----------------------------------------------------------------- identity
    def fingerprint(self) -> str:
        s = self.settings
        parts = {
            "version": FORMAT_VERSION,
            "teacher": weights_fingerprint(self.teacher),
            "data": data_fingerprint(self.dataset),
            "augment": self.augment_spec if self.views else None,
            "views": self.views,
            "epoch_views": self.epoch_views,
            "seed": self.seed if self.views or self.epoch_views else None,
            "layers": self.layers,
            "topk": s.topk,
            "dtype": s.dtype,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    # ----------------------------------------------------------------- build / open
    def ensure(self) -> TeacherCache:
        """Open the matching entry, building (or rebuilding) it when missing or damaged."""
        if self.path is not None:
            return self
        key = self.fingerprint()
        path = self.root / key[:24]
        problem = self._check(path, key) if path.exists() else "missing"
        if problem is not None:
            if problem != "missing":  # said even when `log` is quiet: damage is news
                self.warn(f"teacher cache {path}: {problem}; rebuilding it")
            self._build(path, key)
            problem = self._check(path, key)
            if problem is not None:
                raise ConfigError(
                    f"teacher cache {path} is unusable right after building: {problem}"
                )
        else:
            self.log(f"teacher cache: reusing {path}")
        self._open(path)
        return self

    def _check(self, path: Path, key: str) -> str | None:
        """None when the entry at `path` is complete and intact; else what is wrong."""
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError) as e:
            return f"meta.json is missing or unreadable ({type(e).__name__})"
        if meta.get("fingerprint") != key or meta.get("version") != FORMAT_VERSION:
            return "its fingerprint does not match this teacher, data and settings"
        for name, info in meta["arrays"].items():
            file = path / info["file"]
            if not file.is_file() or file.stat().st_size != info["bytes"]:
                return f"array {name!r} is missing or has the wrong size (truncated?)"
            if self.settings.verify and file_checksum(file) != info["checksum"]:
                return f"array {name!r} fails its checksum (corrupt)"
        return None

    def _open(self, path: Path) -> None:
        meta = json.loads((path / "meta.json").read_text())
        total = sum(info["bytes"] for info in meta["arrays"].values())
        in_memory = total <= self.settings.memory_mb * 2**20
        device = next(self.teacher.parameters(), torch.empty(0)).device
        for name, info in meta["arrays"].items():
            arr = np.load(path / info["file"], mmap_mode="r")
            self.arrays[name] = torch.from_numpy(np.array(arr)).to(device) if in_memory else arr
        self.num_classes = meta.get("num_classes")
        self.path = path
        self.in_memory = in_memory
        self._derive()

    def _view_generator(self, view: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + 7 * view + 1)

    @torch.no_grad()
    def _build(self, path: Path, key: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=self.root))
        try:
            n, views = len(self.dataset), max(self.views, self.epoch_views, 1)
            self.log(f"teacher cache: computing teacher outputs for {n} samples x {views} view(s)")
            writers, num_classes = self._write_outputs(tmp, n, views)
            arrays = {}
            for name, w in writers.items():
                w.flush()
                del w
                file = tmp / f"{name}.npy"
                arrays[name] = {
                    "file": file.name,
                    "bytes": file.stat().st_size,
                    "checksum": file_checksum(file),
                }
            writers.clear()
            meta = {
                "version": FORMAT_VERSION,
                "fingerprint": key,
                "samples": n,
                "views": self.views,
                "epoch_views": self.epoch_views,
                "num_classes": num_classes,
                "layers": self.layers,
                "arrays": arrays,
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            if path.exists():  # a damaged entry: move it aside, then drop it
                trash = Path(tempfile.mkdtemp(prefix=".trash.", dir=self.root))
                os.replace(path, trash / "old")
                shutil.rmtree(trash, ignore_errors=True)
            try:
                os.replace(tmp, path)
                fsync_dir(self.root)
            except OSError:  # another process finished the same entry first: keep theirs
                if self._check(path, key) is not None:
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _write_outputs(self, tmp: Path, n: int, views: int) -> tuple[dict, int | None]:
        """The teacher's outputs on every sample and view, into memory-mapped .npy files in
        `tmp` (one per stored tensor); returns the open files and the class count."""
        from distill.taps import Tap

        device = next(self.teacher.parameters(), torch.empty(0)).device
        was_training = self.teacher.training
        self.teacher.eval()
        writers: dict[str, np.memmap] = {}
        num_classes = None
        batches = views * -(-n // self.batch_size)
        with (
            Tap(self.teacher, self.layers, "teacher") as tap,
            WorkProgress(batches, "teacher cache", enabled=self.progress) as bar,
        ):
            for view in range(views):
                gen = self._view_generator(view) if self.views else None
                if self.epoch_views:  # this epoch's views, exactly as training draws them
                    self.dataset.set_epoch(view, self.seed)
                for x, start in self._inputs():
                    if gen is not None:
                        x = self.augment(x, gen)
                    k = tap.run(x.to(device))
                    out = self._to_store(k.logits, k.feats)
                    if gen is not None:
                        out["input"] = x
                    num_classes = k.logits.shape[-1]
                    for name, value in out.items():
                        if name not in writers:
                            writers[name] = np.lib.format.open_memmap(
                                tmp / f"{name}.npy",
                                mode="w+",
                                dtype=value.numpy().dtype,
                                shape=(views, n, *value.shape[1:]),
                            )
                        writers[name][view, start : start + len(x)] = value.numpy()
                    bar.update()
        self.teacher.train(was_training)
        return writers, num_classes

    def _inputs(self):
        """(teacher inputs, first index) of consecutive batches of the dataset, in order;
        decoded on DataLoader workers for data read from disk."""
        n = len(self.dataset)
        if self.workers and not batches_whole(self.dataset):
            from torch.utils.data import DataLoader

            from distill.data.loading import collate_items

            loader = DataLoader(
                self.dataset,
                batch_size=self.batch_size,
                num_workers=self.workers,
                collate_fn=collate_items,
            )
            start = 0
            for batch in loader:
                x = teacher_input(batch)
                yield x, start
                start += len(x)
            return
        for start in range(0, n, self.batch_size):
            index = torch.arange(start, min(start + self.batch_size, n))
            yield teacher_input(load_batch(self.dataset, index)), start

    def _to_store(self, logits: Tensor, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        s, dtype = self.settings, _DTYPES[self.settings.dtype]
        torch_dtype = torch.from_numpy(np.zeros(0, dtype)).dtype
        out: dict[str, Tensor] = {}
        if s.topk is not None and s.topk < logits.shape[-1]:
            values, indices, tail = topk_compress(logits, s.topk)
            index_dtype = torch.int16 if logits.shape[-1] <= 2**15 else torch.int32
            out["logits.values"] = values.to(torch_dtype).cpu()
            out["logits.indices"] = indices.to(index_dtype).cpu()
            out["logits.tail"] = tail.float().cpu()
        else:
            out["logits"] = logits.to(torch_dtype).cpu()
        for name, value in feats.items():
            out[f"feat.{name}"] = value.to(torch_dtype).cpu()
        return out

    # ----------------------------------------------------------------- use
    def _take(self, name: str, index: Tensor, view: Tensor | None, device: torch.device) -> Tensor:
        arr = self.arrays[name]
        if not isinstance(arr, Tensor):  # memory-mapped: read just these rows from disk
            v = view if view is not None else torch.zeros_like(index)
            return torch.from_numpy(arr[v.cpu().numpy(), index.cpu().numpy()]).to(device)
        flat = arr.flatten(0, 1)  # (views * samples, ...): a view, no copy
        if index.device != flat.device:
            index = index.to(flat.device)
        if view is not None:  # view-major rows
            index = view.to(flat.device) * arr.shape[1] + index
        out = flat.index_select(0, index)
        return out if out.device == device else out.to(device, non_blocking=True)

    def lookup(self, index: Tensor, view: Tensor | None = None):
        """The teacher's `Knowledge` for samples `index` (and their `view`s), in fp32."""
        from distill.taps import Knowledge, model_tensor

        if self.path is None:
            self.ensure()
        device = index.device
        if "logits" in self.arrays:
            logits = self._take("logits", index, view, device).float()
        else:
            logits = topk_expand(
                self._take("logits.values", index, view, device),
                self._take("logits.indices", index, view, device),
                self._take("logits.tail", index, view, device),
                self.num_classes,
            )
        feats = {
            name: self._take(f"feat.{name}", index, view, device).float() for name in self.layers
        }
        for key, parts in self._parts.items():
            feats[key] = tuple(self._take(f"{key}.{i}", index, view, device) for i in range(parts))
        for name in self.constants:
            feats[name] = model_tensor(self.teacher, name).detach().to(device).float()
        return Knowledge(logits, feats)

    def view_inputs(self, index: Tensor, view: Tensor) -> Tensor:
        """The stored augmented inputs of samples `index`, views `view`."""
        if self.path is None:
            self.ensure()
        return self._take("input", index, view, index.device)
