"""Several teachers in `DistillationTrainer`, as `lm_kd`'s `route:` does in the YAML loop
(`distill.llm.routing`): `teachers={name: teacher}` where each teacher is a model, a served
teacher (`{"server": {"url": ...}}`) or a cache built before over the same training rows
(`{"cache": DIR}`); with `teacher_weights={name: w}` every row learns from every teacher
(weights normalised), with `route_column="domain"` each row learns from the teacher its
column names. Each teacher's KD is logged as `kd_<name>` (the mean over the logging
interval's steps). A model is read with the trainer's divergence; a server or cache gives
top-k log-probabilities, whose KD is the forward KL over them and the tail.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

ROUTE = "teacher_route"


def route_rows(rows: Any, column: str | None, names: list[str]) -> tuple[Any, list[int] | None]:
    """(rows without the route column, each row's teacher index), checked against `names`."""
    if column is None:
        return rows, None
    n = len(rows)
    values = [rows[i].get(column) for i in range(n)]
    unknown = sorted({str(v) for v in values} - set(names))
    if unknown:
        count = sum(str(v) in unknown for v in values)
        raise ValueError(
            f"route_column {column!r} names {unknown} ({count} rows), which are not among "
            f"teachers {names}; add them or fix the column"
        )
    index = [names.index(str(v)) for v in values]
    if hasattr(rows, "remove_columns"):
        return rows.remove_columns([column]), index
    return [{k: v for k, v in rows[i].items() if k != column} for i in range(n)], index


def with_routes(rows: Any, index: list[int] | None) -> Any:
    if index is None:
        return rows
    if hasattr(rows, "add_column"):
        return rows.add_column(ROUTE, index)
    return [{**rows[i], ROUTE: index[i]} for i in range(len(rows))]


class TrainerRouter:
    """The teachers of a `DistillationTrainer` and the KD of a batch against them."""

    def __init__(self, trainer: Any, teachers: dict[str, Any], weights: Any, rows: Any, k: int):
        from distill.llm.served import ServedTeacher, ServedTeacherArgs
        from distill.llm.trainer_cache import BatchRows, open_or_build

        if len(teachers) < 2:
            raise ValueError("teachers= takes two or more teachers; give teacher_model= for one")
        self.names, self.sources = list(teachers), {}
        vocab = int(
            trainer.accelerator.unwrap_model(trainer.model).get_output_embeddings().weight.shape[0]
        )
        for name, t in teachers.items():
            if isinstance(t, torch.nn.Module):
                self.sources[name] = trainer.prepare_teacher(t)
            elif isinstance(t, dict) and set(t) == {"server"}:
                self.sources[name] = ServedTeacher(
                    ServedTeacherArgs(**t["server"]), vocab, trainer.processing_class
                )
            elif isinstance(t, dict) and set(t) == {"cache"}:
                cache = open_or_build(t["cache"], None, rows, trainer.processing_class, vocab, 1, 0)
                self.sources[name] = BatchRows(cache)
            else:
                raise ValueError(
                    f"teachers[{name!r}] must be a model, {{'server': {{...}}}} or {{'cache': DIR}}"
                )
        self.weights = None
        if weights is not None:
            if (
                set(weights) != set(self.names)
                or min(weights.values()) < 0
                or not sum(weights.values())
            ):
                raise ValueError(f"teacher_weights: give a weight >= 0 for each of {self.names}")
            self.weights = {k: v / sum(weights.values()) for k, v in weights.items()}
        self.logged: dict[str, list[float]] = {name: [] for name in self.names}

    def sparse(self) -> bool:
        return any(not isinstance(s, torch.nn.Module) for s in self.sources.values())

    def kd(self, trainer: Any, logits: Tensor, inputs: dict, targets: Tensor, n: Tensor) -> Tensor:
        """The routed or mixed KD of a batch; `inputs` still holds the route and cache rows."""
        from distill.llm.lm_loss import lm_losses_from_logits
        from distill.losses.divergences import sparse_kd_loss

        route = inputs.pop(ROUTE, None)
        cache_row = inputs.pop("cache_row", None)
        total = logits.new_zeros((), dtype=torch.float32)
        for t, name in enumerate(self.names):
            rows = torch.arange(len(targets), device=targets.device)
            if self.weights is None:
                rows = rows[route.to(targets.device) == t]
            if len(rows) == 0:
                continue
            sub = {k: v[rows] for k, v in inputs.items()}
            source, z = self.sources[name], logits[rows]
            if isinstance(source, torch.nn.Module):
                with torch.no_grad():
                    z_t = source(**sub).logits[:, :-1]
                kd = lm_losses_from_logits(z, z_t[..., : z.shape[-1]], targets[rows],
                                           divergence=trainer.divergence, num_tokens=n,
                                           **trainer.div_args)[0]  # fmt: skip
            else:
                ids = sub["input_ids"]
                am = sub.get("attention_mask", torch.ones_like(ids))
                batch = {"input": ids[:, :-1], "attention_mask": am[:, :-1], "target": targets[rows],
                         "index": cache_row[rows.cpu()] if cache_row is not None else None}  # fmt: skip
                parts = (x.to(z.device) for x in source.sparse(batch))
                kd = sparse_kd_loss(z, *parts, "topk", mask=targets[rows] >= 0, num_tokens=n)
            self.logged[name].append(float(kd.detach()))
            total = total + (self.weights[name] if self.weights else 1.0) * kd
        return total

    def take_logs(self) -> dict[str, float]:
        out = {f"kd_{k}": sum(v) / len(v) for k, v in self.logged.items() if v}
        for v in self.logged.values():
            v.clear()
        return out
