"""Run under torchrun: sharding checked against one copy. test_distributed.py runs it on 2
gloo ranks; test_gpu.py on one NCCL rank with CUDA tensors (FSDP_WORKER_DEVICE=cuda).

The model has what breaks naive sharding: a parameter owned by a parent module, weights
tied between two modules, and a part of it called directly before the whole model runs.
Every rank also trains an unsharded copy on the whole batch; after a few steps the gathered
sharded weights must equal it, and optimizer state must survive a gather and reload.
Last, the epoch-end agreement helpers (buffers and metrics from rank 0).
"""

from __future__ import annotations

import copy
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from distill.core import distributed


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(6))  # owned by the root module itself
        self.embed = nn.Embedding(10, 6)
        self.body = nn.Sequential(nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 6))
        self.out = nn.Linear(6, 10, bias=False)
        self.out.weight = self.embed.weight  # tied

    def forward(self, x):
        return self.out(self.body(self.embed(x) * self.scale))


DEVICE = torch.device(os.environ.get("FSDP_WORKER_DEVICE", "cpu"))
if DEVICE.type == "cuda":
    DEVICE = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def loss_of(model: Tied, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # a part first (schemes call parts of models directly), then the whole model
    side = model.body(torch.ones(len(x), 6, device=DEVICE)).pow(2).mean()
    return F.cross_entropy(model(x), y) + 0.1 * side


def main() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.set_device(DEVICE)
    dist.init_process_group("nccl" if DEVICE.type == "cuda" else "gloo")
    torch.manual_seed(0)
    ref = Tied().to(DEVICE)
    sharded = copy.deepcopy(ref)
    distributed.shard_module(sharded, DEVICE)
    assert distributed.is_sharded(sharded) and not distributed.is_sharded(ref)
    assert distributed.is_dtensor(sharded.body[0].weight)
    assert sharded.out.weight is sharded.embed.weight  # still tied
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=0.05, fused=True)
    opt = torch.optim.AdamW(sharded.parameters(), lr=0.05, fused=True)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x, y = torch.randint(0, 10, (8,), generator=gen), torch.randint(0, 10, (8,), generator=gen)
        x, y = x.to(DEVICE), y.to(DEVICE)
        loss_of(ref, x, y).backward()
        opt_ref.step()
        opt_ref.zero_grad()
        part = torch.tensor_split(torch.arange(8), dist.get_world_size())[dist.get_rank()]
        loss_of(sharded, x[part], y[part]).backward()
        opt.step()
        opt.zero_grad()
    full = distributed.gather_state(sharded.state_dict())
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(full[k], v, rtol=1e-6, atol=1e-6, msg=k)
    # optimizer moments: gathered in full, cut again into a fresh sharded copy
    saved = copy.deepcopy(distributed.gather_state(opt.state_dict()))  # as if from a file
    assert all(not distributed.is_dtensor(t) for s in saved["state"].values() for t in s.values())
    again = copy.deepcopy(ref)
    distributed.shard_module(again, DEVICE)
    distributed.load_full_state(again, full)
    opt_again = torch.optim.AdamW(again.parameters(), lr=0.05, fused=True)
    distributed.load_full_optimizer_state(opt_again, saved)
    x, y = torch.arange(8, device=DEVICE), torch.arange(8, device=DEVICE).flip(0)
    for model, optimizer in ((sharded, opt), (again, opt_again)):
        loss_of(model, x[part], y[part]).backward()
        optimizer.step()
    a = distributed.gather_state(sharded.state_dict())
    b = distributed.gather_state(again.state_dict())
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    # epoch-end agreement: rank 0's BatchNorm statistics and validation metrics everywhere
    bn = nn.BatchNorm1d(3).to(DEVICE)
    bn.running_mean.fill_(float(dist.get_rank() + 1))
    distributed.broadcast_buffers(bn)
    assert torch.equal(bn.running_mean.cpu(), torch.ones(3))
    assert distributed.from_rank0({"acc": float(dist.get_rank())}) == {"acc": 0.0}
    if dist.get_rank() == 0:
        print("FSDP-WORKER-OK", flush=True)
    distributed.shutdown()


if __name__ == "__main__":
    main()
