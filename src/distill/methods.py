"""The catalogue `distill methods` prints: every loss and scheme with its family and paper."""

from __future__ import annotations

from distill.losses import LOSSES
from distill.schemes import SCHEMES

SCHEME_PAPERS = {
    "supervised": "standard supervised training (no distillation)",
    "offline": "Hinton, Vinyals & Dean 2015, Distilling the Knowledge in a Neural Network",
}


def list_methods() -> list[dict[str, str]]:
    """[{'name', 'family', 'paper'}] for every loss, then every scheme."""
    rows = [
        {"name": name, "family": spec.family, "paper": spec.paper} for name, spec in LOSSES.items()
    ]
    rows += [{"name": name, "family": "scheme", "paper": SCHEME_PAPERS[name]} for name in SCHEMES]
    return rows
