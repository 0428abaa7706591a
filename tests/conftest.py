import sys
from pathlib import Path

import pytest
import torch

# tests/ on the import path for the test modules in its sub-folders (helpers, fault_losses)
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    # Generated datasets go to a per-session temp dir, never the user's cache.
    mp = pytest.MonkeyPatch()
    mp.setenv("DISTILL_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)  # tiny models: threads only add noise on 2 cores
