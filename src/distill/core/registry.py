"""Name lookup: a name from a table in plain sight, or 'package.module:attr' for user code."""

from __future__ import annotations

import importlib
import os
import sys
import sysconfig
import types
from collections.abc import Callable, Mapping
from typing import Any

from distill.core.errors import ConfigError, unknown_name


def resolve(ref: str) -> Any:
    """The object an internal `module:attr.attr` reference of distill's own tables names
    (imported on first use; user references go through `lookup`, which checks them)."""
    module, _, path = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def lazy_exports(package: str, homes: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` (PEP 562) that imports each name of `homes` (name -> module)
    from its module on first use, so importing `package` stays light."""

    def __getattr__(name: str) -> Any:
        if name in homes:
            value = getattr(importlib.import_module(homes[name]), name)
            sys.modules[package].__dict__[name] = value  # later lookups skip this function
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


def _top(module_name: str | None) -> str:
    return (module_name or "").split(".")[0]


def _is_stdlib(module_name: str | None) -> bool:
    """True for Python's own modules: built into the interpreter, or loaded from the
    standard library's folder (not site-packages, which may lie inside it). Decided by where
    the module was loaded from, so a user's package named like a stdlib one is told apart."""
    top = _top(module_name)
    if top == "builtins" or top in sys.builtin_module_names:
        return True
    module = sys.modules.get(top)
    file = getattr(module, "__file__", None)
    if module is None or file is None:
        return top in sys.stdlib_module_names
    paths = sysconfig.get_paths()
    where = os.path.realpath(file)
    inside = lambda key: where.startswith(os.path.realpath(paths[key]) + os.sep)  # noqa: E731
    return (inside("stdlib") or inside("platstdlib")) and not (
        inside("purelib") or inside("platlib")
    )


def check_user_callable(obj: object, ref: str, what: str) -> None:
    """Refuse what a config must never call: built-in and standard-library callables (so
    `student.name: os:system` fails before anything runs), objects imported into the named
    module from elsewhere, and, for a model, anything but an nn.Module class or a function.

    Allowed: a class, or a plain Python function defined in the referenced package."""
    module_name = ref.partition(":")[0]
    if _is_stdlib(module_name):
        raise ConfigError(
            f"{what} {ref!r}: {module_name!r} is part of Python's standard library; a config may "
            f"only name your own code (a model class or a function in your module)"
        )
    if isinstance(obj, type):
        home = obj.__module__
        if what == "model":
            import torch.nn

            if not issubclass(obj, torch.nn.Module):
                raise ConfigError(
                    f"model {ref!r} is the class {obj.__name__}, not a torch.nn.Module subclass; "
                    f"name an nn.Module class or a function that returns one"
                )
    elif isinstance(obj, types.FunctionType):
        home = obj.__module__
    else:
        raise ConfigError(
            f"{what} {ref!r} is a {type(obj).__name__}, not a class or a Python function defined "
            f"in {module_name!r}; built-in and other callables are refused. Wrap it in a "
            f"function of your own"
        )
    if _is_stdlib(home):
        raise ConfigError(
            f"{what} {ref!r} is {home}.{getattr(obj, '__qualname__', '?')}, from Python's standard "
            f"library; a config may only name your own code"
        )
    if _top(home) != _top(module_name):
        raise ConfigError(
            f"{what} {ref!r} is defined in {home!r}, not in {module_name!r}; name it where it is "
            f"defined ({home}:{getattr(obj, '__qualname__', '?')}) or wrap it in a function of "
            f"your own"
        )


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
        check_user_callable(obj, name, kind)
    elif name in table:
        obj = table[name]
    else:
        raise ConfigError(
            unknown_name(kind, name, table, fix or "or give your own as 'package.module:attr'")
        )
    if not callable(obj):
        raise ConfigError(f"{kind} {name!r} is not callable")
    return obj
