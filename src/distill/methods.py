"""The catalogue `distill methods` prints: every loss and scheme with its family and paper."""

from __future__ import annotations

from distill.llm.divergences import TOKEN_DIVERGENCES
from distill.losses import LOSSES
from distill.schemes import SCHEMES


def list_methods() -> list[dict[str, str]]:
    """[{'name', 'family', 'paper'}]: every loss, token divergence, then every scheme."""
    rows = [
        {"name": name, "family": spec.family, "paper": spec.paper} for name, spec in LOSSES.items()
    ]
    rows += [
        {"name": name, "family": "token divergence (lm_kd)", "paper": paper}
        for name, (_fn, paper) in TOKEN_DIVERGENCES.items()
    ]
    rows += [
        {"name": name, "family": f"scheme ({spec.family})", "paper": spec.paper}
        for name, spec in SCHEMES.items()
    ]
    return rows
