"""Student architecture search under a parameter or latency budget.

Candidates are the product of a space of builder arguments (depth, width, kernel, ...).
Each is built once to measure its size and CPU latency; those over budget are dropped
before any scoring. The rest are scored by

- `proxy`: a short distillation run (a few epochs of the real KD objective), scored by
  validation accuracy: slow, but it measures what the search is for;
- `similarity`: a training-free score in the spirit of DisWOT (Dong et al. 2023), who found
  that the similarity of a randomly initialised student's semantics and sample relations to
  the teacher's predicts the distilled student's accuracy. Both are compared as Gram
  matrices, so models of any width compare: the relation matrix is the batch x batch
  cosine similarity of the classifier's input features; the semantic matrix is the
  class x class cosine similarity of the gradients of each class's mean logit with respect
  to those features (a Grad-CAM-like class saliency). The score is
  -(||R_s - R_t||_F^2 + ||S_s - S_t||_F^2) / n^2 terms; higher is more teacher-like;
- `both`: the similarity score ranks everyone and the best `top_k` get the proxy run.

The result lists every candidate with its cost and score, the Pareto set over (parameters,
score), and the chosen candidate (best score within budget).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from distill.core.settings import Strict
from distill.models import build_model
from distill.profile import count_parameters, latency_ms


class SearchSettings(Strict):
    model: str  # a model table name or 'package.module:attr'
    space: dict[str, list[Any]]  # argument -> choices; candidates are their product
    fixed: dict[str, Any] = {}  # arguments every candidate shares
    max_params: int | None = Field(None, ge=1)
    max_latency_ms: float | None = Field(None, gt=0)  # batch-1 p50 on one CPU thread
    score: Literal["proxy", "similarity", "both"] = "both"
    proxy_epochs: int = Field(3, ge=1)
    top_k: int = Field(3, ge=1)  # with score 'both': how many get the proxy run
    max_candidates: int | None = Field(None, ge=1)  # a seeded random subset of the product
    seed: int = 0


def candidates(s: SearchSettings) -> list[dict[str, Any]]:
    keys = sorted(s.space)
    combos = [dict(zip(keys, values)) for values in itertools.product(*(s.space[k] for k in keys))]
    if s.max_candidates is not None and len(combos) > s.max_candidates:
        combos = random.Random(s.seed).sample(combos, s.max_candidates)
    return [{**s.fixed, **c} for c in combos]


def _classifier(model: nn.Module, num_classes: int) -> nn.Module:
    heads = [
        m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes
    ]
    if not heads:
        raise ValueError("no Linear layer with one output per class to read features from")
    return heads[-1]


def _features_and_saliency(model: nn.Module, x: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """(classifier-input features (N, D), class saliency (C, D)) of `model` on `x`."""
    head = _classifier(model, num_classes)
    store = {}
    handle = head.register_forward_hook(lambda _m, inp, _o: store.__setitem__("f", inp[0]))
    try:
        model.eval()
        logits = model(x)
    finally:
        handle.remove()
    feats = store["f"]
    grads = []
    for c in range(num_classes):
        (g,) = torch.autograd.grad(logits[:, c].mean(), feats, retain_graph=c < num_classes - 1)
        grads.append(g.mean(0).flatten())
    return feats.detach().flatten(1), torch.stack(grads)


def _gram(rows: Tensor) -> Tensor:
    r = F.normalize(rows.float(), dim=1)
    return r @ r.T


def similarity_score(student: nn.Module, teacher: nn.Module, x: Tensor, num_classes: int) -> float:
    """-(mean squared gap of the relation Grams + of the semantic Grams); 0 is identical."""
    f_s, s_s = _features_and_saliency(student, x, num_classes)
    f_t, s_t = _features_and_saliency(teacher, x, num_classes)
    relation = (_gram(f_s) - _gram(f_t)).pow(2).mean()
    semantic = (_gram(s_s) - _gram(s_t)).pow(2).mean()
    return -float(relation + semantic)


def pareto(rows: list[dict[str, Any]], cost: str = "params", score: str = "score") -> list[int]:
    """Indices of rows not dominated in (lower cost, higher score)."""
    from distill.app.report import pareto_front

    return pareto_front([(r[cost], r[score]) for r in rows])


def _measure(s: SearchSettings, args: dict, input_shape, num_classes: int, teacher, probe) -> dict:
    """A candidate's row: its size and latency, whether it fits the budget (and why not),
    and its similarity to the teacher when that is the score."""
    row: dict[str, Any] = {"args": args}
    try:
        torch.manual_seed(s.seed)
        model = build_model(s.model, input_shape, num_classes, args)
    except Exception as e:  # noqa: BLE001 - an invalid combination is reported, not fatal
        row.update(valid=False, reason=f"{type(e).__name__}: {e}")
        return row
    row["params"] = count_parameters(model)
    row["latency_ms"] = latency_ms(model, input_shape, warmup=5, repeats=30)["p50_ms"]
    over = []
    if s.max_params is not None and row["params"] > s.max_params:
        over.append(f"params {row['params']} > {s.max_params}")
    if s.max_latency_ms is not None and row["latency_ms"] > s.max_latency_ms:
        over.append(f"latency {row['latency_ms']:.3f} ms > {s.max_latency_ms}")
    row.update(valid=not over, reason="; ".join(over) or None)
    if not over and s.score in ("similarity", "both"):
        torch.manual_seed(s.seed)
        row["similarity"] = similarity_score(model, teacher, probe, num_classes)
    return row


def search(
    s: SearchSettings,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    teacher: nn.Module | None,
    probe: Tensor,
    proxy: Callable[[dict[str, Any]], float] | None,
    log: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Run the search; `proxy(args)` trains a candidate briefly and returns its val accuracy."""
    if s.score in ("similarity", "both") and teacher is None:
        raise ValueError("the similarity score compares candidates with a teacher; give one")
    if s.score in ("proxy", "both") and proxy is None:
        raise ValueError("the proxy score needs a training function")
    rows = [_measure(s, args, input_shape, num_classes, teacher, probe) for args in candidates(s)]
    feasible = [r for r in rows if r["valid"]]
    if not feasible:
        raise ValueError(
            "no candidate fits the budget; raise max_params / max_latency_ms or add smaller "
            "choices to the space"
        )
    if s.score == "both":
        ranked = sorted(feasible, key=lambda r: -r["similarity"])
        to_train = ranked[: s.top_k]
    elif s.score == "proxy":
        to_train = feasible
    else:
        to_train = []
    for r in to_train:
        log(f"search: proxy run for {r['args']}")
        r["proxy_acc"] = float(proxy(r["args"]))
    key = "similarity" if s.score == "similarity" else "proxy_acc"
    scored = [r for r in feasible if key in r]
    for r in scored:
        r["score"] = r[key]
    front = [scored[i] for i in pareto(scored)]
    for r in front:
        r["pareto"] = True
    chosen = max(scored, key=lambda r: (r["score"], -r["params"]))
    return {
        "score": key,
        "candidates": rows,
        "pareto": [r["args"] for r in front],
        "chosen": chosen["args"],
        "chosen_row": chosen,
    }
