"""Name lookup: a name from a table in plain sight, or 'package.module:attr' for user code."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from distill.errors import ConfigError, unknown_name


def resolve_reference(ref: str, what: str) -> object:
    """Import 'package.module:attr' (the only way a config reaches user code)."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{what} reference {ref!r} must look like 'package.module:attr'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(
            f"{what} {ref!r}: cannot import {module_name!r} ({e}); is it on PYTHONPATH?"
        ) from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{what} {ref!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def lookup(kind: str, name: str, table: Mapping[str, Any], fix: str = "") -> Callable[..., Any]:
    """`table[name]`, or the user's callable for a 'package.module:attr' name."""
    if ":" in name:
        obj = resolve_reference(name, kind)
    elif name in table:
        obj = table[name]
    else:
        raise ConfigError(
            unknown_name(kind, name, table, fix or "or give your own as 'package.module:attr'")
        )
    if not callable(obj):
        raise ConfigError(f"{kind} {name!r} is not callable")
    return obj
