"""distill: knowledge distillation for PyTorch.

The Python API mirrors the YAML configs: build a teacher and a student, an `Objective`
of `Term`s over their logits or tapped layers, a scheme, and hand it to the `Trainer`.

The package is built in five layers; the layer packages (`core`, `loop`, `app`) are folders
of one layer, while a domain (`llm`, `compress`, `dense`, `paradigms`) is a vertical slice
whose modules sit in the layers their work needs (each module's layer is listed in
`tests/test_layers.py`). A module imports only
from its own layer or those below it, and no import cycle exists (both checked on the
import graph, function-level imports included, by `tests/test_layers.py`):

1. **foundation** (`distill.core`): errors, settings and config, checkpoint files and
   their background writer, run dirs, logs and trackers, the distributed helpers, the registry; with the tables that name
   every loss, scheme and divergence as data (`losses.table`, `schemes.table`: torch-free);
2. **knowledge**: the losses, taps and the objective, the models (`models`, whose table
   names the domains' models as `module:attr`), the data layer (`data`, whose table names
   the domains' datasets the same way), metrics and evaluation, compression ops;
3. **schemes and domains**: every scheme (`schemes`) and the domains that bring their own
   schemes, data and models (`llm`, with sentence embeddings in `llm.embed` and masked LMs
   in `llm.mlm`; `dense`, `diffusion`, `paradigms`);
4. **loop** (`distill.loop`): the `Trainer` (it reads a scheme only through
   `schemes.contract`) and its parts (optimizer and schedule, random state, non-finite
   guard, batch feed, placement, checkpoints written on a background thread, validation,
   progress), and the teacher cache;
5. **app** (`distill.app`): `build` (the objects a config names), `validate`, `run` and
   `stages`, the CLI and its commands (demos, bench, tune, eval, export, report; the
   training ones start through `app.startup`); with the pipelines of `compress` and
   `paradigms` (federated, interpret, lifelong).

A domain plugs in by an entry in a registry table (`"module:attr"`, imported by name on
first use), so the lower layers never import it. The registries are `losses.table`,
`schemes.table`, `models` and `data.sources`; their entries may name any layer,
and `tests/test_layers.py` checks that each one names a module that defines it, and that
no "module:attr" string outside them points to a higher layer.
"""

from distill.core.registry import lazy_exports

# Each public name and the module it lives in. They are imported on first use (PEP 562),
# so `import distill` and the CLI's `--help` do not import torch and every domain.
_EXPORTS = {
    "load_checkpoint": "distill.core.checkpoint",
    "load_weights": "distill.core.checkpoint",
    "save_checkpoint": "distill.core.checkpoint",
    "save_weights": "distill.core.checkpoint",
    "ExperimentConfig": "distill.core.config",
    "load_config": "distill.core.config",
    "ArrayDataset": "distill.data",
    "DataSplits": "distill.data",
    "load_dataset": "distill.data",
    "CheckpointError": "distill.core.errors",
    "ConfigError": "distill.core.errors",
    "agreement": "distill.evaluate",
    "evaluate": "distill.evaluate",
    "LOSSES": "distill.losses",
    "js_loss": "distill.losses",
    "kd_loss": "distill.losses",
    "mse_loss": "distill.losses",
    "reverse_kl_loss": "distill.losses",
    "soft_cross_entropy": "distill.losses",
    "MODELS": "distill.models",
    "build_model": "distill.models",
    "Objective": "distill.objective",
    "Schedule": "distill.objective",
    "Term": "distill.objective",
    "run_experiment": "distill.app.run",
    "SCHEMES": "distill.schemes",
    "OfflineKD": "distill.schemes",
    "SchemeContext": "distill.schemes",
    "Supervised": "distill.schemes",
    "list_schemes": "distill.schemes",
    "TrainSettings": "distill.core.settings",
    "Knowledge": "distill.taps",
    "Tap": "distill.taps",
    "Trainer": "distill.loop.trainer",
    "DistillationTrainer": "distill.llm.hf_trainer",  # imports transformers
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__version__ = "0.1.0"

__all__ = [
    "LOSSES",
    "MODELS",
    "SCHEMES",
    "ArrayDataset",
    "CheckpointError",
    "ConfigError",
    "DataSplits",
    "ExperimentConfig",
    "Knowledge",
    "Objective",
    "OfflineKD",
    "SchemeContext",
    "list_schemes",
    "Supervised",
    "Tap",
    "Term",
    "TrainSettings",
    "Trainer",
    "Schedule",
    "agreement",
    "build_model",
    "evaluate",
    "js_loss",
    "kd_loss",
    "load_checkpoint",
    "load_config",
    "load_dataset",
    "load_weights",
    "mse_loss",
    "reverse_kl_loss",
    "run_experiment",
    "save_checkpoint",
    "save_weights",
    "soft_cross_entropy",
]
