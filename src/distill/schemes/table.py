"""The scheme table: every scheme's name, paper and capabilities, as data.

This module imports nothing of torch or of the schemes: a spec names its builder and its
arguments model as `module:attr` strings, resolved on first use, so `distill schemes`
answers at once, and the loop, the data layer and the domains (LLM, embeddings, dense
prediction, diffusion) never import each other through this table.

The capabilities are what `build`, `validate`, the teacher cache and the stages read, so
that no scheme is known there by its name:

- `teacher`: what the config's teacher section means (none, required, optional, teachers);
- `taps_teacher`: `objective.terms` read the frozen teacher through taps (sized by a dry
  forward of both models), and the scheme runs them;
- `teacher_terms`: `objective.terms` may hold terms that read a teacher;
- `takes_peers`: a `peers:` list gives the online peers;
- `paired_data`: works with `data.paired` (the teacher reads another modality);
- `cacheable`: the teacher's outputs may be cached ahead of training (`distill.cache`);
- `teacher_for_metrics`: a teacher section is allowed although the scheme trains without
  one (its test accuracy and agreement are then reported);
- `monitors`: the `train.monitor` values its validation reports;
- `predicts_classes`: the student outputs class logits (not embeddings, images or boxes);
- `pipeline_args`, `pipeline`: a pipeline scheme (it runs as stages, `builder` is None):
  its typed arguments, and the object that makes its stages (`stages(cfg, base, stage_dir,
  trained)`, `after_stage(cfg, index, stage)`, `summary(cfg, stages, results)`; see
  `distill.stages.Pipeline`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from distill.registry import resolve

TeacherUse = Literal["none", "required", "optional", "teachers"]


@dataclass(frozen=True)
class SchemeSpec:
    """How a config name maps to a scheme: its paper, its capabilities and where its code
    is. `build` (a callable taking a `SchemeContext`) is None for pipeline schemes."""

    family: str
    paper: str
    teacher: TeacherUse
    builder: str | None = None  # "module:attr" of the callable taking a SchemeContext
    args_from: str | None = None  # "module:attr" of its typed arguments (a Strict model)
    pipeline_args: str | None = None  # a pipeline scheme's arguments
    pipeline: str | None = None  # "module:attr" of the object that makes its stages
    arg_names: tuple[str, ...] = ()  # for `distill schemes` (checked against args_from)
    taps_teacher: bool = False
    teacher_terms: bool = False
    takes_peers: bool = False
    paired_data: bool = False
    cacheable: bool = False
    teacher_for_metrics: bool = False
    monitors: tuple[str, ...] = ("acc", "nll")
    predicts_classes: bool = True

    @property
    def build(self) -> Any:
        return resolve(self.builder) if self.builder else None

    @property
    def args(self) -> type | None:
        return resolve(self.args_from) if self.args_from else None

    @property
    def is_pipeline(self) -> bool:
        return self.builder is None

    @property
    def stages(self) -> Any:
        return resolve(self.pipeline) if self.pipeline else None


SCHEMES: dict[str, SchemeSpec] = {
    "supervised": SchemeSpec(
        "baseline",
        "standard supervised training (no distillation)",
        "none",
        builder="distill.schemes.supervised:Supervised.from_context",
        arg_names=(),
        paired_data=True,
        teacher_for_metrics=True,
    ),
    "offline": SchemeSpec(
        "offline",
        "Hinton, Vinyals & Dean 2015, Distilling the Knowledge in a Neural Network",
        "required",
        builder="distill.schemes.offline:OfflineKD.from_context",
        arg_names=(),
        taps_teacher=True,
        teacher_terms=True,
        paired_data=True,
        cacheable=True,
    ),
    "sskd": SchemeSpec(
        "offline",
        "Xu et al. 2020, Knowledge Distillation Meets Self-Supervision (SSKD)",
        "required",
        builder="distill.schemes.sskd:SSKD.from_context",
        args_from="distill.schemes.sskd:SSKDArgs",
        arg_names=(
            "head_steps",
            "kl_temperature",
            "kl_weight",
            "ss_ratio",
            "ss_temperature",
            "ss_weight",
            "student_feature",
            "teacher_feature",
            "tf_ratio",
            "tf_temperature",
            "tf_weight",
        ),
    ),
    "dml": SchemeSpec(
        "online",
        "Zhang et al. 2018, Deep Mutual Learning",
        "optional",
        builder="distill.schemes.online:DeepMutualLearning",
        args_from="distill.schemes.online:DMLArgs",
        arg_names=("kd_weight", "num_peers", "target", "temperature"),
        takes_peers=True,
        paired_data=True,
    ),
    "one": SchemeSpec(
        "online",
        "Lan, Zhu & Gong 2018, Knowledge Distillation by On-the-Fly Native Ensemble",
        "none",
        builder="distill.schemes.online:OnTheFlyNativeEnsemble",
        args_from="distill.schemes.online:ONEArgs",
        arg_names=("branches", "kd_weight", "shared", "temperature"),
    ),
    "okddip": SchemeSpec(
        "online",
        "Chen et al. 2020, Online Knowledge Distillation with Diverse Peers",
        "optional",
        builder="distill.schemes.online:OKDDip",
        args_from="distill.schemes.online:OKDDipArgs",
        arg_names=("feature", "kd_weight", "leader_weight", "num_peers", "proj_dim", "temperature"),
        takes_peers=True,
    ),
    "ffl": SchemeSpec(
        "online",
        "Kim et al. 2021, Feature Fusion for Online Mutual Knowledge Distillation",
        "optional",
        builder="distill.schemes.online:FeatureFusionLearning",
        args_from="distill.schemes.online:FFLArgs",
        arg_names=("kd_weight", "layer", "num_peers", "temperature"),
        takes_peers=True,
    ),
    "byot": SchemeSpec(
        "self",
        "Zhang et al. 2019, Be Your Own Teacher",
        "none",
        builder="distill.schemes.self_kd:BYOT",
        args_from="distill.schemes.self_kd:BYOTArgs",
        arg_names=("feature", "feature_weight", "heads", "kd_weight", "temperature"),
    ),
    "pskd": SchemeSpec(
        "self",
        "Kim et al. 2021, Self-Knowledge Distillation with Progressive Refinement of Targets",
        "none",
        builder="distill.schemes.self_kd:ProgressiveSelfKD",
        args_from="distill.schemes.self_kd:PSKDArgs",
        arg_names=("alpha_final",),
    ),
    "mean_teacher": SchemeSpec(
        "self",
        "Tarvainen & Valpola 2017, Mean teachers are better role models (EMA teacher)",
        "none",
        builder="distill.schemes.consistency:MeanTeacher",
        args_from="distill.schemes.consistency:MeanTeacherArgs",
        arg_names=("consistency", "decay", "evaluate", "rampup_steps", "temperature", "weight"),
    ),
    "temporal_ensembling": SchemeSpec(
        "self",
        "Laine & Aila 2017, Temporal Ensembling for Semi-Supervised Learning",
        "none",
        builder="distill.schemes.consistency:TemporalEnsembling",
        args_from="distill.schemes.consistency:TemporalEnsemblingArgs",
        arg_names=("momentum", "rampup_steps", "weight"),
    ),
    "consistency": SchemeSpec(
        "self",
        "clean-to-augmented self-distillation (consistency training, Xie et al. 2020)",
        "none",
        builder="distill.schemes.consistency:CleanToAugmented",
        args_from="distill.schemes.consistency:ConsistencyArgs",
        arg_names=("temperature", "weight"),
    ),
    "cskd": SchemeSpec(
        "self",
        "Yun et al. 2020, Regularizing Class-wise Predictions via Self-knowledge Distillation",
        "none",
        builder="distill.schemes.self_kd:ClassWiseSelfKD",
        args_from="distill.schemes.self_kd:CSKDArgs",
        arg_names=("temperature", "weight"),
    ),
    "bake": SchemeSpec(
        "self",
        "Ge et al. 2021, Self-Distillation with Batch Knowledge Ensembling",
        "none",
        builder="distill.schemes.self_kd:BAKE",
        args_from="distill.schemes.self_kd:BAKEArgs",
        arg_names=("feature", "omega", "tau", "temperature", "weight"),
    ),
    "speq": SchemeSpec(
        "quantized",
        "Boo et al. 2021, Stochastic Precision Ensemble: Self-Knowledge Distillation for Quantized Deep Neural Networks",
        "none",
        builder="distill.schemes.quantized:SPEQ",
        args_from="distill.schemes.quantized:SPEQArgs",
        arg_names=("prob", "temperature", "weight"),
    ),
    "qkd": SchemeSpec(
        "quantized",
        "Kim et al. 2019, QKD: Quantization-aware Knowledge Distillation",
        "required",
        builder="distill.schemes.quantized:QKD",
        args_from="distill.schemes.quantized:QKDArgs",
        arg_names=("co_study", "self_study", "teacher_lr_scale", "temperature", "weight"),
    ),
    "ddpm": SchemeSpec(
        "diffusion",
        "Ho et al. 2020, Denoising Diffusion Probabilistic Models (v-prediction, Salimans & Ho 2022)",
        "none",
        builder="distill.schemes.diffusion:DDPM",
        args_from="distill.schemes.diffusion:DDPMArgs",
        arg_names=("eval_samples", "rescale", "sample_steps"),
        monitors=("nll",),
        predicts_classes=False,
    ),
    "progressive": SchemeSpec(
        "diffusion",
        "Salimans & Ho 2022, Progressive Distillation for Fast Sampling of Diffusion Models",
        "required",
        builder="distill.schemes.diffusion:Progressive",
        args_from="distill.schemes.diffusion:ProgressiveArgs",
        arg_names=("eval_samples", "rescale", "sample_steps", "teacher_steps"),
        monitors=("nll",),
        predicts_classes=False,
    ),
    "dkdm": SchemeSpec(
        "diffusion",
        "Xiang et al. 2024, DKDM: Data-Free Knowledge Distillation for Diffusion Models",
        "required",
        builder="distill.schemes.diffusion:DKDM",
        args_from="distill.schemes.diffusion:DKDMArgs",
        arg_names=(
            "eval_samples",
            "pool",
            "rescale",
            "sample_steps",
            "student_steps",
            "teacher_steps",
        ),
        monitors=("nll",),
        predicts_classes=False,
    ),
    "sd_dropout": SchemeSpec(
        "self",
        "Lee et al. 2023, Self-Knowledge Distillation via Dropout",
        "none",
        builder="distill.schemes.self_kd:SDDropout",
        args_from="distill.schemes.self_kd:SDDropoutArgs",
        arg_names=("classifier", "feature", "rate", "temperature", "weight"),
    ),
    "uskd": SchemeSpec(
        "self",
        "Yang et al. 2023, From Knowledge Distillation to Self-Knowledge Distillation (USKD)",
        "none",
        builder="distill.schemes.self_kd:USKD",
        args_from="distill.schemes.self_kd:USKDArgs",
        arg_names=("alpha", "beta", "feature", "mu"),
    ),
    "dtskd": SchemeSpec(
        "self",
        "Li et al. 2024, Dual Teachers for Self-Knowledge Distillation",
        "none",
        builder="distill.schemes.self_kd:DualTeacherSelfKD",
        args_from="distill.schemes.self_kd:DTSKDArgs",
        arg_names=("history_weight", "layers", "structure_weight", "temperature"),
    ),
    "multi_teacher": SchemeSpec(
        "multi-teacher",
        "Hinton et al. 2015; You et al. 2017; Zhang et al. 2022 (CA-MKD); Yang et al. 2025 (MTKD-RL)",
        "teachers",
        builder="distill.schemes.multi_teacher:MultiTeacher",
        args_from="distill.schemes.multi_teacher:MultiTeacherArgs",
        arg_names=(
            "feature",
            "gate_hidden",
            "kd_weight",
            "rl_momentum",
            "tau",
            "temperature",
            "validation_steps",
            "weighting",
        ),
    ),
    "lm_kd": SchemeSpec(
        "llm",
        "token-level KD for causal LMs: forward/reverse KL (Gu et al. 2024), JSD (Agarwal et al. 2024), skew KL (Ko et al. 2024); sequence-level KD (Kim & Rush 2016)",
        "required",
        builder="distill.llm.scheme:LMDistillation",
        args_from="distill.llm.scheme:LMKDArgs",
        arg_names=(
            "alpha",
            "beta",
            "chunk_size",
            "cross_tokenizer",
            "divergence",
            "hidden",
            "kd_weight",
            "on_policy",
            "sequence_level",
            "teacher_cache",
            "temperature",
        ),
    ),
    "embed_kd": SchemeSpec(
        "embedding",
        "Reimers & Gurevych 2020 (embedding MSE); Sanh et al. 2019 (DistilBERT init, cosine); Park et al. 2019 (relations)",
        "required",
        builder="distill.embed:EmbeddingDistillation",
        args_from="distill.embed:EmbedKDArgs",
        arg_names=("cosine_weight", "mse_weight", "relation_weight"),
        predicts_classes=False,
    ),
    "mlm_kd": SchemeSpec(
        "embedding",
        "Sanh et al. 2019, DistilBERT (triple loss); Wang et al. 2020, MiniLM (attention transfer)",
        "optional",
        builder="distill.mlm:MaskedLMDistillation",
        args_from="distill.mlm:MLMArgs",
        arg_names=(
            "attention_weight",
            "cosine_weight",
            "kd_weight",
            "mask_prob",
            "mask_token_id",
            "mlm_weight",
            "relation_heads",
            "relation_weight",
            "relations",
            "student_relation_layer",
            "teacher_relation_layer",
            "temperature",
        ),
        predicts_classes=False,
    ),
    "adversarial": SchemeSpec(
        "adversarial",
        "Wang et al. 2018 (KDGAN), Xu et al. 2018: a discriminator between teacher and student outputs (logits or features)",
        "required",
        builder="distill.schemes.adversarial:AdversarialKD",
        args_from="distill.schemes.adversarial:AdversarialArgs",
        arg_names=(
            "compare",
            "d_weight",
            "hidden",
            "student_layer",
            "teacher_layer",
            "temperature",
            "weight",
        ),
        teacher_terms=True,
    ),
    "ard": SchemeSpec(
        "adversarial",
        "Goldblum et al. 2020, Adversarially Robust Distillation (PGD, Madry et al. 2018)",
        "required",
        builder="distill.schemes.adversarial:build_ard",
        args_from="distill.schemes.adversarial:RobustArgs",
        arg_names=("attack", "clamp", "eps", "kd_weight", "step_size", "steps", "temperature"),
    ),
    "pgd_at": SchemeSpec(
        "adversarial",
        "Madry et al. 2018, PGD adversarial training (the student alone; ARD's baseline)",
        "none",
        builder="distill.schemes.adversarial:build_pgd_at",
        args_from="distill.schemes.adversarial:RobustArgs",
        arg_names=("attack", "clamp", "eps", "kd_weight", "step_size", "steps", "temperature"),
    ),
    "dafl": SchemeSpec(
        "data-free",
        "Chen et al. 2019, Data-Free Learning of Student Networks (generator, teacher as discriminator)",
        "required",
        builder="distill.schemes.data_free:DAFL",
        args_from="distill.schemes.data_free:DAFLArgs",
        arg_names=(
            "activation_weight",
            "generator_every",
            "generator_lr",
            "hidden",
            "info_entropy_weight",
            "latent",
            "layer",
            "one_hot_weight",
            "temperature",
        ),
    ),
    "deep_inversion": SchemeSpec(
        "data-free",
        "Yin et al. 2020, Dreaming to Distill (DeepInversion: BatchNorm-statistic inversion)",
        "required",
        builder="distill.schemes.data_free:DeepInversion",
        args_from="distill.schemes.data_free:DeepInversionArgs",
        arg_names=(
            "bank",
            "bn_weight",
            "chunk",
            "iterations",
            "l2_weight",
            "lr",
            "temperature",
            "tv_weight",
        ),
    ),
    "dfad": SchemeSpec(
        "data-free",
        "Micaelli & Storkey 2019 (ZSKT), Fang et al. 2019 (DFAD): a generator seeks teacher-student disagreement",
        "required",
        builder="distill.schemes.data_free:DFAD",
        args_from="distill.schemes.data_free:DFADArgs",
        arg_names=(
            "divergence",
            "generator_every",
            "generator_lr",
            "hidden",
            "latent",
            "temperature",
        ),
    ),
    "dense": SchemeSpec(
        "dense",
        "object detection (FCOS, Tian et al. 2019) or segmentation, alone or distilled from a teacher through objective.terms (detection and segmentation KD losses)",
        "optional",
        builder="distill.schemes.dense:Dense",
        args_from="distill.schemes.dense:DenseArgs",
        arg_names=(
            "box_weight",
            "ctr_weight",
            "level_split",
            "max_detections",
            "nms_iou",
            "radius",
            "score_threshold",
            "task",
        ),
        taps_teacher=True,
        teacher_terms=True,
        monitors=("map", "miou"),
        predicts_classes=False,
    ),
    "ensemble_kd": SchemeSpec(
        "ensemble",
        "Bucilă, Caruana & Niculescu-Mizil 2006, Model Compression (MUNGE transfer data); Malinin et al. 2020, Ensemble Distribution Distillation",
        "teachers",
        builder="distill.paradigms.ensemble:EnsembleKD",
        args_from="distill.paradigms.ensemble:EnsembleArgs",
        arg_names=(
            "anneal_fraction",
            "anneal_from",
            "kd_weight",
            "munge_p",
            "munge_s",
            "smoothing",
            "synthetic_per_real",
            "target",
            "temperature",
            "transfer",
        ),
    ),
    "lwf": SchemeSpec(
        "lifelong",
        "Li & Hoiem 2016, Learning without Forgetting; Kirkpatrick et al. 2017, Elastic Weight Consolidation (one task of scheme: lifelong)",
        "optional",
        builder="distill.paradigms.lifelong:LwF",
        args_from="distill.paradigms.lifelong:LwFArgs",
        arg_names=(
            "anchors",
            "ewc_weight",
            "lwf_weight",
            "new_classes",
            "old_classes",
            "temperature",
        ),
    ),
    "lifelong": SchemeSpec(
        "pipeline",
        "class-incremental tasks in sequence: LwF (Li & Hoiem 2016) and EWC (Kirkpatrick et al. 2017), against fine-tuning and joint training",
        "none",
        pipeline_args="distill.paradigms.lifelong:LifelongArgs",
        pipeline="distill.paradigms.lifelong:LIFELONG",
        arg_names=("ewc_weight", "fisher_samples", "joint", "lwf_weight", "tasks", "temperature"),
    ),
    "ban": SchemeSpec(
        "pipeline",
        "Furlanello et al. 2018, Born-Again Neural Networks",
        "optional",
        pipeline_args="distill.stages:BANArgs",
        pipeline="distill.stages:BAN",
        arg_names=("ensemble", "generations", "temperature"),
    ),
    "teacher_assistant": SchemeSpec(
        "pipeline",
        "Mirzadeh et al. 2020, Improved Knowledge Distillation via Teacher Assistant",
        "required",
        pipeline_args="distill.stages:TeacherAssistantArgs",
        pipeline="distill.stages:TEACHER_ASSISTANT",
        arg_names=("assistants",),
    ),
}


def with_capability(name: str) -> list[str]:
    """The schemes whose spec has capability `name` set (for messages that list them)."""
    return [k for k, spec in SCHEMES.items() if getattr(spec, name)]


def list_schemes() -> list[dict[str, Any]]:
    """[{'name', 'family', 'paper', 'teacher', 'args'}] for `distill schemes`."""
    return [
        {
            "name": name,
            "family": spec.family,
            "paper": spec.paper,
            "teacher": spec.teacher,
            "args": list(spec.arg_names),
        }
        for name, spec in SCHEMES.items()
    ]
