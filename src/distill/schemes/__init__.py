"""Schemes: who teaches whom on each step. A scheme owns models, never a loop.

- `distill.schemes.contract`: what the `Trainer` reads of a scheme (`Scheme`, and every
  optional member with its default, in `Contract`);
- `distill.schemes.table`: `SCHEMES`, every scheme's name, paper and capabilities as data,
  its code named by `module:attr` and imported on first use;
- `distill.schemes.base`: what schemes share (`SchemeContext`, `parse_args`, `SchemeBase`,
  soft-target losses).

Step schemes are built from a `SchemeContext`; pipeline schemes (born-again networks,
teacher assistants, lifelong learning) expand into a list of stages, each an ordinary run
(see `distill.app.stages`).

Importing this package imports neither torch nor any scheme: the names below that need
them are loaded when first used.
"""

from __future__ import annotations

from distill.core.registry import lazy_exports
from distill.schemes.spec import SchemeSpec, TeacherUse
from distill.schemes.table import SCHEMES, list_schemes

_LAZY = {
    "Scheme": "distill.schemes.contract",
    "Contract": "distill.schemes.contract",
    "SchemeBase": "distill.schemes.base",
    "SchemeContext": "distill.schemes.base",
    "parse_args": "distill.schemes.base",
    "OfflineKD": "distill.schemes.offline",
    "Supervised": "distill.schemes.supervised",
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "SCHEMES",
    "Contract",
    "OfflineKD",
    "Scheme",
    "SchemeBase",
    "SchemeContext",
    "SchemeSpec",
    "Supervised",
    "TeacherUse",
    "list_schemes",
    "parse_args",
]
