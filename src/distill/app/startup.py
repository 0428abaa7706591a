"""Process start-up of the training commands: the import heap settled before training.

Importing torch, and `torch._dynamo` (which `torch.optim` imports when the first optimizer
is made), creates about a million long-lived objects. Python's cyclic garbage collector
walks all of them at each full collection, and the imports themselves trigger several:
0.6-0.8 s of collections in one `distill run` of the 25-epoch MNIST-1D job, a sixth of the
whole process (measured with `gc.callbacks`, docs/speed.md). A training command therefore
imports the training path once with the collector off, then freezes what the imports made
(`gc.freeze`: those objects live to the end of the process anyway) and turns the collector
back on for the run itself, which collects its own garbage as usual; what remains is
about 4 ms of collections.

This is done by the command line only, never on import of the library: freezing objects a
user's program holds would keep its cyclic garbage from being collected.
"""

from __future__ import annotations

import contextlib
import functools
import gc
from collections.abc import Callable
from typing import Any

_settled = False


def settle_startup() -> None:
    """Import the training path with the collector off and freeze it; once per process."""
    global _settled
    if _settled:
        return
    _settled = True
    enabled = gc.isenabled()
    gc.disable()
    try:
        import distill.app.run  # noqa: F401  (the loop, the tables, torch)

        with contextlib.suppress(ImportError):  # a torch build without it imports nothing
            import torch._dynamo  # noqa: F401  (torch.optim imports it at its first optimizer)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def training_command(fn: Callable[[Any], int]) -> Callable[[Any], int]:
    """A command that trains: its start-up settled first (see the module docstring)."""

    @functools.wraps(fn)
    def command(args: Any) -> int:
        settle_startup()
        return fn(args)

    return command
