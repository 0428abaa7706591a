"""Schemes: who teaches whom on each step. A scheme owns models, never a loop.

Every scheme offers the same small surface to the `Trainer`:

- `modules`: an `nn.ModuleDict` of everything it trains (optimised and checkpointed);
- `step(batch, step)`: the named losses for one batch, 'loss' being the one to minimise;
- `eval_model()`: the model to evaluate and export (the student);
- `to(device)` and `train(mode)`, which keep any frozen teacher in eval mode;
- optionally `on_fit_start`, `after_optimizer_step` and `wants_clean` (see `schemes.base`).

`SCHEMES` names every scheme for configs. Step schemes are built from a `SchemeContext`;
pipeline schemes (born-again networks, teacher assistants) expand into a list of stages,
each an ordinary run (see `distill.stages`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor, nn

from distill.embed import EmbeddingDistillation
from distill.llm.scheme import LMDistillation
from distill.mlm import MaskedLMDistillation
from distill.paradigms.ensemble import EnsembleKD
from distill.paradigms.lifelong import LwF
from distill.schemes.adversarial import AdversarialKD, RobustDistillation
from distill.schemes.base import SchemeBase, SchemeContext, parse_args
from distill.schemes.data_free import DAFL, DFAD, DeepInversion
from distill.schemes.dense import Dense
from distill.schemes.diffusion import DDPM, DKDM, Progressive
from distill.schemes.multi_teacher import MultiTeacher
from distill.schemes.offline import OfflineKD
from distill.schemes.online import (
    DeepMutualLearning,
    FeatureFusionLearning,
    OKDDip,
    OnTheFlyNativeEnsemble,
)
from distill.schemes.quantized import QKD, SPEQ
from distill.schemes.self_kd import (
    BAKE,
    BYOT,
    USKD,
    ClassWiseSelfKD,
    CleanToAugmented,
    DualTeacherSelfKD,
    MeanTeacher,
    ProgressiveSelfKD,
    SDDropout,
    TemporalEnsembling,
)
from distill.schemes.sskd import SSKD
from distill.schemes.supervised import Supervised


class Scheme(Protocol):
    modules: nn.ModuleDict

    def step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]: ...

    def eval_model(self) -> nn.Module: ...

    def to(self, device: torch.device) -> Scheme: ...

    def train(self, mode: bool = True) -> None: ...


TeacherUse = Literal["none", "required", "optional", "teachers"]


@dataclass(frozen=True)
class SchemeSpec:
    """How a config name maps to a scheme. `build` is None for pipeline schemes."""

    family: str
    paper: str
    teacher: TeacherUse  # what the config's teacher section means for this scheme
    build: Callable[[SchemeContext], Scheme] | None = None
    args: type | None = None  # the typed arguments, for validation and `distill schemes`


def _spec(family, paper, teacher, cls=None, builder=None) -> SchemeSpec:
    return SchemeSpec(family, paper, teacher, builder or cls, getattr(cls, "Args", None))


SCHEMES: dict[str, SchemeSpec] = {
    "supervised": _spec(
        "baseline",
        "standard supervised training (no distillation)",
        "none",
        builder=Supervised.from_context,
    ),
    "offline": _spec(
        "offline",
        "Hinton, Vinyals & Dean 2015, Distilling the Knowledge in a Neural Network",
        "required",
        builder=OfflineKD.from_context,
    ),
    "sskd": _spec(
        "offline",
        "Xu et al. 2020, Knowledge Distillation Meets Self-Supervision (SSKD)",
        "required",
        SSKD,
        builder=SSKD.from_context,
    ),
    "dml": _spec(
        "online", "Zhang et al. 2018, Deep Mutual Learning", "optional", DeepMutualLearning
    ),
    "one": _spec(
        "online",
        "Lan, Zhu & Gong 2018, Knowledge Distillation by On-the-Fly Native Ensemble",
        "none",
        OnTheFlyNativeEnsemble,
    ),
    "okddip": _spec(
        "online",
        "Chen et al. 2020, Online Knowledge Distillation with Diverse Peers",
        "optional",
        OKDDip,
    ),
    "ffl": _spec(
        "online",
        "Kim et al. 2021, Feature Fusion for Online Mutual Knowledge Distillation",
        "optional",
        FeatureFusionLearning,
    ),
    "byot": _spec("self", "Zhang et al. 2019, Be Your Own Teacher", "none", BYOT),
    "pskd": _spec(
        "self",
        "Kim et al. 2021, Self-Knowledge Distillation with Progressive Refinement of Targets",
        "none",
        ProgressiveSelfKD,
    ),
    "mean_teacher": _spec(
        "self",
        "Tarvainen & Valpola 2017, Mean teachers are better role models (EMA teacher)",
        "none",
        MeanTeacher,
    ),
    "temporal_ensembling": _spec(
        "self",
        "Laine & Aila 2017, Temporal Ensembling for Semi-Supervised Learning",
        "none",
        TemporalEnsembling,
    ),
    "consistency": _spec(
        "self",
        "clean-to-augmented self-distillation (consistency training, Xie et al. 2020)",
        "none",
        CleanToAugmented,
    ),
    "cskd": _spec(
        "self",
        "Yun et al. 2020, Regularizing Class-wise Predictions via Self-knowledge Distillation",
        "none",
        ClassWiseSelfKD,
    ),
    "bake": _spec(
        "self", "Ge et al. 2021, Self-Distillation with Batch Knowledge Ensembling", "none", BAKE
    ),
    "speq": _spec(
        "quantized",
        "Boo et al. 2021, Stochastic Precision Ensemble: Self-Knowledge Distillation for "
        "Quantized Deep Neural Networks",
        "none",
        SPEQ,
    ),
    "qkd": _spec(
        "quantized",
        "Kim et al. 2019, QKD: Quantization-aware Knowledge Distillation",
        "required",
        QKD,
    ),
    "ddpm": _spec(
        "diffusion",
        "Ho et al. 2020, Denoising Diffusion Probabilistic Models (v-prediction, Salimans & Ho 2022)",
        "none",
        DDPM,
    ),
    "progressive": _spec(
        "diffusion",
        "Salimans & Ho 2022, Progressive Distillation for Fast Sampling of Diffusion Models",
        "required",
        Progressive,
    ),
    "dkdm": _spec(
        "diffusion",
        "Xiang et al. 2024, DKDM: Data-Free Knowledge Distillation for Diffusion Models",
        "required",
        DKDM,
    ),
    "sd_dropout": _spec(
        "self", "Lee et al. 2023, Self-Knowledge Distillation via Dropout", "none", SDDropout
    ),
    "uskd": _spec(
        "self",
        "Yang et al. 2023, From Knowledge Distillation to Self-Knowledge Distillation (USKD)",
        "none",
        USKD,
    ),
    "dtskd": _spec(
        "self",
        "Li et al. 2024, Dual Teachers for Self-Knowledge Distillation",
        "none",
        DualTeacherSelfKD,
    ),
    "multi_teacher": _spec(
        "multi-teacher",
        "Hinton et al. 2015; You et al. 2017; Zhang et al. "
        "2022 (CA-MKD); Yang et al. 2025 (MTKD-RL)",
        "teachers",
        MultiTeacher,
    ),
    "lm_kd": _spec(
        "llm",
        "token-level KD for causal LMs: forward/reverse KL (Gu et al. 2024), "
        "JSD (Agarwal et al. 2024), skew KL (Ko et al. 2024); sequence-level KD (Kim & "
        "Rush 2016)",
        "required",
        LMDistillation,
    ),
    "embed_kd": _spec(
        "embedding",
        "Reimers & Gurevych 2020 (embedding MSE); Sanh et al. 2019 "
        "(DistilBERT init, cosine); Park et al. 2019 (relations)",
        "required",
        EmbeddingDistillation,
    ),
    "mlm_kd": _spec(
        "embedding",
        "Sanh et al. 2019, DistilBERT (triple loss); Wang et al. 2020, MiniLM (attention transfer)",
        "optional",
        MaskedLMDistillation,
    ),
    "adversarial": _spec(
        "adversarial",
        "Wang et al. 2018 (KDGAN), Xu et al. 2018: a discriminator between teacher and "
        "student outputs (logits or features)",
        "required",
        AdversarialKD,
    ),
    "ard": SchemeSpec(
        "adversarial",
        "Goldblum et al. 2020, Adversarially Robust Distillation (PGD, Madry et al. 2018)",
        "required",
        lambda ctx: RobustDistillation(ctx, "ard"),
        RobustDistillation.Args,
    ),
    "pgd_at": SchemeSpec(
        "adversarial",
        "Madry et al. 2018, PGD adversarial training (the student alone; ARD's baseline)",
        "none",
        lambda ctx: RobustDistillation(ctx, "pgd_at"),
        RobustDistillation.Args,
    ),
    "dafl": _spec(
        "data-free",
        "Chen et al. 2019, Data-Free Learning of Student Networks (generator, teacher as "
        "discriminator)",
        "required",
        DAFL,
    ),
    "deep_inversion": _spec(
        "data-free",
        "Yin et al. 2020, Dreaming to Distill (DeepInversion: BatchNorm-statistic inversion)",
        "required",
        DeepInversion,
    ),
    "dfad": _spec(
        "data-free",
        "Micaelli & Storkey 2019 (ZSKT), Fang et al. 2019 (DFAD): a generator seeks "
        "teacher-student disagreement",
        "required",
        DFAD,
    ),
    "dense": _spec(
        "dense",
        "object detection (FCOS, Tian et al. 2019) or segmentation, alone or distilled from a "
        "teacher through objective.terms (detection and segmentation KD losses)",
        "optional",
        Dense,
    ),
    "ensemble_kd": _spec(
        "ensemble",
        "Bucilă, Caruana & Niculescu-Mizil 2006, Model Compression (MUNGE transfer data); "
        "Malinin et al. 2020, Ensemble Distribution Distillation",
        "teachers",
        EnsembleKD,
    ),
    "lwf": _spec(
        "lifelong",
        "Li & Hoiem 2016, Learning without Forgetting; Kirkpatrick et al. 2017, Elastic Weight "
        "Consolidation (one task of scheme: lifelong)",
        "optional",
        LwF,
    ),
    "lifelong": SchemeSpec(
        "pipeline",
        "class-incremental tasks in sequence: LwF (Li & Hoiem 2016) and EWC (Kirkpatrick et "
        "al. 2017), against fine-tuning and joint training",
        "none",
    ),
    "ban": SchemeSpec("pipeline", "Furlanello et al. 2018, Born-Again Neural Networks", "optional"),
    "teacher_assistant": SchemeSpec(
        "pipeline",
        "Mirzadeh et al. 2020, Improved Knowledge Distillation via Teacher Assistant",
        "required",
    ),
}


def list_schemes() -> list[dict[str, str]]:
    """[{'name', 'family', 'paper', 'teacher', 'args'}] for `distill schemes`."""
    from distill.stages import PIPELINE_ARGS

    rows = []
    for name, spec in SCHEMES.items():
        args = spec.args or PIPELINE_ARGS.get(name)
        rows.append(
            {
                "name": name,
                "family": spec.family,
                "paper": spec.paper,
                "teacher": spec.teacher,
                "args": sorted(args.model_fields) if args is not None else [],
            }
        )
    return rows


__all__ = [
    "SCHEMES",
    "OfflineKD",
    "Scheme",
    "SchemeBase",
    "SchemeContext",
    "SchemeSpec",
    "Supervised",
    "list_schemes",
    "parse_args",
]
