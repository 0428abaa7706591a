"""Several language-model teachers for one student: each row routed to the teacher of its
domain, or every row taught by a fixed mixture.

`scheme.args.route.teachers` names the teachers, each of any kind: the run's own teacher
section (`local: true`), a cache (`cache: PATH`, from `distill lm-cache`) or a server
(`server: {url: ...}`, `distill.llm.served`).

- **Domain routing** (no `weights`): the data's route column (`data.options.route_column`)
  names each row's teacher; a row learns from that teacher alone. Each teacher's KD is
  summed over its rows' supervised tokens and divided by all the step's supervised tokens,
  so the total is the single-teacher loss when every row has one teacher.
- **A fixed mixture** (`weights: {name: w}`): every row learns from every teacher, KD =
  sum_t w_t KD_t with the weights normalised to sum to 1 (the multi-teacher average of
  Hinton et al. 2015 and of the ensemble KD literature, per token).

A local teacher is read densely with the run's divergence; a cache or server gives top-k
log-probabilities, and its KD is the KL over the k tokens and the tail (`distill.llm.cache`).
Each teacher's loss is reported as `kd_<name>`.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, model_validator
from torch import Tensor

from distill.core.errors import ConfigError
from distill.core.settings import Strict
from distill.llm.served import ServedTeacherArgs

WHERE = "scheme.args.route"


class TeacherEntry(Strict):
    local: bool = False  # the config's teacher section
    cache: str | None = None
    server: ServedTeacherArgs | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> TeacherEntry:
        if int(self.local) + (self.cache is not None) + (self.server is not None) != 1:
            raise ValueError("each teacher is one of local: true, cache: PATH or server: {url}")
        return self


class RouteArgs(Strict):
    teachers: dict[str, TeacherEntry] = Field(min_length=2)
    weights: dict[str, float] | None = None  # a fixed mixture; None: the data's route column


def needs_local_teacher(args: dict[str, Any]) -> bool:
    """Whether an `lm_kd` config reads the teacher section (a model to load): not when a
    cache or server stands in for it, and with routing only when a routed teacher is
    `local` (`SchemeSpec.needs_teacher`)."""
    route = args.get("route")
    if route:
        return any(bool((t or {}).get("local")) for t in route.get("teachers", {}).values())
    return not (args.get("teacher_cache") or args.get("teacher_server"))


class Router:
    """The teachers of a route and the KD of a batch against them."""

    def __init__(self, a: Any, ctx: Any, vocab: int):
        r = a.route
        if a.teacher_cache or a.teacher_server:
            raise ConfigError(f"{WHERE}: name every teacher in route.teachers, not also elsewhere")
        if a.on_policy or a.sequence_level or a.hidden or a.chunk_size or a.cross_tokenizer:
            raise ConfigError(
                f"{WHERE} trains on the data's own tokens with token-level KD; it cannot be "
                f"combined with on_policy, sequence_level, hidden, chunk_size or cross_tokenizer"
            )
        self.names = list(r.teachers)
        self.sources: dict[str, Any] = {}
        for name, entry in r.teachers.items():
            if entry.local:
                if ctx.teacher is None:
                    raise ConfigError(f"{WHERE}.teachers.{name} is local: add a teacher section")
                self.sources[name] = ctx.teacher
                continue
            if a.divergence != "forward_kl" or a.temperature != 1.0:
                raise ConfigError(
                    f"{WHERE}.teachers.{name} gives top-k log-probabilities: its KD is the "
                    f"forward KL at temperature 1; set divergence: forward_kl and temperature: 1"
                )
            from distill.llm.sources import open_source

            one = a.model_copy(update={"route": None, "teacher_cache": entry.cache,
                                       "teacher_server": entry.server})  # fmt: skip
            self.sources[name] = open_source(one, ctx, vocab)
        self.weights = self._weights(r.weights)
        if self.weights is None:
            self.column = self._check_column(ctx.data.train)

    def _weights(self, weights: dict[str, float] | None) -> dict[str, float] | None:
        if weights is None:
            return None
        if set(weights) != set(self.names) or any(w < 0 for w in weights.values()):
            raise ConfigError(
                f"{WHERE}.weights: give a weight >= 0 for each of {self.names}, got {weights}"
            )
        total = sum(weights.values())
        if total <= 0:
            raise ConfigError(f"{WHERE}.weights: at least one weight must be above 0")
        return {k: v / total for k, v in weights.items()}

    def _check_column(self, train: Any) -> Tensor:
        names = getattr(train, "route_names", None)
        if getattr(train, "route", None) is None or not names:
            raise ConfigError(
                f"{WHERE} without weights routes each row by the data's route column: set "
                f"data.options.route_column (hf_text), or give weights for a fixed mixture"
            )
        unknown = sorted(set(names) - set(self.names))
        if unknown:
            rows = int(sum((train.route == names.index(u)).sum() for u in unknown))
            raise ConfigError(
                f"{WHERE}: the data's route column names {unknown} ({rows} training rows), which are "
                f"not among route.teachers {self.names}; add them or fix the column"
            )
        # the data's route index -> the teacher's position in self.names
        return torch.tensor([self.names.index(n) for n in names])

    def describe(self) -> str:
        from distill.llm.sources import describe

        how = "a fixed mixture" if self.weights else "routed by the data's column"
        parts = [
            f"{name}: "
            + ("the teacher section" if isinstance(src, torch.nn.Module) else describe(src)[1])
            for name, src in self.sources.items()
        ]
        return f"{len(parts)} teachers, {how} ({'; '.join(parts)})"

    def kd(
        self, student_logits: Tensor, batch: dict[str, Tensor], n: Tensor, scheme: Any
    ) -> dict[str, Tensor]:
        """{"kd": total, "kd_<name>": each teacher's share} of a batch."""
        from distill.llm.lm_loss import lm_losses_from_logits
        from distill.losses.divergences import sparse_kd_loss

        y = batch["target"]
        if self.weights is None:
            who = self.column.to(y.device)[batch["route"]]
        out: dict[str, Tensor] = {}
        for t, name in enumerate(self.names):
            rows = torch.arange(len(y), device=y.device)
            if self.weights is None:
                rows = rows[who == t]
            if len(rows) == 0:
                out[f"kd_{name}"] = student_logits.sum() * 0.0
                continue
            sub = {
                k: v[rows]
                for k, v in batch.items()
                if torch.is_tensor(v) and v.dim() and len(v) == len(y)
            }
            z = student_logits[rows]
            source = self.sources[name]
            if isinstance(source, torch.nn.Module):
                with torch.no_grad():
                    z_t = source(
                        input_ids=sub["input"], attention_mask=sub.get("attention_mask")
                    ).logits
                out[f"kd_{name}"] = lm_losses_from_logits(
                    z, z_t[..., : scheme.vocab], sub["target"], divergence=scheme.args.divergence,
                    num_tokens=n, **scheme.div_args,
                )[0]  # fmt: skip
            else:
                ids, values, extra = (x.to(z.device) for x in source.sparse(sub))
                out[f"kd_{name}"] = sparse_kd_loss(
                    z, ids, values, extra, source.mode, mask=sub["target"] >= 0, num_tokens=n
                )
        weights = self.weights or dict.fromkeys(self.names, 1.0)
        out["kd"] = sum(weights[name] * out[f"kd_{name}"] for name in self.names)
        return out
