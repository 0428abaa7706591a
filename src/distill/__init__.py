"""distill: knowledge distillation for PyTorch.

The Python API mirrors the YAML configs: build a teacher and a student, an `Objective`
of `Term`s over their logits or tapped layers, a scheme, and hand it to the `Trainer`.
"""

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'distill' has no attribute {name!r}")


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
