"""Diffusion schemes on the one training loop (models from distill.diffusion.core).

- `ddpm`: trains a denoiser on the data, v-prediction at t ~ U(0, 1) (the teacher).
- `progressive` (Salimans & Ho 2022): one round of progressive distillation. The frozen
  teacher samples in `teacher_steps` DDIM steps; the student (initialised from the teacher's
  weights) learns to take one step where the teacher takes two, on the grid of
  teacher_steps / 2, with the target x~ of `progressive_target` and the truncated-SNR
  weight max(alpha^2 / sigma^2, 1) on the x-space error. Chain rounds with `stages:` and
  `teacher: previous, init: previous` to go 256 -> 128 -> ... -> 4 steps.
- `dkdm` (data-free, after Xiang et al. 2024, DKDM): a student of any architecture learns
  the teacher's denoising outputs on the teacher's own sampling trajectories, never on
  data. A pool of noisy samples (checkpointed buffers) starts from noise; each step the
  student matches the teacher's v on the pool, then the pool moves one teacher DDIM step
  towards t = 0, and samples that arrive start again from noise. The training inputs only
  set how many steps an epoch has; validation compares student and teacher on a fixed
  synthetic pool.

All three report sample quality at the end (`test_metrics`): the Fréchet distance in a
digits classifier's feature space for 8x8 images, squared MMD for other data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.core.settings import Strict
from distill.diffusion.core import (
    alpha_sigma,
    ddim_step,
    diffuse,
    predict_x,
    progressive_target,
    sample,
)
from distill.schemes.base import SchemeBase, SchemeContext, parse_args


class _DiffusionArgs(Strict):
    rescale: bool = True  # data in [0, 1] -> [-1, 1]; false for data already centred
    eval_samples: int = Field(500, ge=10)  # samples drawn for the test-time quality metric
    sample_steps: int = Field(64, ge=1)  # DDIM steps at test time (ddpm only)


def _clean(batch: dict[str, Tensor], rescale: bool) -> Tensor:
    x = batch["input"].float()
    return x * 2 - 1 if rescale else x


class _DiffusionBase(SchemeBase):
    steps_attr = "sample_steps"

    def __init__(self, ctx: SchemeContext, args, trained=None, frozen=()):
        self.args = args
        self.shape = tuple(ctx.data.input_shape)
        self.seed = ctx.seed
        super().__init__(ctx.student, ctx.objective, trained, frozen)

    @property
    def steps(self) -> int:
        return getattr(self.args, self.steps_attr)

    def _noise(self, n: int, step: int, device) -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return torch.rand(n, generator=gen).to(device), gen

    @torch.no_grad()
    def evaluate(self, dataset, *, batch_size: int, device) -> dict[str, float]:
        """Validation v-MSE of the student on held-out data at fixed (seeded) times."""
        from distill.data import load_batch

        model = self.eval_model()
        was = model.training
        model.eval()
        gen = torch.Generator().manual_seed(12345)
        total, count = 0.0, 0
        for idx in torch.arange(len(dataset)).split(batch_size):
            x = _clean(load_batch(dataset, idx), self.args.rescale).to(device)
            t = torch.rand(len(x), generator=gen).to(device)
            eps = torch.randn(x.shape, generator=gen).to(device)
            z, v = diffuse(x, t, eps)
            total += float(F.mse_loss(model(z, t), v, reduction="sum"))
            count += x.numel()
        model.train(was)
        return {"nll": total / count}

    def quality(self, model: nn.Module, dataset, steps: int, device="cpu") -> dict[str, float]:
        from distill.data import load_batch
        from distill.diffusion.metrics import sample_quality

        model = model.to(device)
        n = max(2, min(self.args.eval_samples, len(dataset)))
        gen = torch.Generator().manual_seed(2024)
        fake = sample(model, n, self.shape, steps, generator=gen, device=device).cpu()
        real = _clean(load_batch(dataset, torch.arange(len(dataset))), self.args.rescale)
        return sample_quality(fake, real)

    def test_metrics(self, dataset, *, batch_size: int, device="cpu") -> dict[str, float]:
        out = {
            f"test_{k}": v
            for k, v in self.quality(self.student, dataset, self.steps, device).items()
        }
        out["test_steps"] = self.steps
        teacher = getattr(self, "teacher", None)
        if teacher is not None:
            t_steps = getattr(self.args, "teacher_steps", self.steps)
            out.update(
                {
                    f"teacher_test_{k}": v
                    for k, v in self.quality(teacher, dataset, t_steps, device).items()
                }
            )
            out["teacher_test_steps"] = t_steps
        return out


class DDPMArgs(_DiffusionArgs):
    """The shared diffusion arguments; `sample_steps` sets the test-time DDIM steps."""


class DDPM(_DiffusionBase):
    """Denoising diffusion training of one model (v-prediction, SNR + 1 weighting)."""

    Args = DDPMArgs

    def __init__(self, ctx: SchemeContext):
        super().__init__(ctx, parse_args(DDPMArgs, ctx.args, "ddpm"))

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        x = _clean(batch, self.args.rescale)
        t, gen = self._noise(len(x), step, x.device)
        eps = torch.randn(x.shape, generator=gen).to(x.device)
        z, v = diffuse(x, t, eps)
        loss = F.mse_loss(self.student(z, t).float(), v)
        return {"loss": loss, "v_mse": loss}


class ProgressiveArgs(_DiffusionArgs):
    teacher_steps: int = Field(..., ge=2)  # the teacher's DDIM steps; the student takes half

    @property
    def student_steps(self) -> int:
        return self.teacher_steps // 2


def halving_rounds(start: int, end: int) -> list[tuple[int, int]]:
    """(teacher steps, student steps) of each round from `start` down to `end` steps,
    e.g. 16 -> 4: [(16, 8), (8, 4)]. Both must be powers of two apart."""
    if end < 1 or start <= end or start % end or (start // end) & (start // end - 1):
        raise ValueError(f"cannot halve {start} steps down to {end}: need start = end * 2^k")
    rounds, n = [], start
    while n > end:
        rounds.append((n, n // 2))
        n //= 2
    return rounds


class Progressive(_DiffusionBase):
    """One round of progressive distillation (Salimans & Ho 2022, Algorithm 2)."""

    Args = ProgressiveArgs
    steps_attr = "student_steps"

    def __init__(self, ctx: SchemeContext):
        args = parse_args(ProgressiveArgs, ctx.args, "progressive")
        if args.teacher_steps % 2:
            raise ConfigError(f"scheme.args.teacher_steps must be even, got {args.teacher_steps}")
        if ctx.teacher is None:
            raise ConfigError("scheme 'progressive' needs the teacher denoiser (teacher section)")
        self.teacher = ctx.teacher
        super().__init__(ctx, args, frozen=[ctx.teacher])

    def _loss(self, model: nn.Module, x: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        n = self.args.student_steps
        u = torch.rand(len(x), generator=gen).to(x.device)
        i = (u * n).floor().clamp(max=n - 1) + 1  # i ~ U{1..N}
        t = i / n
        eps = torch.randn(x.shape, generator=gen).to(x.device)
        z, _ = diffuse(x, t, eps)
        with torch.no_grad():
            target = progressive_target(self.teacher, z, t, n)
        x_hat = predict_x(model, z, t)
        a, s = alpha_sigma(t)
        weight = (a**2 / s**2).clamp(min=1.0)  # truncated SNR
        per = (x_hat.float() - target).pow(2).flatten(1).mean(1)
        return (weight * per).mean(), per.mean()

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        x = _clean(batch, self.args.rescale)
        _, gen = self._noise(0, step, x.device)
        loss, x_mse = self._loss(self.student, x, gen)
        return {"loss": loss, "x_mse": x_mse}

    @torch.no_grad()
    def evaluate(self, dataset, *, batch_size: int, device) -> dict[str, float]:
        """The round's own objective on held-out data at fixed (seeded) times and noise:
        how well one student step reproduces two teacher steps."""
        from distill.data import load_batch

        was = self.student.training
        self.student.eval()
        gen = torch.Generator().manual_seed(12345)
        total, count = 0.0, 0
        for idx in torch.arange(len(dataset)).split(batch_size):
            x = _clean(load_batch(dataset, idx), self.args.rescale).to(device)
            loss, _ = self._loss(self.student, x, gen)
            total += float(loss) * len(x)
            count += len(x)
        self.student.train(was)
        return {"nll": total / count}


class DKDMArgs(_DiffusionArgs):
    teacher_steps: int = Field(64, ge=1)  # DDIM steps of the teacher's trajectories
    pool: int = Field(256, ge=1)  # noisy samples in flight
    student_steps: int = Field(64, ge=1)  # DDIM steps when the student samples at test time


class _Pool(nn.Module):
    """Noisy samples on the teacher's trajectories: z and each one's grid index i (t = i/N)."""

    def __init__(self, n: int, shape: tuple[int, ...]):
        super().__init__()
        self.register_buffer("z", torch.zeros(n, *shape))
        self.register_buffer("i", torch.zeros(n, dtype=torch.long))
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))


class DKDM(_DiffusionBase):
    """Data-free distillation of a diffusion model on its own trajectories (DKDM-style)."""

    Args = DKDMArgs
    steps_attr = "student_steps"

    def __init__(self, ctx: SchemeContext):
        args = parse_args(DKDMArgs, ctx.args, "dkdm")
        if ctx.teacher is None:
            raise ConfigError("scheme 'dkdm' needs the teacher denoiser (teacher section)")
        self.teacher = ctx.teacher
        self.pool = _Pool(args.pool, tuple(ctx.data.input_shape))
        super().__init__(ctx, args, trained={"pool": self.pool}, frozen=[ctx.teacher])

    @torch.no_grad()
    def _fill(self, device) -> None:
        """Start every pool entry at a random point of a teacher trajectory."""
        n, steps = self.args.pool, self.args.teacher_steps
        gen = torch.Generator().manual_seed(self.seed)
        self.pool.z.copy_(torch.randn(self.pool.z.shape, generator=gen).to(device))
        self.pool.i.copy_(torch.randint(1, steps + 1, (n,), generator=gen).to(device))
        for k in range(steps, 1, -1):  # walk each entry down to its starting index
            move = self.pool.i < k
            if move.any():
                self._advance(move, torch.full((n,), k, device=device))
        self.pool.ready.fill_(True)

    def _advance(self, rows: Tensor, index: Tensor) -> None:
        steps = self.args.teacher_steps
        t = index.float() / steps
        s = (index.float() - 1) / steps
        moved = ddim_step(self.teacher, self.pool.z[rows], t[rows], s[rows])
        self.pool.z[rows] = moved.to(self.pool.z.dtype)

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        device = self.pool.z.device
        if not bool(self.pool.ready):
            self._fill(device)
        steps = self.args.teacher_steps
        z, t = self.pool.z.clone(), self.pool.i.float() / steps
        with torch.no_grad():
            target = self.teacher(z, t)
        loss = F.mse_loss(self.student(z, t).float(), target.float())
        with torch.no_grad():  # move the pool one teacher step on; finished ones restart
            all_rows = torch.ones_like(self.pool.i, dtype=torch.bool)
            self._advance(all_rows, self.pool.i)
            self.pool.i.sub_(1)
            done = self.pool.i == 0
            if done.any():
                gen = torch.Generator().manual_seed(self.seed * 7_919 + step)
                fresh = torch.randn((int(done.sum()), *self.pool.z.shape[1:]), generator=gen)
                self.pool.z[done] = fresh.to(device)
                self.pool.i[done] = steps
        return {"loss": loss, "v_mse_to_teacher": loss}

    @torch.no_grad()
    def evaluate(self, dataset, *, batch_size: int, device) -> dict[str, float]:
        """Student-to-teacher v-MSE on fixed synthetic points (Gaussian z at random times
        t ~ U(0, 1)): no real data is read, not even to validate."""
        del dataset
        gen = torch.Generator().manual_seed(777)
        n = 512
        z = torch.randn(n, *self.shape, generator=gen).to(device)
        t = torch.rand(n, generator=gen).to(device)
        was = self.student.training
        self.student.eval()
        loss = float(F.mse_loss(self.student(z, t), self.teacher(z, t)))
        self.student.train(was)
        return {"nll": loss}
