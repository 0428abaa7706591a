"""Online distillation: models that learn together and teach each other, no pretrained teacher.

The student is always the model evaluated and exported; the others (peers, branches,
fusion modules, gates) are trained alongside it and dropped at export.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.core.settings import Strict
from distill.data import teacher_input
from distill.schemes.base import (
    SchemeBase,
    SchemeContext,
    as_vector,
    dry_shapes,
    fresh_copy,
    labelled,
    parse_args,
    sample_input,
    soft_kl,
    soft_probs,
    vector_dim,
)
from distill.taps import Tap


def _peer_models(ctx: SchemeContext, count: int) -> list[nn.Module]:
    """Configured peers (and a trainable teacher, when one is given), else fresh student copies."""
    peers = ([ctx.teacher] if ctx.teacher is not None else []) + list(ctx.peers)
    if not peers:
        peers = [fresh_copy(ctx.student) for _ in range(count)]
    for p in peers:  # a teacher arrives frozen from the loader; online peers train
        p.requires_grad_(True)
    return peers


def _check_classes(models: list[nn.Module], ctx: SchemeContext) -> None:
    sample, n = sample_input(ctx), ctx.data.num_classes
    for i, m in enumerate(models):
        out = dry_shapes(m, [], sample, f"peer {i}")["logits"]
        if out[-1] != n:
            raise ConfigError(f"peer {i} predicts {out[-1]} classes but the data has {n}")


class DMLArgs(Strict):
    num_peers: int = Field(1, ge=1)  # used only when no peers are configured
    temperature: float = Field(1.0, gt=0)
    kd_weight: float = Field(1.0, ge=0)
    target: Literal["pairwise", "ensemble"] = "pairwise"


class DeepMutualLearning(SchemeBase):
    """Deep mutual learning (Zhang et al. 2018): every model learns from every other one.

    Model i minimises task(z_i) + w * mean_{j != i} T^2 KL(p_j^T || p_i^T) with p_j detached
    (`target: pairwise`, the paper's form), or T^2 KL(mean_{j != i} p_j^T || p_i^T) with
    `target: ensemble` (the detached peer ensemble as teacher). Peers may be any architectures;
    a `teacher` in the config joins as a trainable peer (bidirectional teacher-student);
    with cross-modal data (`data.paired`) it reads the paired modality, so both modalities'
    models learn from each other (bidirectional cross-modal distillation).
    """

    Args = DMLArgs

    def __init__(self, ctx: SchemeContext):
        args = self.args = parse_args(DMLArgs, ctx.args, "dml")
        self.peers = _peer_models(ctx, args.num_peers)
        # cross-modal data: a configured teacher (the first peer) reads the paired modality
        self._paired_peer = ctx.teacher is not None and ctx.data.paired_shape is not None
        if not self._paired_peer:
            _check_classes(self.peers, ctx)
        super().__init__(ctx.student, ctx.objective, {"peers": nn.ModuleList(self.peers)})
        self._tap = Tap(ctx.student, ctx.objective.student_layers(), "student")

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        x, a = batch["input"], self.args
        knowledge = self._tap.run(x)
        inputs = [
            teacher_input(batch) if i == 0 and self._paired_peer else x
            for i in range(len(self.peers))
        ]
        logits = [knowledge.logits] + [p(v) for p, v in zip(self.peers, inputs, strict=True)]
        probs = [soft_probs(z, a.temperature) for z in logits]
        total, out = self.student_objective(knowledge, batch, step)
        kd_total = logits[0].new_zeros((), dtype=torch.float32)
        for i, z in enumerate(logits):
            others = [probs[j] for j in range(len(logits)) if j != i]
            if a.target == "ensemble":
                kd = soft_kl(z, torch.stack(others).mean(0), a.temperature)
            else:
                kd = torch.stack([soft_kl(z, q, a.temperature) for q in others]).mean()
            kd_total = kd_total + kd
            if i > 0:
                out[f"task_peer{i}"] = self.task(z, batch, step)
                total = total + out[f"task_peer{i}"]
        out["mutual_kd"] = kd_total / len(logits)
        return {"loss": total + a.kd_weight * kd_total, **out}


class _Trunk:
    """The student's shared-trunk outputs of this step, for the branches to reuse.

    The student's tap records each shared module's input and output; a branch's copy of
    that module (a `_Reuse`) returns the recorded output when it is given the same input
    tensor, so the trunk runs once per step, gradients reach its parameters from every
    branch, and its BatchNorm statistics move once per step, as in a real multi-branch
    network. Outside a step (evaluation) the branch runs the student's module itself.
    """

    def __init__(self) -> None:
        self.store: dict[tuple, Tensor] = {}

    @staticmethod
    def key(name: str, x: Tensor) -> tuple:
        return (name, x.data_ptr(), tuple(x.shape), tuple(x.stride()))


class _Reuse(nn.Module):
    def __init__(self, name: str, trunk: _Trunk, module: nn.Module):
        super().__init__()
        self.name, self.trunk = name, trunk
        self.module = [module]  # a list: not registered, so not a second copy in state_dict

    def forward(self, x: Tensor) -> Tensor:
        hit = self.trunk.store.get(_Trunk.key(self.name, x))
        return hit if hit is not None else self.module[0](x)


def _shared_module(student: nn.Module, name: str) -> nn.Module:
    try:
        return student.get_submodule(name)
    except AttributeError:
        children = [n for n, _ in student.named_children()]
        raise ConfigError(
            f"scheme.args.shared: the student has no module {name!r}; its top-level "
            f"modules are {children}"
        ) from None


@torch.no_grad()
def _check_tensor_outputs(student: nn.Module, shared: dict[str, nn.Module], x: Tensor) -> None:
    """A branch reuses a shared module's output as it is: it must be one tensor."""
    kinds: dict[str, str] = {}

    def record(name: str):
        def hook(_m: nn.Module, _inputs: tuple, out: object) -> None:
            kinds[name] = type(out).__name__

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in shared.items()]
    was = student.training
    try:
        student.eval()
        student(x)
    finally:
        student.train(was)
        for h in handles:
            h.remove()
    bad = {n: k for n, k in kinds.items() if k != "Tensor"}
    if bad:
        raise ConfigError(
            f"scheme.args.shared: ONE reuses each shared module's output, which must be a "
            f"tensor; {bad} return other types: share the module around them instead"
        )


