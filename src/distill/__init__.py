"""distill: knowledge distillation for PyTorch.

The Python API mirrors the YAML configs: build a teacher and a student, an `Objective`
of `Term`s over their logits or tapped layers, a scheme, and hand it to the `Trainer`.
"""

from distill.checkpoint import load_checkpoint, load_weights, save_checkpoint, save_weights
from distill.config import ExperimentConfig, load_config
from distill.data import ArrayDataset, DataSplits, load_dataset
from distill.errors import CheckpointError, ConfigError
from distill.evaluate import agreement, evaluate
from distill.losses import LOSSES, js_loss, kd_loss, mse_loss, reverse_kl_loss, soft_cross_entropy
from distill.models import MODELS, build_model
from distill.objective import Objective, Schedule, Term
from distill.run import run_experiment
from distill.schemes import SCHEMES, OfflineKD, SchemeContext, Supervised, list_schemes
from distill.settings import TrainSettings
from distill.taps import Knowledge, Tap
from distill.trainer import Trainer

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


def __getattr__(name: str):
    """`distill.DistillationTrainer` imports transformers only when it is first used."""
    if name == "DistillationTrainer":
        from distill.llm.hf_trainer import DistillationTrainer

        return DistillationTrainer
    raise AttributeError(f"module 'distill' has no attribute {name!r}")
