"""`lm_kd`: white-box distillation between causal language models on the one training loop.

Per supervised token (not prompt, not padding) the student matches the teacher's
next-token distribution with a chosen divergence; optionally hidden states are matched
across depths through a layer map; optionally a fraction of batches is completed by the
student itself and scored by the teacher (on-policy, GKD); optionally the training text is
replaced by the teacher's own continuations (sequence-level KD). Losses are sums over
tokens divided by the supervised tokens of the whole optimizer step, so gradient
accumulation does not change them.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from distill.core.errors import ConfigError
from distill.core.settings import Strict
from distill.llm.chunked import (
    decoder_and_head,
)
from distill.llm.generation import (
    report_diversity,
    retokenized_teacher_sequences,
    sample_continuations,
    teacher_sequences,
)
from distill.llm.lm_loss import lm_losses_from_hidden, lm_losses_from_logits
from distill.llm.routing import RouteArgs, Router
from distill.llm.served import ServedTeacherArgs
from distill.llm.sources import open_source
from distill.llm.text import lm_metrics
from distill.llm.vocab import DualSpaceKD, check_tokenizers, uld_loss
from distill.losses.divergences import TOKEN_DIVERGENCES, divergence_args
from distill.schemes.base import SchemeBase, SchemeContext, parse_args


class HiddenArgs(Strict):
    weight: float = Field(1.0, ge=0)
    map: Literal["uniform", "last_k", "explicit"] = "uniform"
    pairs: list[tuple[int, int]] = []  # explicit: (student layer, teacher layer), 1-based
    loss: Literal["mse", "cosine"] = "mse"


class OnPolicyArgs(Strict):
    fraction: float = Field(0.5, ge=0, le=1)  # lambda: share of batches the student completes
    prompt_tokens: int = Field(16, ge=1)  # each row's first tokens are the prompt
    temperature: float = Field(1.0, gt=0)  # sampling temperature of the student


class SequenceArgs(Strict):
    prompt_tokens: int = Field(16, ge=2)
    greedy: bool = True  # the teacher's greedy continuation (Kim & Rush 2016), else sampled


class LMKDArgs(Strict):
    divergence: str = "forward_kl"
    temperature: float = Field(1.0, gt=0)
    beta: float = Field(0.5, ge=0, le=1)  # jsd
    alpha: float = Field(0.1, ge=0, lt=1)  # skew_kl, skew_reverse_kl
    kd_weight: float = Field(1.0, ge=0)
    chunk_size: int = Field(0, ge=0)  # 0: full logits; N: the memory-efficient path, N tokens
    hidden: HiddenArgs | None = None
    on_policy: OnPolicyArgs | None = None
    sequence_level: SequenceArgs | None = None
    teacher_cache: str | None = None  # a cache from `distill lm-cache`: the teacher is not run
    teacher_server: ServedTeacherArgs | None = None  # a teacher served elsewhere (vLLM's API)
    route: RouteArgs | None = None  # several teachers: by a data column, or a fixed mixture
    cross_tokenizer: Literal["uld", "dskd"] | None = None  # teacher with another tokenizer


def layer_map(
    n_student: int, n_teacher: int, how: str = "uniform", pairs: list | None = None
) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs, layers counted from 1 (0 is the embeddings).

    uniform: student layer i <- teacher layer round(i * n_teacher / n_student) (DistilBERT /
    TinyBERT style); last_k: the last n_student teacher layers; explicit: `pairs` as given.
    """
    if how == "uniform":
        return [(i, max(1, round(i * n_teacher / n_student))) for i in range(1, n_student + 1)]
    if how == "last_k":
        k = min(n_student, n_teacher)
        return [(n_student - k + j, n_teacher - k + j) for j in range(1, k + 1)]
    pairs = [tuple(p) for p in (pairs or [])]
    if not pairs:
        raise ConfigError(
            "scheme.args.hidden.pairs: map 'explicit' needs [[student, teacher], ...]"
        )
    for s, t in pairs:
        if not (1 <= s <= n_student and 1 <= t <= n_teacher):
            raise ConfigError(
                f"scheme.args.hidden.pairs: ({s}, {t}) is outside 1..{n_student} (student) and "
                f"1..{n_teacher} (teacher)"
            )
    return pairs


def _num_layers(model: nn.Module) -> int:
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    if n is None:
        raise ConfigError(
            "hidden-state matching needs Hugging Face models (config.num_hidden_layers)"
        )
    return int(n)


