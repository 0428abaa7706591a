"""Validation at the end of an epoch (or every `eval_every_steps`): the metrics, the best
score so far and the patience of early stopping (the caller saves the best weights when it
improves: `distill.loop.resume.save_epoch`)."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

from distill.core import distributed
from distill.evaluate import evaluate


def validate(t: Any) -> tuple[dict[str, float], bool]:
    """Validation metrics of trainer `t`, and whether they improved on the best so far (the
    patience of early stopping counts validations)."""
    s, st = t.settings, t.state
    # Ranks normalised their own slices, so their BatchNorm statistics differ: all take
    # rank 0's (the ones its checkpoint saves, and what DDP's broadcast_buffers keeps).
    distributed.broadcast_buffers(t.scheme.modules)
    scheme_eval = t.contract.evaluate  # e.g. perplexity for LMs
    evaluator = scheme_eval or partial(evaluate, t.scheme.eval_model(), workers=s.workers)
    metrics = evaluator(t.val_data, batch_size=s.eval_batch_size, device=t.device)
    # best-epoch and early-stopping decisions (and the collectives behind them) must agree
    metrics = distributed.from_rank0(metrics)
    score = -metrics["nll"] if s.monitor == "nll" else metrics[s.monitor]
    # a model still being compressed (pruning on its way to its target sparsity) is not
    # yet the model the run promises: each such epoch is kept as "best" provisionally
    # and the first settled epoch replaces it
    settled = all(h.settled(st["step"]) for h in t.step_hooks)
    improved = score > st["best"] or not settled
    if improved:
        st["best"], st["best_epoch"], st["bad_epochs"] = score, st["epoch"] + 1, 0
        if not settled:
            st["best"] = -math.inf
    else:
        st["bad_epochs"] += 1
    return metrics, improved
