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

Sharding (`train.distributed.student: shard` / `teacher: shard`) uses PyTorch's FSDP2
(`fully_shard`) instead: each rank keeps 1/N of every parameter, gradient and optimizer
moment (sharded along dim 0), and a module's full weights exist only while it runs. Every
module that owns parameters is its own unit (all-gathered just before its forward, freed
after it and again after its backward), so a scheme may call any part of a model directly.
Gradients are reduce-scattered as averages, which gives the same update as the replicated
path. Checkpoints and best weights are gathered to full tensors before rank 0 writes them:
the files are the same whatever the strategy or world size, so any run resumes on any.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def _fsdp() -> Any:
    """torch's FSDP2 and DTensor modules (torch >= 2.6), imported on first use: importing
    them costs about half a second, which a run that never shards should not pay. None
    for a torch built without distributed support."""
    try:
        import torch.distributed.device_mesh as mesh
        import torch.distributed.fsdp as fsdp
        import torch.distributed.tensor as tensor
    except ImportError:
        return None
    return {
        "init_device_mesh": mesh.init_device_mesh,
        "FSDPModule": fsdp.FSDPModule,
        "fully_shard": fsdp.fully_shard,
        "DTensor": tensor.DTensor,
        "distribute_tensor": tensor.distribute_tensor,
    }


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
    buffers line up on every rank. Sharded parameters are skipped: FSDP has already
    averaged their gradients with a reduce-scatter.
    """
    if not active():
        return
    params = [p for p in params if not is_dtensor(p)]
    if not params:
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


# --------------------------------------------------------------------------- sharding (FSDP2)
_MESH: dict[str, Any] = {}


def is_dtensor(t: Any) -> bool:
    # no DTensor can exist before torch.distributed.tensor was imported (by sharding)
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def is_sharded(module: nn.Module) -> bool:
    fsdp = sys.modules.get("torch.distributed.fsdp")  # imported by shard_module
    return fsdp is not None and any(isinstance(m, fsdp.FSDPModule) for m in module.modules())


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a sharded tensor (the tensor itself when it is not sharded)."""
    return t.to_local() if is_dtensor(t) else t


def _mesh(device: torch.device):
    if device.type not in _MESH:
        _MESH[device.type] = _fsdp()["init_device_mesh"](device.type, (world_size(),))
    return _MESH[device.type]


def shard_module(module: nn.Module, device: torch.device) -> None:
    """Shard `module`'s parameters across the ranks with FSDP2, in place.

    Each submodule that owns parameters becomes one unit (modules that share a parameter,
    e.g. tied embeddings, become one unit together), applied bottom-up, and each model
    becomes the root of its units (the models of a ModuleDict/ModuleList each root their
    own, as FSDP needs a root with a forward). Every unit frees its full weights after its
    forward. Roots are initialised here, before any forward, so that calling a part of a
    model first (as schemes do) cannot make that part a root of its own.
    """
    parts = _fsdp()
    if parts is None or not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("sharding needs an initialised torch.distributed process group")
    if isinstance(module, (nn.ModuleDict, nn.ModuleList)):
        for child in module.children():
            shard_module(child, device)
        return
    if not any(True for _ in module.parameters()):
        return
    mesh = _mesh(device)
    order = {id(m): i for i, m in enumerate(module.modules())}
    groups: list[list[nn.Module]] = []  # modules that own parameters; tied ones together
    for m in module.modules():
        mine = {id(p) for p in m.parameters(recurse=False)}
        if m is module or not mine:
            continue
        merged, rest = [m], []
        for g in groups:
            if any(id(p) in mine for x in g for p in x.parameters(recurse=False)):
                merged = g + merged
            else:
                rest.append(g)
        groups = [*rest, merged]
    # children before their parents: a unit takes the parameters no inner unit has taken
    for group in sorted(groups, key=lambda g: -max(order[id(m)] for m in g)):
        parts["fully_shard"](
            group if len(group) > 1 else group[0], mesh=mesh, reshard_after_forward=True
        )
    parts["fully_shard"](module, mesh=mesh, reshard_after_forward=True)
    # FSDP2 picks its root lazily, at the first forward it sees; schemes call parts of a
    # model directly, so set the root now. (A private hook: tested in test_distributed.py.)
    module._get_fsdp_state()._lazy_init()


def gather_state(obj: Any) -> Any:
    """`obj` (a nested state dict) with every sharded tensor gathered in full.

    A collective: every rank calls it on the same structure. Without sharded tensors it
    returns `obj` itself and communicates nothing.
    """
    if not _may_hold_dtensors():
        return obj
    return _gathered(obj)


def _may_hold_dtensors() -> bool:
    """False when no DTensor can exist: none before torch.distributed.tensor is imported
    (`torch.optim` imports it), and none without a process group (a device mesh needs one)."""
    return (
        "torch.distributed.tensor" in sys.modules and dist.is_available() and dist.is_initialized()
    )


def _gathered(obj: Any) -> Any:
    if is_dtensor(obj):
        return obj.full_tensor()
    if isinstance(obj, dict):
        out = {k: _gathered(v) for k, v in obj.items()}
        return obj if all(out[k] is obj[k] for k in obj) else out
    if isinstance(obj, list):
        out_list = [_gathered(v) for v in obj]
        return obj if all(a is b for a, b in zip(out_list, obj, strict=True)) else out_list
    return obj


def shard_like(own: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """`full` laid out like `own`: cut into this rank's shard when `own` is sharded.

    Every rank holds the whole of `full` (all of them read the file), so the cut needs no
    communication."""
    if not is_dtensor(own) or is_dtensor(full) or full.shape != own.shape:
        return full
    full = full.to(device=own.device, dtype=own.dtype)
    return _fsdp()["distribute_tensor"](full, own.device_mesh, own.placements, src_data_rank=None)


def load_full_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """`module.load_state_dict(state)` where `state` holds full tensors and `module` may be
    sharded (strict, as `load_state_dict` is)."""
    own = module.state_dict()
    module.load_state_dict({k: shard_like(own[k], v) if k in own else v for k, v in state.items()})


def load_full_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """`optimizer.load_state_dict(state)` for a state saved with full tensors, when the
    optimizer's parameters may be sharded: each moment the shape of its parameter is cut to
    this rank's shard."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    per_param = {
        i: {k: shard_like(params[i], v) if isinstance(v, torch.Tensor) else v for k, v in s.items()}
        for i, s in state["state"].items()
        if isinstance(i, int) and i < len(params)
    }
    optimizer.load_state_dict({**state, "state": {**state["state"], **per_param}})


def broadcast_buffers(module: nn.Module) -> None:
    """Give every rank rank 0's buffers (e.g. BatchNorm running statistics)."""
    if not active():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def from_rank0(values: dict[str, float]) -> dict[str, float]:
    """Rank 0's value of each entry on every rank (the keys must agree)."""
    if not active() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.broadcast(t, src=0)
    return {k: float(v) for k, v in zip(keys, t, strict=True)}


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
