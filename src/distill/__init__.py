"""distill: knowledge distillation for PyTorch.

The Python API mirrors the YAML configs: build a teacher and a student, an `Objective`
of `Term`s over their logits or tapped layers, a scheme, and hand it to the `Trainer`.

The package is built in five layers; a module imports only from its own layer or those
below it, and no import cycle exists (both checked on the import graph, function-level
imports included, by `tests/test_layers.py`):

1. **foundation**: errors, settings and config, checkpoint files, run dirs, logs and
   trackers, the distributed helpers, and the tables that name every loss, scheme and
   divergence as data (`losses.table`, `schemes.table`, `llm.table`: torch-free);
2. **knowledge**: the losses, taps and the objective, the models (`models`, whose table
   names the domains' models as `module:attr`), the data layer (`data`, whose table names
   the domains' datasets the same way), metrics and evaluation, compression ops;
3. **schemes and domains**: every scheme (`schemes`) and the domains that bring their own
   schemes, data and models (`llm`, `embed`, `mlm`, `dense`, `diffusion`, `paradigms`);
4. **loop**: the `Trainer` (it reads a scheme only through `schemes.contract`), its parts in
   `distill.loop` (optimizer and schedule, random state, non-finite guard, batch feed,
   placement, checkpoints written on a background thread, progress), and the teacher cache;
5. **app**: `build` (the objects a config names), `validate`, `run` and `stages`, the CLI
   and its commands (demos, bench, tune, eval, export, compress, pipelines such as
   lifelong learning and federated distillation).

A domain plugs in by an entry in a table (`"module:attr"`, imported on first use), so the
lower layers never import it.
"""

from distill.registry import lazy_exports

# Each public name and the module it lives in. They are imported on first use (PEP 562),
# so `import distill` and the CLI's `--help` do not import torch and every domain.
_EXPORTS = {
    "load_checkpoint": "distill.checkpoint",
    "load_weights": "distill.checkpoint",
    "save_checkpoint": "distill.checkpoint",
    "save_weights": "distill.checkpoint",
    "ExperimentConfig": "distill.config",
    "load_config": "distill.config",
    "ArrayDataset": "distill.data",
    "DataSplits": "distill.data",
    "load_dataset": "distill.data",
    "CheckpointError": "distill.errors",
    "ConfigError": "distill.errors",
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
    "run_experiment": "distill.run",
    "SCHEMES": "distill.schemes",
    "OfflineKD": "distill.schemes",
    "SchemeContext": "distill.schemes",
    "Supervised": "distill.schemes",
    "list_schemes": "distill.schemes",
    "TrainSettings": "distill.settings",
    "Knowledge": "distill.taps",
    "Tap": "distill.taps",
    "Trainer": "distill.trainer",
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
