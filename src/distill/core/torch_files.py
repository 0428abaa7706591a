"""State dicts saved with `torch.save`, read without running code: `torch.load` with
`weights_only=True`, the state dict found where training scripts commonly nest it, and
anything that needs Python objects refused with the fix (distill's own files are
safetensors; these are the user's)."""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import torch
from torch import Tensor

from distill.core.errors import CheckpointError


def is_torch_file(head: bytes) -> bool:
    """True for a torch.save file: a zip archive (PyTorch >= 1.6) or a bare pickle stream
    (protocol 2-5). A safetensors file starts with its header's length, then '{'."""
    if head[8:9] == b"{":
        return False
    return head.startswith(b"PK\x03\x04") or (
        head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"
    )


# where training scripts commonly nest the state dict inside a saved dict
_NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model", "module", "student", "net")


def load_torch_state(path: Path) -> dict[str, Tensor]:
    """A plain state dict from a `torch.save` file, refusing anything that needs objects."""
    import pickle

    try:
        with warnings.catch_warnings():  # (protocol notes of the weights-only unpickler)
            warnings.simplefilter("ignore")
            with open(path, "rb") as f:  # (a file object: torch.load guesses by suffix)
                obj = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f"it needs the Python object {found.group(1)}" if found else "it needs objects"
        raise CheckpointError(
            f"{str(path)!r} is not a readable safetensors file but a torch.save (pickle) file "
            f"that holds Python objects, not only tensors ({what}; refused, nothing ran). "
            f"distill reads torch.save files with weights_only=True so that no code runs; save "
            f"the state dict instead: torch.save(model.state_dict(), path), or as safetensors"
        ) from None
    except Exception as e:  # a truncated zip, a broken pickle stream
        raise CheckpointError(
            f"{str(path)!r} looks like a torch.save file but cannot be read "
            f"({type(e).__name__}: {str(e).splitlines()[0][:160]}); it may be truncated"
        ) from None
    state, where = obj, ""
    if isinstance(obj, dict) and not _is_state(obj):
        for key in _NESTED_STATE_KEYS:
            if isinstance(obj.get(key), dict) and _is_state(obj[key]):
                state, where = obj[key], f" under its key {key!r}"
                break
    if not isinstance(state, dict) or not _is_state(state):
        keys = list(obj)[:8] if isinstance(obj, dict) else []
        raise CheckpointError(
            f"{str(path)!r} is a torch.save file holding a {type(obj).__name__}"
            f"{' with keys ' + str(keys) if keys else ''}, not a state dict (names -> tensors); "
            f"save model.state_dict() instead"
        )
    if state and all(k.startswith("module.") for k in state):  # saved from DDP
        state, where = {k[len("module.") :]: v for k, v in state.items()}, where + ", 'module.' cut"
    print(
        f"note: {str(path)!r} is a torch.save file; loaded its state dict{where} with "
        f"torch.load(weights_only=True) (no code ran)",
        file=sys.stderr,
    )
    return dict(state)


def _is_state(obj: dict) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