class ONEArgs(Strict):
    branches: int = Field(3, ge=2)
    shared: list[str] = []  # top-level (or dotted) module names forming the shared trunk
    temperature: float = Field(3.0, gt=0)
    kd_weight: float = Field(1.0, ge=0)


class OnTheFlyNativeEnsemble(SchemeBase):
    """ONE (Lan, Zhu & Gong 2018): branches over a shared trunk, a gate forms their ensemble.

    The ensemble logits z_e = sum_k g_k(x) z_k, with gate g a softmax over a linear map of the
    trunk's output (of the input when nothing is shared), teach every branch:
    loss = sum_k task(z_k) + task(z_e) + w * sum_k T^2 KL(p_e^T || p_k^T), p_e detached.
    Branch 0 is the student; the other branches and the gate are dropped at export.
    """

    Args = ONEArgs

    def __init__(self, ctx: SchemeContext):
        a = self.args = parse_args(ONEArgs, ctx.args, "one")
        student = ctx.student
        self.trunk, sample = _Trunk(), sample_input(ctx)
        shared = {name: _shared_module(student, name) for name in a.shared}
        _check_tensor_outputs(student, shared, sample)
        # each branch: a fresh copy of the student whose shared modules read the student's
        keep = {m: _Reuse(name, self.trunk, m) for name, m in shared.items()}
        branches = [fresh_copy(student, keep) for _ in range(a.branches - 1)]
        self.branches = branches
        gate_layer = a.shared[-1] if a.shared else None
        if gate_layer is not None:
            dim = vector_dim(dry_shapes(student, [gate_layer], sample, "student")[gate_layer])
        else:
            dim = sample[0].numel()
        self.gate_layer = gate_layer
        self.gate = nn.Linear(dim, a.branches)
        super().__init__(
            student, ctx.objective, {"branches": nn.ModuleList(branches), "gate": self.gate}
        )
        trunk = [n for name in a.shared for n in (f"{name}:input", name)]
        layers = [*ctx.objective.student_layers(), *([gate_layer] if gate_layer else []), *trunk]
        self._tap = Tap(student, list(dict.fromkeys(layers)), "student")

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        x, a = batch["input"], self.args
        k0 = self._tap.run(x)
        self.trunk.store = {
            _Trunk.key(name, k0.feats[f"{name}:input"]): k0.feats[name] for name in a.shared
        }
        try:
            logits = [k0.logits] + [b(x) for b in self.branches]
        finally:
            self.trunk.store = {}
        gate_in = as_vector(k0.feats[self.gate_layer]) if self.gate_layer else x.flatten(1).float()
        g = F.softmax(self.gate(gate_in), dim=-1)  # (N, branches)
        ensemble = (g.unsqueeze(-1) * torch.stack(logits, 1).float()).sum(1)
        total, out = self.student_objective(k0, batch, step)
        target = soft_probs(ensemble, a.temperature)
        kd = torch.stack([soft_kl(z, target, a.temperature) for z in logits]).sum()
        for i, z in enumerate(logits[1:], 1):
            out[f"task_branch{i}"] = self.task(z, batch, step)
            total = total + out[f"task_branch{i}"]
        out["task_ensemble"] = self.task(ensemble, batch, step)
        out["ensemble_kd"] = kd
        return {"loss": total + out["task_ensemble"] + a.kd_weight * kd, **out}


