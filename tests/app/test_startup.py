"""The training commands' start-up (distill.app.startup): imports with the garbage
collector off, then frozen, once per process; the library itself never touches the GC."""

import gc
import subprocess
import sys

CHILD = r"""
import gc, json, sys
passes = []
gc.callbacks.append(lambda phase, info: phase == "stop" and passes.append(info["generation"]))
import distill
import distill.core.config
library = {"frozen": gc.get_freeze_count(), "enabled": gc.isenabled()}
from distill.app.startup import settle_startup, training_command
before = len(passes)
settle_startup()
after = {"frozen": gc.get_freeze_count(), "enabled": gc.isenabled(),
         "passes_while_importing": len(passes) - before, "torch": "torch" in sys.modules}
frozen = gc.get_freeze_count()
settle_startup()  # once per process
calls = []
print(json.dumps({"library": library, "after": after, "again": gc.get_freeze_count() == frozen,
                  "wrapped": training_command(lambda a: calls.append(a) or 7)("x") == 7 and calls == ["x"]}))
"""


def test_training_start_up_freezes_the_import_heap_once_and_collects_after():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
    import json

    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["library"] == {"frozen": 0, "enabled": True}  # importing distill changes nothing
    after = r["after"]
    assert after["torch"] and after["enabled"]  # the collector is back on for the run
    assert after["frozen"] > 100_000  # torch's objects, out of every later collection
    assert after["passes_while_importing"] == 0
    assert r["again"] and r["wrapped"]
    assert gc.isenabled()


def test_every_training_command_settles_its_start_up():
    from distill.app import commands

    training = {
        "cmd_run", "cmd_demo", "cmd_tune", "cmd_bench", "cmd_compress", "cmd_federated",
        "cmd_lm_demo", "cmd_reasoning_demo", "cmd_interpret",
    }  # fmt: skip
    for name in training:
        fn = getattr(commands, name)
        assert fn.__wrapped__ is not None and fn.__module__ == "distill.app.commands", name
    light = {"cmd_methods", "cmd_schemes", "cmd_datasets", "cmd_validate", "cmd_layers"}
    for name in light:
        assert not hasattr(getattr(commands, name), "__wrapped__"), name
