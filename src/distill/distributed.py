"""Data-parallel training on torch.distributed, launched with torchrun.

    torchrun --nproc_per_node=2 -m distill run CONFIG

Every rank builds the same models from the same seed and walks the same global batch order;
rank r trains on its slice of each global batch (`train.batch_size` stays the global batch,
so the learning rate means the same at any world size). After the backward pass of a step
the gradients of every trained parameter are averaged across ranks in one flattened
all-reduce, so all ranks apply the same update and stay identical; with equal slices this is
the same update one process computes on the whole batch. Augmentation is drawn for the
whole global batch on every rank before slicing, which keeps that equivalence with random
views too. BatchNorm layers normalise with each rank's own slice (as DDP does by default).

The gradient averaging is written here rather than by wrapping the student in
`DistributedDataParallel`: schemes call their models (and parts of them, e.g. a shared
trunk) directly, so there is no single forward for DDP's hooks to wrap.

Only rank 0 writes files (config, metrics, checkpoints, results); every rank evaluates the
validation set, so early stopping and best-epoch decisions agree without communication.
Checkpoints count global batches, so a run resumes on a different number of processes.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist


def run_command(config: str, nproc: int, *extra: str) -> list[str]:
    """The command line of `distill run CONFIG` on `nproc` local processes (torchrun for > 1)."""
    cli = ["-m", "distill", "run", str(config), *extra]
    if nproc == 1:
        return [sys.executable, *cli]
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nnodes=1"]
    return [sys.executable, *launcher, f"--nproc_per_node={nproc}", *cli]


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device_name: str) -> torch.device | None:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA).

    Returns this rank's device when launched by torchrun with more than one process
    (None otherwise). `device_name` is the config's train.device.
    """
    if env_world_size() <= 1:
        return None
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if device_name.startswith("cuda:"):
        raise ValueError(
            "train.device names one GPU, but torchrun starts one process per GPU; set "
            "train.device to cuda or auto and each rank takes cuda:<LOCAL_RANK>"
        )
    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if use_cuda
        else torch.device("cpu")
    )
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def shard(index: torch.Tensor) -> torch.Tensor:
    """This rank's part of a global batch of sample indices (contiguous, near-equal parts)."""
    if not active():
        return index
    return index.tensor_split(world_size())[rank()]


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Replace every gradient by its mean over ranks (one flattened all-reduce).

    A parameter without a gradient on this rank contributes zeros, so the flattened
    buffers line up on every rank.
    """
    if not active() or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p)
        offset += n


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """The mean of each value across ranks (for logged training losses)."""
    if not active() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / world_size() for k, v in zip(keys, t, strict=True)}


def barrier() -> None:
    if active():
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is True on any (e.g. a stop signal seen by one)."""
    if not active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t)
    return bool(t.item() > 0)


def shutdown(exit_code: int = 0) -> None:
    """End a distributed worker: flush, leave the group, and exit at once.

    Exiting through `os._exit` right after `destroy_process_group` skips interpreter
    teardown, where gloo's threads occasionally abort the process ("terminate called
    without an active exception") after all the work is done.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)
