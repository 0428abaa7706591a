"""The catalogue `distill methods` prints: every loss and scheme with its family and paper."""

from __future__ import annotations

from distill.losses.table import DIVERGENCES, LOSSES
from distill.schemes.table import SCHEMES


def list_methods() -> list[dict[str, str]]:
    """[{'name', 'family', 'paper'}]: every loss, token divergence, then every scheme."""
    rows = [
        {"name": name, "family": spec.family, "paper": spec.paper} for name, spec in LOSSES.items()
    ]
    rows += [
        {"name": name, "family": "token divergence (lm_kd)", "paper": paper}
        for name, (_fn, paper) in DIVERGENCES.items()
    ]
    rows += [
        {"name": name, "family": f"scheme ({spec.family})", "paper": spec.paper}
        for name, spec in SCHEMES.items()
    ]
    return rows
