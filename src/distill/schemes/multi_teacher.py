"""Several frozen teachers teach one student, each sample weighting them its own way.

The response loss is the weighted sum of per-teacher KD losses,
sum_k w_k(x) T^2 KL(p_k^T || p_s^T), which has the same student gradient as KD towards the
weighted mixture of the teachers' soft targets, and extends to specialists: a teacher that
predicts only a subset S_k of the classes is compared with the student's distribution
renormalised over S_k (Hinton et al. 2015, section 5).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.core.settings import Strict
from distill.data import load_batch
from distill.losses.response import kd_rows
from distill.objective import ADAPTERS
from distill.schemes.base import (
    SchemeBase,
    SchemeContext,
    dry_shapes,
    labelled,
    parse_args,
    sample_input,
)
from distill.taps import Tap

WEIGHTINGS = ("mean", "confidence", "entropy", "sample", "gate", "validation", "rl")


class FeatureFusionArgs(Strict):
    student: str  # the student layer
    teachers: list[str]  # one layer per teacher
    adapter: str = "conv1x1"  # maps the student feature into each teacher's shape
    weight: float = Field(1.0, ge=0)


class MultiTeacherArgs(Strict):
    weighting: Literal[WEIGHTINGS] = "mean"  # type: ignore[valid-type]
    temperature: float = Field(4.0, gt=0)
    kd_weight: float = Field(1.0, ge=0)
    tau: float = Field(1.0, gt=0)  # sharpness of confidence/entropy/sample weights
    gate_hidden: int = Field(64, ge=1)
    validation_steps: int = Field(300, ge=1)
    rl_momentum: float = Field(0.9, ge=0, lt=1)  # the reward baseline's moving average
    feature: FeatureFusionArgs | None = None


def _entropy(p: Tensor) -> Tensor:
    """Entropy of each row divided by log(number of classes): 0 (certain) to 1 (uniform)."""
    h = -(p * p.clamp_min(1e-12).log()).sum(1)
    return h / math.log(p.shape[1]) if p.shape[1] > 1 else h


class _Policy(nn.Module):
    """Scores each teacher from its state; the scores set a Dirichlet over teacher weights."""

    state_size = 4

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(self.state_size, hidden), nn.Tanh(), nn.Linear(hidden, 1)
        )

    def distribution(self, state: Tensor) -> torch.distributions.Dirichlet:
        concentration = F.softplus(self.net(state).squeeze(-1)) + 0.1  # (N, K)
        return torch.distributions.Dirichlet(concentration)


class MultiTeacher(SchemeBase):
    """Multi-teacher KD; `weighting` picks how each sample weighs the K teachers:

    - mean: 1/K (the average of soft targets, Hinton et al. 2015; You et al. 2017);
    - confidence: softmax_k(max_c p_k(c) / tau); entropy: softmax_k(-H(p_k)/log C_k / tau);
    - sample: softmax_k(log p_k(y) / tau), from each teacher's probability of the label
      (in the spirit of CA-MKD, Zhang et al. 2022), confidence on unlabelled rows;
    - gate: a small network of the input, trained with the student to make the weighted
      mixture of the teachers predict the label;
    - validation: one weight per teacher, fitted before training to the mixture's NLL on
      the validation split;
    - rl: a policy in the spirit of MTKD-RL (Yang et al. 2025): state = (teacher's label
      probability, its confidence, its normalised entropy, its KL to the student); action =
      Dirichlet-sampled weights; reward = the drop of the student's task loss on the next
      batch below its moving average; trained by REINFORCE.

    Intermediate features can be fused too (`feature`): the student's layer is mapped by one
    adapter per teacher into that teacher's space and matched by MSE, teacher k's term
    weighted per sample by w_k, so the weighted teachers define one feature target.
    """

    Args = MultiTeacherArgs

    def __init__(self, ctx: SchemeContext):
        a = self.args = parse_args(MultiTeacherArgs, ctx.args, "multi_teacher")
        if len(ctx.teachers) < 2:
            raise ConfigError(
                "scheme multi_teacher needs two or more entries under teachers: "
                "(name, args, weights, and classes for a specialist)"
            )
        self.teachers = ctx.teachers
        c = ctx.data.num_classes
        self.classes: list[Tensor] = []
        self.local: list[Tensor] = []  # global class -> position in the teacher's output, or -1
        sample = sample_input(ctx)
        for i, (teacher, classes) in enumerate(zip(ctx.teachers, ctx.teacher_classes)):
            cls = torch.arange(c) if classes is None else torch.tensor(classes)
            if classes is not None and (
                len(set(classes)) != len(classes) or min(classes) < 0 or max(classes) >= c
            ):
                raise ConfigError(
                    f"teachers.{i}.classes: need distinct class ids in 0..{c - 1}, got {classes}"
                )
            out = dry_shapes(teacher, [], sample, f"teacher {i}")["logits"][-1]
            if out != len(cls):
                raise ConfigError(
                    f"teachers.{i}: predicts {out} classes but "
                    + (f"its classes list has {len(cls)}" if classes else f"the data has {c}")
                    + "; a specialist lists the classes it predicts, in output order"
                )
            self.classes.append(cls)
            self.local.append(
                torch.full((c,), -1, dtype=torch.long).index_copy_(0, cls, torch.arange(len(cls)))
            )
        trained: dict[str, nn.Module] = {}
        k = len(ctx.teachers)
        if a.weighting == "gate":
            self.gate = nn.Sequential(
                nn.Flatten(),
                nn.Linear(sample[0].numel(), a.gate_hidden),
                nn.ReLU(),
                nn.Linear(a.gate_hidden, k),
            )
            trained["gate"] = self.gate
        if a.weighting == "rl":
            self.policy = _Policy()
            trained["policy"] = self.policy
            self._previous: tuple[Tensor, Tensor] | None = None
            self._baseline: float | None = None
        self.feature_adapters = None
        if a.feature is not None:
            trained["feature_adapters"] = self.feature_adapters = self._adapters(ctx, sample)
        super().__init__(ctx.student, ctx.objective, trained, frozen=ctx.teachers)
        s_layers = ctx.objective.student_layers() + ([a.feature.student] if a.feature else [])
        self._student_tap = Tap(ctx.student, list(dict.fromkeys(s_layers)), "student")
        self._teacher_taps = [
            Tap(t, [a.feature.teachers[i]] if a.feature else [], f"teacher {i}")
            for i, t in enumerate(ctx.teachers)
        ]
        if a.weighting == "validation":
            self.modules["fixed_weights"] = _Constant(self.fit_validation_weights(ctx.data.val))

    def _adapters(self, ctx: SchemeContext, sample: Tensor) -> nn.ModuleList:
        f = self.args.feature
        if len(f.teachers) != len(ctx.teachers):
            raise ConfigError(
                f"scheme.args.feature.teachers: {len(f.teachers)} layer names for "
                f"{len(ctx.teachers)} teachers; give one per teacher"
            )
        if f.adapter not in ADAPTERS:
            raise ConfigError(
                f"scheme.args.feature.adapter: {f.adapter!r} is not one of {sorted(ADAPTERS)}"
            )
        s_shape = dry_shapes(ctx.student, [f.student], sample, "student")[f.student]
        adapters = []
        for i, (t, layer) in enumerate(zip(ctx.teachers, f.teachers)):
            t_shape = dry_shapes(t, [layer], sample, f"teacher {i}")[layer]
            try:
                adapters.append(ADAPTERS[f.adapter](s_shape, t_shape, resize="pool"))
            except ValueError as e:
                raise ConfigError(f"scheme.args.feature (teacher {i}): {e}") from None
        return nn.ModuleList(adapters)

    # ------------------------------------------------------------------ teachers' view
    def _label_probs(self, probs: list[Tensor], targets: Tensor) -> Tensor:
        """(N, K): each teacher's probability of the label (0 where it cannot predict it)."""
        cols = []
        y = targets.clamp_min(0)
        for p, local in zip(probs, self.local):
            pos = local.to(y.device)[y]
            got = p.gather(1, pos.clamp_min(0).unsqueeze(1)).squeeze(1)
            cols.append(torch.where(pos >= 0, got, torch.zeros_like(got)))
        return torch.stack(cols, 1)

    def weights(self, probs: list[Tensor], batch: dict[str, Tensor], student: Tensor) -> Tensor:
        """(N, K) non-negative teacher weights summing to one per sample (detached)."""
        a, n, k = self.args, len(student), len(probs)
        conf = torch.stack([p.max(1).values for p in probs], 1)
        if a.weighting == "mean":
            return torch.full((n, k), 1.0 / k, device=student.device)
        if a.weighting == "confidence":
            return F.softmax(conf / a.tau, 1)
        if a.weighting == "entropy":
            return F.softmax(-torch.stack([_entropy(p) for p in probs], 1) / a.tau, 1)
        if a.weighting == "sample":
            score = self._label_probs(probs, batch["target"]).clamp_min(1e-12).log()
            score = torch.where(labelled(batch).unsqueeze(1), score, conf)
            return F.softmax(score / a.tau, 1)
        if a.weighting == "gate":
            return F.softmax(self.gate(batch["input"].float()), 1).detach()
        if a.weighting == "validation":
            return self.modules["fixed_weights"].value.expand(n, k)
        return self._rl_weights(probs, batch, student)

    # ------------------------------------------------------------------ learned weightings
    @torch.no_grad()
    def fit_validation_weights(self, val_data) -> Tensor:
        """Global weights minimising the mixture's NLL on the validation split."""
        if val_data is None or len(val_data) == 0:
            raise ConfigError(
                "weighting 'validation' fits teacher weights on the validation split, which is "
                "empty; set data.val_fraction > 0"
            )
        batch = load_batch(val_data, torch.arange(len(val_data)))
        probs = [F.softmax(t(batch["input"]).float(), 1) for t in self.teachers]
        label_p = self._label_probs(probs, batch["target"])
        logits = torch.zeros(len(self.teachers), requires_grad=True)
        opt = torch.optim.Adam([logits], lr=0.1)
        with torch.enable_grad():
            for _ in range(self.args.validation_steps):
                opt.zero_grad()
                mix = (label_p * F.softmax(logits, 0)).sum(1)
                loss = -mix.clamp_min(1e-12).log().mean()
                loss.backward()
                opt.step()
        return F.softmax(logits.detach(), 0)

    def _gate_loss(self, probs: list[Tensor], batch: dict[str, Tensor]) -> Tensor:
        rows = labelled(batch)
        w = F.softmax(self.gate(batch["input"].float()), 1)
        mix = (w * self._label_probs(probs, batch["target"])).sum(1)
        nll = -mix.clamp_min(1e-12).log()
        return (nll * rows).sum() / rows.sum().clamp_min(1)

    def rl_state(self, probs: list[Tensor], batch: dict[str, Tensor], student: Tensor) -> Tensor:
        """(N, K, 4): label probability, confidence, normalised entropy, KL(teacher || student)."""
        label_p = self._label_probs(probs, batch["target"])
        conf = torch.stack([p.max(1).values for p in probs], 1)
        label_p = torch.where(labelled(batch).unsqueeze(1), label_p, conf)
        cols_ent, cols_kl = [], []
        log_s = F.log_softmax(student.detach().float(), 1)
        for p, cls in zip(probs, self.classes):
            log_p = p.clamp_min(1e-12).log()
            cols_ent.append(_entropy(p))
            log_s_k = log_s[:, cls.to(log_s.device)].log_softmax(1)
            cols_kl.append((p * (log_p - log_s_k)).sum(1))
        return torch.stack([label_p, conf, torch.stack(cols_ent, 1), torch.stack(cols_kl, 1)], -1)

    def _rl_weights(self, probs, batch, student) -> Tensor:
        state = self.rl_state(probs, batch, student)
        with torch.no_grad():
            action = self.policy.distribution(state).sample().clamp_min(1e-6)
            action = action / action.sum(1, keepdim=True)
        self._current = (state.detach(), action)
        return action

    def _rl_loss(self, batch: dict[str, Tensor], student: Tensor) -> Tensor:
        """REINFORCE on the previous step's actions, rewarded by this batch's task loss."""
        rows = labelled(batch)
        zero = student.new_zeros((), dtype=torch.float32)
        if not rows.any():
            return zero
        ce = float(F.cross_entropy(student.detach().float()[rows], batch["target"][rows]))
        loss = zero
        if self._previous is not None and self._baseline is not None:
            reward = self._baseline - ce  # positive: the student did better than its average
            state, action = self._previous
            log_prob = self.policy.distribution(state).log_prob(action)
            loss = -reward * log_prob.mean()
        m = self.args.rl_momentum
        self._baseline = ce if self._baseline is None else m * self._baseline + (1 - m) * ce
        self._previous = self._current
        return loss

    # ------------------------------------------------------------------ the step
    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        a, x = self.args, batch["input"]
        with torch.no_grad():
            teachers = [tap.run(x) for tap in self._teacher_taps]
        sk = self._student_tap.run(x)
        total, out = self.student_objective(sk, batch, step)
        probs1 = [F.softmax(t.logits.float(), 1) for t in teachers]
        w = self.weights(probs1, batch, sk.logits)
        per_teacher = []
        for t, cls in zip(teachers, self.classes):
            per_teacher.append(kd_rows(sk.logits[:, cls.to(x.device)], t.logits, a.temperature))
        kd = torch.stack(per_teacher, 1)  # (N, K): T^2-scaled KL per row and teacher
        out["kd"] = (w * kd).sum(1).mean()
        total = total + a.kd_weight * out["kd"]
        if self.feature_adapters is not None:
            f = a.feature
            s_feat = sk.feats[f.student]
            mses = [
                (adapter(s_feat).float() - t.feats[layer].float()).pow(2).flatten(1).mean(1)
                for adapter, t, layer in zip(self.feature_adapters, teachers, f.teachers)
            ]
            out["feature"] = (w * torch.stack(mses, 1)).sum(1).mean()
            total = total + f.weight * out["feature"]
        if a.weighting == "gate":
            out["gate"] = self._gate_loss(probs1, batch)
            total = total + out["gate"]
        if a.weighting == "rl":
            out["policy"] = self._rl_loss(batch, sk.logits)
            total = total + out["policy"]
        for i in range(w.shape[1]):
            out[f"weight{i}"] = w[:, i].mean().detach()
        return {"loss": total, **out}


class _Constant(nn.Module):
    """Holds fitted weights as a buffer so they are saved with the run."""

    def __init__(self, value: Tensor):
        super().__init__()
        self.register_buffer("value", value.clone())


__all__ = ["WEIGHTINGS", "MultiTeacher"]
