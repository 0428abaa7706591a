"""Data-free distillation: the student learns from the teacher on synthesised inputs only.

- `dafl` (Chen et al. 2019): a generator trained with the teacher as a fixed discriminator
  (one-hot, activation and information-entropy losses); KD on its samples.
- `deep_inversion` (Yin et al. 2020): a bank of inputs optimised, before training, to match
  the statistics stored in the teacher's BatchNorm layers while the teacher predicts chosen
  classes, under smoothness and size priors; KD on the bank.
- `dfad` (Micaelli & Storkey 2019, ZSKT; Fang et al. 2019, DFAD): a generator that seeks
  inputs where teacher and student disagree, while the student learns to agree there.

The real training split only sets how many steps an epoch has (its batch count): its
inputs and labels are never read. Validation and test use the real splits, to measure
what the student learned. Each step's latent draws come from (seed, step), so a resumed
run draws the same samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.core.settings import Strict
from distill.losses.response import kd_loss
from distill.schemes.base import (
    SchemeBase,
    SchemeContext,
    as_vector,
    parse_args,
    sample_input,
    soft_kl,
    soft_probs,
)
from distill.taps import Tap


# --------------------------------------------------------------------------- pieces
class Generator(nn.Module):
    """Latent vectors (N, latent) -> inputs of `input_shape` (N, *input_shape).

    For signals (C, L) and images (C, H, W), a DCGAN-style generator as in DAFL: a linear
    map to `hidden` channels at a quarter of the resolution, then two nearest-neighbour
    upsamplings, each followed by a 3-wide convolution, BatchNorm and LeakyReLU, and a last
    convolution to C channels (resized to the exact input size when it is not a multiple
    of 4). For vectors, an MLP. The last BatchNorm has no learned scale: it holds the
    outputs at zero mean and unit variance over the batch, the range of standardised data,
    and a bound without which the generator's losses are won by inflating its outputs."""

    def __init__(self, input_shape: Sequence[int], latent: int = 64, hidden: int = 64):
        super().__init__()
        self.input_shape, self.latent = tuple(input_shape), latent
        channels, *spatial = self.input_shape
        if not spatial:  # vectors
            self.base: tuple[int, ...] = ()
            self.fc = nn.Linear(latent, hidden)
            self.body = nn.Sequential(
                nn.BatchNorm1d(hidden),
                nn.LeakyReLU(0.2),
                nn.Linear(hidden, channels),
                nn.BatchNorm1d(channels, affine=False),
            )
            return
        conv, norm = {1: (nn.Conv1d, nn.BatchNorm1d), 2: (nn.Conv2d, nn.BatchNorm2d)}[len(spatial)]
        self.base = tuple(max(1, math.ceil(n / 4)) for n in spatial)
        self.fc = nn.Linear(latent, hidden * math.prod(self.base))
        half = max(hidden // 2, 1)
        self.body = nn.Sequential(
            norm(hidden),
            nn.Upsample(scale_factor=2),
            conv(hidden, hidden, 3, padding=1),
            norm(hidden),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            conv(hidden, half, 3, padding=1),
            norm(half),
            nn.LeakyReLU(0.2),
            conv(half, channels, 3, padding=1),
            norm(channels, affine=False),
        )

    def forward(self, z: Tensor) -> Tensor:
        h = self.fc(z)
        if self.base:
            h = h.view(len(z), -1, *self.base)
        out = self.body(h)
        if out.shape[2:] != self.input_shape[1:]:
            out = F.interpolate(out, size=self.input_shape[1:])
        return out.view(len(z), *self.input_shape)

    def sample(self, n: int, seed: int, device: torch.device) -> Tensor:
        z = torch.randn(n, self.latent, generator=torch.Generator().manual_seed(seed))
        return self(z.to(device))


def dafl_losses(logits: Tensor, features: Tensor | None) -> dict[str, Tensor]:
    """DAFL's generator losses on the teacher's outputs for generated inputs (Chen et al. 2019):

    one_hot = CE(z_T, argmax z_T): the teacher should be sure of a class;
    activation = -(1/n) sum_i ||f_T(x_i)||_1: features should fire strongly (None: 0);
    info_entropy = sum_j pbar_j log pbar_j with pbar the batch's mean prediction (the
    negative entropy): minimised when the classes are generated equally often.
    """
    logits = logits.float()
    p_mean = F.softmax(logits, -1).mean(0)
    out = {
        "one_hot": F.cross_entropy(logits, logits.argmax(-1)),
        "info_entropy": (p_mean * p_mean.clamp_min(1e-12).log()).sum(),
    }
    out["activation"] = (
        -as_vector(features).abs().sum(-1).mean() if features is not None else logits.new_zeros(())
    )
    return out


class BatchNormStatistics:
    """While active, sums over the model's BatchNorm layers the distance between the batch
    statistics of each layer's input and the running statistics the layer stored:

        R_bn = sum_l ||mu_l(x) - mu_l^BN||_2 + ||sigma^2_l(x) - sigma^2_l^BN||_2

    (Yin et al. 2020, eq. 3; biased batch variance per channel over batch and positions).
    Use as a context manager; `loss` holds the sum of the last forward pass."""

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not self.layers:
            raise ConfigError(
                "the teacher has no BatchNorm layers, so there are no stored statistics to "
                "invert; use scheme dafl or dfad"
            )
        self.terms: list[Tensor] = []
        self._handles: list = []

    def _hook(self, module: nn.Module, inputs: tuple[Tensor, ...], _out: Tensor) -> None:
        x = inputs[0].float()
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        self.terms.append(
            torch.linalg.vector_norm(mean - module.running_mean)
            + torch.linalg.vector_norm(var - module.running_var)
        )

    def __enter__(self) -> BatchNormStatistics:
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def pop(self) -> Tensor:
        """The summed distance of the forward passes since the last pop."""
        total = torch.stack(self.terms).sum()
        self.terms = []
        return total


def total_variation(x: Tensor) -> Tensor:
    """Mean absolute difference between neighbouring positions (1-D signals: along the
    length; images: along height and width): a smoothness prior on synthesised inputs."""
    diffs = [x.diff(dim=d).abs().mean() for d in range(2, x.dim())]
    return torch.stack(diffs).sum() if diffs else x.new_zeros(())


def _kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    return soft_kl(student_logits, soft_probs(teacher_logits, temperature), temperature)


def _no_objective_terms(ctx: SchemeContext, name: str) -> None:
    if ctx.teacher is None:
        raise ConfigError(f"scheme {name!r} needs a teacher")
    if ctx.objective.terms:
        raise ConfigError(f"scheme {name!r} builds its own losses; remove objective.terms")


class _GeneratorScheme(SchemeBase):
    """What DAFL and DFAD share: a generator trained alongside the student (at its own
    learning rate, see `lr_scales`) and latent draws seeded by (seed, step)."""

    Args: type[Strict]

    def __init__(self, ctx: SchemeContext, name: str):
        a = self.args = parse_args(self.Args, ctx.args, name)
        _no_objective_terms(ctx, name)
        shape = tuple(sample_input(ctx).shape[1:])
        self.generator = Generator(shape, a.latent, a.hidden)
        self.teacher, self.seed = ctx.teacher, ctx.seed
        super().__init__(
            ctx.student, ctx.objective, {"generator": self.generator}, frozen=[ctx.teacher]
        )
        self.lr_scales = {"generator": a.generator_lr}

    def _device(self) -> torch.device:
        return next(self.student.parameters()).device

    def draw(self, batch: dict[str, Tensor], step: int) -> Tensor:
        """This step's generated inputs, as many as the batch has rows."""
        seed = self.seed * 1_000_003 + step
        return self.generator.sample(len(batch["index"]), seed, self._device())

    def samples(self, n: int, seed: int = 0) -> Tensor:
        """n inputs from the generator (eval mode), for plots."""
        was = self.generator.training
        self.generator.eval()
        with torch.no_grad():
            x = self.generator.sample(n, seed, self._device())
        self.generator.train(was)
        return x


# --------------------------------------------------------------------------- DAFL
class DAFLArgs(Strict):
    latent: int = Field(64, ge=1)
    hidden: int = Field(64, ge=1)  # the generator's width
    layer: str | None = None  # teacher layer for the activation loss (None: no such loss)
    one_hot_weight: float = Field(1.0, ge=0)
    activation_weight: float = Field(0.1, ge=0)
    info_entropy_weight: float = Field(5.0, ge=0)
    temperature: float = Field(1.0, gt=0)  # of the student's KD on generated inputs
    generator_lr: float = Field(1.0, gt=0)  # the generator's learning rate / train.optimizer.lr
    generator_every: int = Field(1, ge=1)  # the generator learns on every k-th step


class DAFL(_GeneratorScheme):
    """Data-free learning (Chen et al. 2019): the generator minimises
    one_hot + a * activation + b * info_entropy of the frozen teacher on its samples (the
    gradient passes through the teacher into the generator only), while the student
    minimises T^2 KL(teacher || student) on the same samples, detached. Both in one step
    (the generator on every `generator_every`-th, at `generator_lr` times the rate).
    """

    Args = DAFLArgs

    def __init__(self, ctx: SchemeContext):
        super().__init__(ctx, "dafl")
        layer = self.args.layer
        self._tap = Tap(ctx.teacher, [layer] if layer else [], "teacher")

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        a = self.args
        x = self.draw(batch, step)
        k = self._tap.run(x)  # teacher frozen: gradients reach the generator only
        out = dafl_losses(k.logits, k.feats[a.layer] if a.layer else None)
        gen = (
            a.one_hot_weight * out["one_hot"]
            + a.activation_weight * out["activation"]
            + a.info_entropy_weight * out["info_entropy"]
        )
        out["kd"] = _kd(self.student(x.detach()), k.logits.detach(), a.temperature)
        if step % a.generator_every:
            gen = gen.detach()  # a student-only step: the generator gets no gradient
        return {"loss": gen + out["kd"], **out}


# --------------------------------------------------------------------------- DFAD / ZSKT
class DFADArgs(Strict):
    latent: int = Field(64, ge=1)
    hidden: int = Field(64, ge=1)  # the generator's width
    # the disagreement both players use: l1, the mean absolute logit difference (DFAD);
    # kl, T^2 KL(teacher || student) (ZSKT)
    divergence: Literal["l1", "kl"] = "l1"
    temperature: float = Field(1.0, gt=0)
    generator_lr: float = Field(1.0, gt=0)  # the generator's learning rate / train.optimizer.lr
    generator_every: int = Field(1, ge=1)  # the generator learns on every k-th step (DFAD: 5)


def disagreement(student_logits: Tensor, teacher_logits: Tensor, kind: str, t: float) -> Tensor:
    if kind == "l1":
        return (student_logits.float() - teacher_logits.float()).abs().mean()
    return kd_loss(student_logits, teacher_logits, temperature=t)


class DFAD(_GeneratorScheme):
    """Adversarial data-free KD (Micaelli & Storkey 2019; Fang et al. 2019): the generator
    maximises the teacher-student disagreement on its samples, the student minimises it.

    The generator's loss, -D(T(G(z)), S(G(z))), runs the student with its parameters
    detached (and its BatchNorm statistics on copies), so it trains only the generator; the
    student's loss sees the samples detached, so it trains only the student. The generator
    learns on every `generator_every`-th step at `generator_lr` times the learning rate, so
    that the student can keep up with it (the papers take several student steps per
    generator step).
    """

    Args = DFADArgs

    def __init__(self, ctx: SchemeContext):
        super().__init__(ctx, "dfad")

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        a = self.args
        x = self.draw(batch, step)
        if step % a.generator_every:
            x = x.detach()  # a student-only step
        t_logits = self.teacher(x)
        fixed = {k: v.detach() for k, v in self.student.named_parameters()}
        fixed.update({k: v.clone() for k, v in self.student.named_buffers()})
        s_fixed = torch.func.functional_call(self.student, fixed, (x,))
        gen = -disagreement(s_fixed, t_logits, a.divergence, a.temperature)
        student = disagreement(
            self.student(x.detach()), t_logits.detach(), a.divergence, a.temperature
        )
        out = {"generator": gen, "disagreement": student}
        return {"loss": gen + student, **out}


# --------------------------------------------------------------------------- DeepInversion
class DeepInversionArgs(Strict):
    bank: int | None = Field(None, ge=1)  # synthesised inputs (default: training-set size)
    iterations: int = Field(200, ge=1)  # optimisation steps for each chunk of the bank
    chunk: int = Field(256, ge=1)  # inputs optimised together (BatchNorm stats are per chunk)
    lr: float = Field(0.05, gt=0)  # Adam on the inputs
    bn_weight: float = Field(1.0, ge=0)
    tv_weight: float = Field(1e-3, ge=0)
    l2_weight: float = Field(1e-4, ge=0)
    temperature: float = Field(1.0, gt=0)  # of the student's KD on the bank


class _Bank(nn.Module):
    """The synthesised inputs and the classes they were made for (checkpointed buffers)."""

    def __init__(self, n: int, shape: Sequence[int], num_classes: int):
        super().__init__()
        self.register_buffer("inputs", torch.zeros(n, *shape))
        self.register_buffer("targets", torch.arange(n) % num_classes)
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))