class OKDDipArgs(Strict):
    num_peers: int = Field(3, ge=2)  # used only when no peers are configured
    feature: str = "head:input"  # each peer's penultimate feature (for the attention)
    proj_dim: int = Field(32, ge=1)
    temperature: float = Field(3.0, gt=0)
    kd_weight: float = Field(1.0, ge=0)
    leader_weight: float = Field(1.0, ge=0)


class OKDDip(SchemeBase):
    """Online KD with diverse peers (Chen et al. 2020). The student is the group leader.

    Peer a's target is an attention-weighted mix of all peers' logits,
    t_a = sum_b alpha_ab z_b, alpha_a = softmax_b(q_a . k_b / sqrt(d)) with q, k linear maps of
    the peers' (detached) penultimate features: each peer gets its own teacher, which keeps the
    peers diverse. Peers learn T^2 KL(softmax(t_a/T) || p_a^T) with t_a detached; the leader
    learns from the peers' mean, T^2 KL(mean_a p_a^T || p_leader^T).

    The attention maps are trained to make each aggregated target classify the label
    (cross-entropy of t_a), our choice: trained by the distillation loss alone they can reach
    it trivially by attending to the peer itself.
    """

    Args = OKDDipArgs

    def __init__(self, ctx: SchemeContext):
        a = self.args = parse_args(OKDDipArgs, ctx.args, "okddip")
        self.peers = _peer_models(ctx, a.num_peers)
        _check_classes(self.peers, ctx)
        sample = sample_input(ctx)
        embed = []
        for i, peer in enumerate(self.peers):  # query and key maps, one pair per peer
            shape = dry_shapes(peer, [a.feature], sample, f"peer {i}")[a.feature]
            embed.append(nn.Linear(vector_dim(shape), 2 * a.proj_dim))
        self._taps = [Tap(p, [a.feature], f"peer {i}") for i, p in enumerate(self.peers)]
        self.embed = embed = nn.ModuleList(embed)
        super().__init__(
            ctx.student, ctx.objective, {"peers": nn.ModuleList(self.peers), "attention": embed}
        )
        self._tap = Tap(ctx.student, ctx.objective.student_layers(), "student")

    def attention(self, knowledge: list) -> Tensor:
        """alpha (N, P, P): row a is peer a's weights over the peers, from the peers'
        detached features (tapped `knowledge`, one per peer)."""
        a = self.args
        qk = torch.stack(
            [e(as_vector(k.feats[a.feature]).detach()) for e, k in zip(self.embed, knowledge)], 1
        )
        q, key = qk.split(a.proj_dim, dim=-1)
        return F.softmax(q @ key.transpose(1, 2) / a.proj_dim**0.5, dim=-1)

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        x, a = batch["input"], self.args
        leader = self._tap.run(x)
        knowledge = [t.run(x) for t in self._taps]
        z = torch.stack([k.logits.float() for k in knowledge], 1)  # (N, P, C)
        alpha = self.attention(knowledge)
        targets = alpha @ z.detach()  # (N, P, C): peer a's own aggregated logits
        total, out = self.student_objective(leader, batch, step)
        rows = labelled(batch)
        y = batch["target"].clamp_min(0)
        attn_ce = torch.stack(
            [
                (F.cross_entropy(targets[:, i], y, reduction="none") * rows).sum()
                / rows.sum().clamp_min(1)
                for i in range(z.shape[1])
            ]
        ).sum()
        peer_kd = z.new_zeros(())
        for i in range(z.shape[1]):
            out[f"task_peer{i}"] = self.task(z[:, i], batch, step)
            total = total + out[f"task_peer{i}"]
            peer_kd = peer_kd + soft_kl(
                z[:, i], soft_probs(targets[:, i], a.temperature), a.temperature
            )
        group = soft_probs(z, a.temperature).mean(1)
        out["peer_kd"] = peer_kd
        out["leader_kd"] = soft_kl(leader.logits, group, a.temperature)
        out["attention_ce"] = attn_ce
        total = total + a.kd_weight * peer_kd + a.leader_weight * out["leader_kd"] + attn_ce
        return {"loss": total, **out}