def _hidden_size(model: nn.Module) -> int:
    cfg = model.config
    return int(getattr(cfg, "hidden_size", None) or cfg.n_embd)


def _forward(model: nn.Module, x: Tensor, am: Tensor | None, hidden: bool, base: bool):
    """The model's output: full (logits) or its decoder (final hidden states only), found
    through PEFT and DDP wrappers (`distill.llm.chunked.decoder_and_head`)."""
    target = decoder_and_head(model)[0] if base else model
    return target(input_ids=x, attention_mask=am, output_hidden_states=hidden)


class LMDistillation(SchemeBase):
    """White-box KD between causal LMs (`transformers` models or any model taking
    input_ids/attention_mask and returning `.logits`). See the module docstring."""

    Args = LMKDArgs

    def __init__(self, ctx: SchemeContext):
        a = self.args = parse_args(LMKDArgs, ctx.args, "lm_kd")
        if a.divergence not in TOKEN_DIVERGENCES:
            raise ConfigError(
                f"scheme.args.divergence: {a.divergence!r} is not one of "
                f"{sorted(TOKEN_DIVERGENCES)}"
            )
        if ctx.teacher is None and not (a.teacher_cache or a.teacher_server or a.route):
            raise ConfigError(
                "scheme lm_kd needs a teacher: a teacher section, a cache of its outputs "
                "(scheme.args.teacher_cache, from distill lm-cache) or a server "
                "(scheme.args.teacher_server)"
            )
        self.teacher = ctx.teacher
        self.vocab = ctx.data.num_classes  # the tokenizer's size: padded rows beyond it are cut
        self.seed = ctx.seed
        self.div_args = divergence_args(a.divergence, a.temperature, a.beta, a.alpha)
        trained = self._hidden_projections(ctx)
        if a.chunk_size:
            for role, model in (("student", ctx.student), ("teacher", ctx.teacher)):
                if model is None:  # the cache stands in for the teacher
                    continue
                try:
                    decoder_and_head(model)
                except ValueError as e:
                    raise ConfigError(f"scheme.args.chunk_size: the {role}: {e}") from None
        self.router = Router(a, ctx, self.vocab) if a.route else None
        self.source = None if a.route else open_source(a, ctx, self.vocab)  # cache or server
        self.dskd = None
        if ctx.data.teacher_tokenizer is not None or a.cross_tokenizer is not None:
            self._check_cross(ctx)
            if a.cross_tokenizer == "dskd":
                self.dskd = DualSpaceKD(
                    _hidden_size(ctx.student),
                    _hidden_size(ctx.teacher),
                    ctx.student.get_input_embeddings().embedding_dim,
                    ctx.teacher.get_input_embeddings().embedding_dim,
                )
                trained["dskd"] = self.dskd
        frozen = [ctx.teacher] if ctx.teacher is not None else []
        super().__init__(ctx.student, ctx.objective, trained, frozen=frozen)
        # text across tokenizers: the teacher never reads the student's tokens
        self.cross_text = ctx.data.teacher_tokenizer is not None
        self.cross_sequences = self.cross_text and a.cross_tokenizer is None
        self._teacher_sequences(ctx)

    def _hidden_projections(self, ctx: SchemeContext) -> dict[str, nn.Module]:
        """The layer pairs of hidden-state matching and a projection per pair (student
        width to teacher width), to train with the student."""
        a, trained = self.args, {}
        self.pairs: list[tuple[int, int]] = []
        if a.hidden is not None:
            self.pairs = layer_map(
                _num_layers(ctx.student), _num_layers(ctx.teacher), a.hidden.map, a.hidden.pairs
            )
            d_s, d_t = _hidden_size(ctx.student), _hidden_size(ctx.teacher)
            self.projections = nn.ModuleList(
                [nn.Linear(d_s, d_t) if d_s != d_t else nn.Identity() for _ in self.pairs]
            )
            trained["projections"] = self.projections
        return trained

    def _teacher_sequences(self, ctx: SchemeContext) -> None:
        """Sequence-level KD: the teacher's continuations of every training prompt, made
        once (re-tokenised by the student's tokenizer when the tokenizers differ)."""
        a = self.args
        if self.cross_sequences:
            seqs, starts = retokenized_teacher_sequences(
                self.teacher,
                ctx.data.train,
                ctx.data.teacher_tokenizer,
                ctx.data.tokenizer,
                a.sequence_level,
                self.seed,
            )
            self.modules["sequences"] = _Buffer(seqs)
            self.modules["sequence_starts"] = _Buffer(starts)
        elif a.sequence_level is not None:
            seqs = teacher_sequences(self.teacher, ctx.data.train, a.sequence_level, self.seed)
            self.modules["sequences"] = _Buffer(seqs)
            report_diversity(seqs[:, a.sequence_level.prompt_tokens :])

    def _teacher_sequence_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The batch's rows replaced by the teacher's stored sequences, prompts unsupervised."""
        ids = self.modules["sequences"].value[batch["index"]].to(batch["input"].device)
        target = ids[:, 1:].clone()
        target[:, : self._prompt_targets()] = -1
        return {
            **batch,
            "input": ids[:, :-1],
            "target": target,
            "attention_mask": torch.ones_like(ids[:, :-1]),
        }

    def _check_cross(self, ctx: SchemeContext) -> None:
        a = self.args
        if ctx.data.teacher_tokenizer is None:
            raise ConfigError(
                f"scheme.args.cross_tokenizer {a.cross_tokenizer!r} needs the text in the "
                f"teacher's tokens too: set data.options.teacher_tokenizer"
            )
        if a.cross_tokenizer is None and a.sequence_level is not None:
            # sequence-level KD across tokenizers: the teacher writes text in its own tokens,
            # the student learns it re-tokenized by its own tokenizer
            if a.on_policy or a.hidden or a.chunk_size or a.teacher_cache or a.teacher_server:
                raise ConfigError(
                    "sequence_level across tokenizers cannot be combined with on_policy, "
                    "hidden, chunk_size, teacher_cache or teacher_server"
                )
            return
        if a.cross_tokenizer is None:
            check_tokenizers(ctx.data.tokenizer, ctx.data.teacher_tokenizer)  # raises if different
            raise ConfigError(
                "data.options.teacher_tokenizer is the student's own tokenizer; remove it"
            )
        if a.on_policy or a.sequence_level or a.hidden or a.chunk_size or a.teacher_cache:
            raise ConfigError(
                "scheme.args.cross_tokenizer cannot be combined with on_policy, sequence_level, "
                "hidden, chunk_size or teacher_cache"
            )
        if a.teacher_server:
            raise ConfigError(
                "scheme.args.cross_tokenizer needs the teacher's hidden states or full "
                "distributions over its own vocabulary; a served teacher gives top-k "
                "log-probabilities over its tokens only: give a local teacher section"
            )

    def _cross_step(self, batch, step: int, n) -> dict[str, Tensor]:
        """ULD or DSKD between models that tokenize the text differently."""
        a = self.args
        x, y = batch["input"], batch["target"]
        want_hidden = self.dskd is not None
        s_out = self.student(
            input_ids=x,
            attention_mask=batch.get("attention_mask"),
            output_hidden_states=want_hidden,
        )
        tx, t_am = batch["teacher_input"], batch["teacher_attention_mask"]
        with torch.no_grad():
            t_out = self.teacher(
                input_ids=tx, attention_mask=t_am, output_hidden_states=want_hidden
            )
        z_s = s_out.logits[..., : self.vocab]
        mask = y >= 0
        out = {"task": F.cross_entropy(z_s.float()[mask], y[mask], reduction="sum") / n}
        if self.dskd is None:
            out["kd"] = uld_loss(
                z_s, t_out.logits, mask, batch["teacher_target"] >= 0, temperature=a.temperature
            )
            extra = 0.0
        else:
            w_s = self.student.get_output_embeddings().weight[: self.vocab]
            w_t = self.teacher.get_output_embeddings().weight
            with torch.no_grad():
                e_t = self.teacher.get_input_embeddings()(tx)
            kl_s, kl_t, align_ce = self.dskd(
                s_out.hidden_states[-1],
                self.student.get_input_embeddings()(x),
                w_s,
                t_out.hidden_states[-1],
                e_t,
                w_t,
                t_am,
                y,
                temperature=a.temperature,
            )
            out.update(
                kd=kl_s + kl_t,
                dskd_student_space=kl_s,
                dskd_teacher_space=kl_t,
                dskd_align=align_ce,
            )
            extra = align_ce
        total = self.objective.task_weight.at(step) * out["task"] + a.kd_weight * out["kd"]
        return {"loss": total + extra, **out}

    # ---------------------------------------------------------------- trainer hooks
    def count_items(self, batch: dict[str, Tensor]) -> int:
        """Supervised tokens of a micro-batch (the trainer sums them over the optimizer step)."""
        if self.cross_sequences:  # the teacher's re-tokenized continuation tokens
            return int(self._sequence_batch(batch)["target"].ge(0).sum())
        if self.args.sequence_level is not None:  # the teacher's continuation tokens
            rows, length = batch["target"].shape
            return rows * (length - self._prompt_targets())
        return int((batch["target"] >= 0).sum())

    def _prompt_targets(self) -> int:
        """Target positions inside the prompt (not learned) in sequence-level KD."""
        return self.args.sequence_level.prompt_tokens - 1

    def evaluate(self, dataset, *, batch_size: int, device) -> dict[str, float]:
        return lm_metrics(
            self.student, dataset, batch_size=min(batch_size, 64), device=device, vocab=self.vocab
        )

    def test_metrics(self, dataset, *, batch_size: int, device="cpu") -> dict[str, float]:
        if self.teacher is None:  # trained from a cache: the student's metrics alone
            kw = {"batch_size": min(batch_size, 64), "device": device, "vocab": self.vocab}
            student = lm_metrics(self.student, dataset, **kw)
            return {f"test_{k}": v for k, v in student.items() if k != "agreement"}
        self.teacher.to(device)
        cross = self.cross_text  # then the teacher reads other tokens
        kw = {"batch_size": min(batch_size, 64), "device": device, "vocab": self.vocab}
        student = lm_metrics(self.student, dataset, teacher=None if cross else self.teacher, **kw)
        out = {f"test_{k}": v for k, v in student.items() if k != "agreement"}
        if not cross:
            teacher = lm_metrics(self.teacher, dataset, **kw)
            out.update({f"teacher_test_{k}": v for k, v in teacher.items()})
            out["test_agreement"] = student["agreement"]
        return out

    # ---------------------------------------------------------------- the step
    def _on_policy_batch(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor] | None:
        """With probability lambda, the rows' continuations sampled from the student."""
        op = self.args.on_policy
        if op is None or op.fraction == 0.0:
            return None
        gen = torch.Generator().manual_seed(self.seed * 7_919 + step)
        if float(torch.rand((), generator=gen)) >= op.fraction:
            return None
        x = batch["input"]
        p = min(op.prompt_tokens, x.shape[1] - 1)
        with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
            torch.manual_seed(self.seed * 1_000_003 + step)
            ids = sample_continuations(
                self.student, x[:, :p], x.shape[1] + 1 - p, op.temperature, self.vocab
            )
        target = ids[:, 1:].clone()
        target[:, : p - 1] = -1  # the prompt is given, not learned
        return {
            **batch,
            "input": ids[:, :-1],
            "target": target,
            "attention_mask": torch.ones_like(ids[:, :-1]),
        }

    def _sequence_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Rows of the teacher's text in the student's tokens: its continuation supervised."""
        index = batch["index"].cpu()
        ids = self.modules["sequences"].value[index].to(batch["input"].device)
        starts = self.modules["sequence_starts"].value[index].to(ids.device)
        target = ids[:, 1:].clone()
        positions = torch.arange(target.shape[1], device=ids.device)
        pad = ids[:, 1:] < 0
        target[(positions[None, :] < (starts[:, None] - 1)) | pad] = -1
        attention = (ids[:, :-1] >= 0).long()
        ids = ids.clamp(min=0)
        return {**batch, "input": ids[:, :-1], "target": target, "attention_mask": attention}

    def _cross_sequence_step(self, batch: dict[str, Tensor], step: int, n) -> dict[str, Tensor]:
        """Sequence-level KD across tokenizers (Kim & Rush 2016): cross-entropy on the
        teacher's continuations re-tokenized by the student's tokenizer, plus the task loss
        on the data. No token-level divergence: the vocabularies do not line up."""
        seq = self._sequence_batch(batch)
        mask = seq["target"] >= 0
        z = self.student(input_ids=seq["input"], attention_mask=seq["attention_mask"]).logits
        kd = F.cross_entropy(
            z[..., : self.vocab].float()[mask], seq["target"][mask], reduction="sum"
        )
        kd = kd / (n if n is not None else mask.sum().clamp(min=1))
        data_mask = batch["target"] >= 0
        z_data = self.student(
            input_ids=batch["input"], attention_mask=batch.get("attention_mask")
        ).logits
        task = F.cross_entropy(
            z_data[..., : self.vocab].float()[data_mask], batch["target"][data_mask]
        )
        total = self.objective.task_weight.at(step) * task + self.args.kd_weight * kd
        return {"loss": total, "kd": kd, "task": task}

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        a = self.args
        if self.cross_sequences:
            return self._cross_sequence_step(batch, step, batch.get("group_items"))
        on_policy = self._on_policy_batch(batch, step)
        if a.sequence_level is not None:
            batch = self._teacher_sequence_batch(batch)
        if on_policy is not None:
            batch = on_policy
        x, am, y = batch["input"], batch.get("attention_mask"), batch["target"]
        mask = y >= 0
        n = batch.get("group_items")
        if n is None or on_policy is not None:
            n = mask.sum()
        if self.source is not None:
            return self._sparse_step(batch, step, mask, n, on_policy is not None)
        if self.router is not None:
            z_s = self.student(input_ids=x, attention_mask=am).logits[..., : self.vocab]
            out = self.router.kd(z_s, batch, n, self)
            out["task"] = F.cross_entropy(z_s.float()[mask], y[mask], reduction="sum") / n
            task_w = self.objective.task_weight.at(step)
            return {"loss": task_w * out["task"] + a.kd_weight * out["kd"], **out}
        if self.args.cross_tokenizer is not None:
            return self._cross_step(batch, step, n)
        hidden = bool(self.pairs)
        chunked = a.chunk_size > 0
        s_out = _forward(self.student, x, am, hidden, base=chunked)
        with torch.no_grad():
            t_out = _forward(self.teacher, x, am, hidden, base=chunked)
        out: dict[str, Tensor] = {}
        if chunked:
            out["kd"], task = lm_losses_from_hidden(
                s_out.last_hidden_state[mask],
                self.student.get_output_embeddings().weight[: self.vocab],
                t_out.last_hidden_state[mask],
                self.teacher.get_output_embeddings().weight[: self.vocab],
                y[mask],
                divergence=a.divergence,
                num_tokens=n,
                chunk_size=a.chunk_size,
                **self.div_args,
            )
        else:
            out["kd"], task = lm_losses_from_logits(
                s_out.logits[..., : self.vocab],
                t_out.logits[..., : self.vocab],
                y,
                divergence=a.divergence,
                num_tokens=n,
                **self.div_args,
            )
        task_w = self.objective.task_weight.at(step)
        if on_policy is not None:
            task_w = 0.0  # the student's own samples are not ground truth
        out["task"] = task
        total = task_w * task + a.kd_weight * out["kd"]
        if hidden:
            out["hidden"] = self._hidden_loss(s_out.hidden_states, t_out.hidden_states, mask)
            total = total + a.hidden.weight * out["hidden"]
        return {"loss": total, **out}

    def _sparse_step(self, batch, step: int, mask: Tensor, n, own: bool) -> dict[str, Tensor]:
        """KD against a cache's or a server's sparse teacher (`distill.llm.sources`);
        `own`: the rows are the student's samples (on-policy), so no task loss."""
        from distill.llm.cache import cached_kd_losses

        kd, task = cached_kd_losses(
            self.student, batch, self.source, mask, n, self.vocab, self.args.chunk_size
        )
        task_w = 0.0 if own else self.objective.task_weight.at(step)
        return {"loss": task_w * task + self.args.kd_weight * kd, "kd": kd, "task": task}

    def _hidden_loss(self, hs: tuple, ht: tuple, mask: Tensor) -> Tensor:
        losses = []
        for (i, j), proj in zip(self.pairs, self.projections):
            s, t = proj(hs[i][mask].float()), ht[j][mask].float()
            if self.args.hidden.loss == "cosine":
                losses.append((1 - F.cosine_similarity(s, t, dim=-1)).mean())
            else:
                losses.append(F.mse_loss(s, t))
        return torch.stack(losses).mean()


class _Buffer(nn.Module):
    def __init__(self, value: Tensor):
        super().__init__()
        self.register_buffer("value", value)


__all__ = ["LMDistillation", "layer_map", "lm_metrics", "sample_continuations", "teacher_sequences"]