class DeepInversion(SchemeBase):
    """DeepInversion (Yin et al. 2020): before training, a bank of inputs is optimised so
    that the frozen teacher predicts each input's assigned class (classes in turn) while
    the statistics of every BatchNorm layer's input match the running statistics it
    stored, under a total-variation and an L2 prior:

        min_x CE(T(x), y) + a R_bn(x) + b TV(x) + c ||x||^2

    The student then learns T^2 KL(teacher || student) on the bank. The bank is a
    checkpointed buffer, so a resumed run does not synthesise it again.
    """

    Args = DeepInversionArgs

    def __init__(self, ctx: SchemeContext):
        a = self.args = parse_args(DeepInversionArgs, ctx.args, "deep_inversion")
        _no_objective_terms(ctx, "deep_inversion")
        self.teacher, self.seed = ctx.teacher, ctx.seed
        self._stats = BatchNormStatistics(ctx.teacher)  # fails early without BatchNorm
        shape = tuple(sample_input(ctx).shape[1:])
        self.bank = _Bank(a.bank or len(ctx.data.train), shape, ctx.data.num_classes)
        super().__init__(ctx.student, ctx.objective, {"bank": self.bank}, frozen=[ctx.teacher])

    def inversion_loss(self, x: Tensor, targets: Tensor) -> dict[str, Tensor]:
        a = self.args
        with self._stats:
            logits = self.teacher(x)
        out = {
            "ce": F.cross_entropy(logits.float(), targets),
            "bn": self._stats.pop(),
            "tv": total_variation(x),
            "l2": x.float().pow(2).mean(),
        }
        out["loss"] = out["ce"] + a.bn_weight * out["bn"] + a.tv_weight * out["tv"]
        out["loss"] = out["loss"] + a.l2_weight * out["l2"]
        return out

    def synthesise(self) -> None:
        """Fill the bank, chunk by chunk, each from Gaussian noise seeded by (seed, chunk)."""
        a, bank = self.args, self.bank
        self.teacher.eval()
        for c, start in enumerate(range(0, len(bank.inputs), a.chunk)):
            rows = slice(start, min(start + a.chunk, len(bank.inputs)))
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + c)
            init = torch.randn(bank.inputs[rows].shape, generator=gen)
            x = init.to(bank.inputs.device).requires_grad_(True)
            opt = torch.optim.Adam([x], lr=a.lr)
            for _ in range(a.iterations):
                opt.zero_grad(set_to_none=True)
                self.inversion_loss(x, bank.targets[rows])["loss"].backward()
                opt.step()
            bank.inputs[rows] = x.detach()
        bank.ready.fill_(True)

    def on_fit_start(self, total_steps: int, steps_per_epoch: int) -> None:
        if not bool(self.bank.ready):
            with torch.enable_grad():
                self.synthesise()

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        if not bool(self.bank.ready):
            raise RuntimeError("the bank is empty: the trainer calls on_fit_start first")
        x = self.bank.inputs[batch["index"] % len(self.bank.inputs)]
        with torch.no_grad():
            t_logits = self.teacher(x)
        out = {"kd": _kd(self.student(x), t_logits, self.args.temperature)}
        return {"loss": out["kd"], **out}

    def samples(self, n: int, seed: int = 0) -> Tensor:
        """The first n inputs of the bank (classes in turn)."""
        return self.bank.inputs[:n].clone()