class FFLArgs(Strict):
    num_peers: int = Field(1, ge=1)  # used only when no peers are configured
    layer: str | list[str] = "head:input"  # the fused feature: one name, or one per model
    temperature: float = Field(3.0, gt=0)
    kd_weight: float = Field(1.0, ge=0)


class _Fusion(nn.Module):
    """Concatenate the models' feature maps on channels, mix with a 1x1 conv, classify."""

    def __init__(self, channels: list[int], spatial: int, num_classes: int):
        super().__init__()
        total = sum(channels)
        width = max(channels)
        if spatial:
            conv = {1: nn.Conv1d, 2: nn.Conv2d}[spatial]
            norm = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[spatial]
            self.mix = nn.Sequential(conv(total, width, 1, bias=False), norm(width), nn.ReLU())
        else:
            self.mix = nn.Sequential(nn.Linear(total, width), nn.BatchNorm1d(width), nn.ReLU())
        self.fc = nn.Linear(width, num_classes)

    def forward(self, feats: list[Tensor]) -> Tensor:
        if feats[0].dim() > 2:  # match positions by pooling to the smallest map
            size = min(f.shape[2:] for f in feats)
            pool = F.adaptive_avg_pool1d if feats[0].dim() == 3 else F.adaptive_avg_pool2d
            feats = [f if f.shape[2:] == size else pool(f, size) for f in feats]
        return self.fc(as_vector(self.mix(torch.cat(feats, 1))))


class FeatureFusionLearning(SchemeBase):
    """Online KD through a feature-fusion module (Kim et al. 2021, FFL; the surveys' FFM).

    The peers' feature maps are fused into one extra classifier z_f. The fused classifier
    teaches each peer (T^2 KL(p_f^T || p_i^T)) and the peers' ensemble teaches the fused
    classifier (T^2 KL(mean_i p_i^T || p_f^T)), all targets detached, plus every task loss.
    """

    Args = FFLArgs

    def __init__(self, ctx: SchemeContext):
        a = self.args = parse_args(FFLArgs, ctx.args, "ffl")
        self.peers = _peer_models(ctx, a.num_peers)
        models = [ctx.student, *self.peers]
        _check_classes(self.peers, ctx)
        layers = a.layer if isinstance(a.layer, list) else [a.layer] * len(models)
        if len(layers) != len(models):
            raise ConfigError(
                f"scheme.args.layer: {len(layers)} layer names for {len(models)} models "
                f"(the student and its peers); give one name, or one per model"
            )
        sample = sample_input(ctx)
        shapes = [
            dry_shapes(m, [n], sample, f"model {i}")[n]
            for i, (m, n) in enumerate(zip(models, layers))
        ]
        if len({len(s) for s in shapes}) != 1:
            raise ConfigError(
                f"scheme.args.layer: the fused features must have the same rank, got {shapes}"
            )
        self.layers = layers
        self.fusion = _Fusion([s[1] for s in shapes], len(shapes[0]) - 2, ctx.data.num_classes)
        super().__init__(
            ctx.student, ctx.objective, {"peers": nn.ModuleList(self.peers), "fusion": self.fusion}
        )
        student_layers = list(dict.fromkeys([*ctx.objective.student_layers(), layers[0]]))
        self._taps = [Tap(ctx.student, student_layers, "student")] + [
            Tap(p, [n], f"peer {i}") for i, (p, n) in enumerate(zip(self.peers, layers[1:]), 1)
        ]

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        x, a = batch["input"], self.args
        knowledge = [t.run(x) for t in self._taps]
        fused = self.fusion([k.feats[n] for k, n in zip(knowledge, self.layers)])
        total, out = self.student_objective(knowledge[0], batch, step)
        p_fused = soft_probs(fused, a.temperature)
        kd = soft_kl(knowledge[0].logits, p_fused, a.temperature)
        for i, k in enumerate(knowledge[1:], 1):
            out[f"task_peer{i}"] = self.task(k.logits, batch, step)
            total = total + out[f"task_peer{i}"]
            kd = kd + soft_kl(k.logits, p_fused, a.temperature)
        ensemble = torch.stack([soft_probs(k.logits, a.temperature) for k in knowledge]).mean(0)
        out["task_fused"] = self.task(fused, batch, step)
        out["fused_to_peers"] = kd
        out["peers_to_fused"] = soft_kl(fused, ensemble, a.temperature)
        total = total + out["task_fused"] + a.kd_weight * (kd + out["peers_to_fused"])
        return {"loss": total, **out}


__all__ = ["DeepMutualLearning", "FeatureFusionLearning", "OKDDip", "OnTheFlyNativeEnsemble"]
