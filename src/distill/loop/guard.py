"""The non-finite guard: a NaN or inf loss or gradient stops the step before the update,
naming the term or the parameters and the last good checkpoint. (A checkpoint holding
non-finite values is never written: `distill.core.checkpoint.save_checkpoint`'s only_finite.)"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from distill.core import distributed
from distill.core.checkpoint import all_finite, load_checkpoint
from distill.core.errors import CheckpointError, NonFiniteError


class NonFiniteGuard:
    """Checks each optimizer step of a `Trainer` (`t`) for NaN/inf before it is applied."""

    def __init__(self, trainer: Any):
        self.t = trainer
        self._flags: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def last_good(self, wait: bool = True) -> str:
        """Where the run can be resumed from. `wait`: first let the checkpoints still being
        written land (not from the writer's own thread, where earlier writes are done)."""
        if wait:
            with contextlib.suppress(Exception):  # a failed write is raised by fit
                self.t.writer.wait()
        path = self.t.ckpt_dir / "last.safetensors"
        if path.is_file():
            try:
                step = load_checkpoint(path)["trainer"]["step"]
            except CheckpointError:
                return f"{str(path)!r} is unreadable"
            return f"the last good checkpoint is {str(path)!r} (step {step}); continue from it with --resume"
        return "no checkpoint had been saved yet"

    def check_step(
        self, step_losses: list[dict], params: list[torch.nn.Parameter], norm: torch.Tensor | None
    ) -> None:
        """Stop before the update when a loss of this step or a gradient is NaN/inf.

        One fused check and one host sync per step over the step's total losses and every
        gradient (a weighted non-finite term makes the total non-finite too). The detail
        (which term, which parameters) is only worked out on failure. Under fp16 the
        GradScaler skips steps with inf/NaN gradients by design, so only the losses are
        checked.
        """
        if not step_losses:
            return
        check_grads = self.t.settings.precision != "fp16"
        tensors = [losses["loss"].detach() for losses in step_losses]
        if check_grads:
            if norm is not None:
                tensors.append(distributed.local(norm.detach()))
            else:
                tensors += [distributed.local(p.grad) for p in params if p.grad is not None]
        finite = self.all_finite(tensors)
        if self.t.sharded:  # each rank saw its own shards: all stop, or none
            finite = not distributed.any_rank(not finite)
        if finite:
            return
        for losses in step_losses:
            self.check_losses(losses)
        if check_grads:
            self.check_gradients(params, norm)
        if not self.t.sharded:
            return
        # the bad shard or loss is on another rank, which raised with the detail
        raise NonFiniteError(
            f"a loss or gradient went non-finite on another rank at epoch "
            f"{self.t.state['epoch'] + 1}, step {self.t.state['step']}; the step was not applied; "
            f"{self.last_good()}. Fix: lower train.optimizer.lr, set train.clip_grad_norm, "
            f"or use precision fp32."
        )

    def all_finite(self, tensors: list[torch.Tensor]) -> bool:
        """True when no element of `tensors` is NaN/inf (one fused pass and one sync per
        device and dtype; the flag tensors kept between steps)."""
        return all_finite(tensors, self._flags)

    def check_losses(self, losses: dict[str, torch.Tensor]) -> None:
        if bool(torch.isfinite(losses["loss"].detach())):
            return
        st = self.t.state
        bad = [k for k, v in losses.items() if k != "loss" and not torch.isfinite(v).all()]
        values = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
        raise NonFiniteError(
            f"the loss went non-finite at epoch {st['epoch'] + 1}, step {st['step']}: "
            f"{'term ' + ', '.join(repr(b) for b in bad) if bad else 'the total'} is not finite "
            f"({values}). Nothing was updated from this batch; {self.last_good()}. "
            f"Fix: lower train.optimizer.lr, set train.clip_grad_norm, use precision fp32, "
            f"or check the inputs for NaN."
        )

    def check_gradients(self, params: list[torch.nn.Parameter], norm: torch.Tensor | None) -> None:
        """A NaN/inf gradient stops the run before the optimizer applies it."""
        if norm is None:
            grads = [p.grad for p in params if p.grad is not None]
            if not grads:
                return
            local = [distributed.local(g) for g in grads]
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(local)).float())
        if bool(torch.isfinite(distributed.local(norm))):
            return
        names = {id(p): n for n, p in self.t.scheme.modules.named_parameters()}
        bad = [
            names.get(id(p), "?")
            for p in params
            if p.grad is not None and not distributed.local(p.grad).isfinite().all()
        ]
        raise NonFiniteError(
            f"non-finite gradient at epoch {self.t.state['epoch'] + 1}, step {self.t.state['step']} "
            f"in {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} although the loss was finite. "
            f"The step was not applied; {self.last_good()}. Fix: lower train.optimizer.lr, set "
            f"train.clip_grad_norm, or use precision fp32."
        )
