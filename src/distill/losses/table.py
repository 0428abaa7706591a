"""The loss table: every loss's config name, family and paper, as data.

It imports nothing of torch or of the loss code: each entry names its function (or
`nn.Module` class, built from the student's and teacher's shapes) as `module:attr`,
imported on first use, so `distill methods` answers at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distill.core.registry import resolve


@dataclass(frozen=True)
class LossSpec:
    target: str  # "module:attr" of the function, or of the nn.Module class
    family: str
    paper: str
    needs_teacher: bool = True  # False: reads only the student (teacher-free KD)
    # teacher-side work a cached teacher can do once per sample (distill.loop.cache)
    prepared_from: str | None = None

    @property
    def fn(self) -> Any:
        return resolve(self.target)

    @property
    def prepared(self) -> Any:
        return resolve(self.prepared_from) if self.prepared_from else None


LOSSES: dict[str, LossSpec] = {
    "kd": LossSpec(
        "distill.losses.response:kd_loss",
        "response",
        "Hinton, Vinyals & Dean 2015, Distilling the Knowledge in a Neural Network",
        prepared_from="distill.losses.response:KD_PREPARED",
    ),
    "soft_ce": LossSpec(
        "distill.losses.response:soft_cross_entropy",
        "response",
        "Hinton, Vinyals & Dean 2015 (cross-entropy form)",
        prepared_from="distill.losses.response:SOFT_CE_PREPARED",
    ),
    "reverse_kl": LossSpec(
        "distill.losses.response:reverse_kl_loss",
        "response",
        "Gu et al. 2024, MiniLLM (reverse KL)",
    ),
    "js": LossSpec(
        "distill.losses.response:js_loss",
        "response",
        "Lin 1991 (Jensen-Shannon); Agarwal et al. 2024, GKD",
    ),
    "mse": LossSpec(
        "distill.losses.response:mse_loss",
        "response/feature",
        "Ba & Caruana 2014 (logits); Romero et al. 2015, FitNets (features)",
    ),
    "dkd": LossSpec(
        "distill.losses.response:dkd_loss",
        "response",
        "Zhao et al. 2022, Decoupled Knowledge Distillation",
    ),
    "ls_kd": LossSpec(
        "distill.losses.response:ls_kd_loss",
        "response",
        "Sun et al. 2024, Logit Standardization in Knowledge Distillation",
    ),
    "dist": LossSpec(
        "distill.losses.response:dist_loss",
        "response",
        "Huang et al. 2022, Knowledge Distillation from A Stronger Teacher (DIST)",
    ),
    "skd": LossSpec(
        "distill.losses.logit_recent:skd_loss",
        "response",
        "Jeong, Lee & Choi 2026, Streamlined Knowledge Distillation (SKD: instance + Mahalanobis direction terms)",
    ),
    "ttm": LossSpec(
        "distill.losses.response:ttm_loss",
        "response",
        "Zheng & Yang 2024, Knowledge Distillation Based on Transformed Teacher Matching",
    ),
    "nkd": LossSpec(
        "distill.losses.logit_recent:nkd_loss",
        "response",
        "Yang et al. 2023, From Knowledge Distillation to Self-Knowledge Distillation (NKD)",
    ),
    "wttm": LossSpec(
        "distill.losses.logit_recent:wttm_loss",
        "response",
        "Zheng & Yang 2024, Knowledge Distillation Based on Transformed Teacher Matching (WTTM)",
    ),
    "mlkd": LossSpec(
        "distill.losses.logit_recent:mlkd_loss",
        "response",
        "Jin, Wang & Lin 2023, Multi-Level Logit Distillation (MLKD)",
    ),
    "spherical_kd": LossSpec(
        "distill.losses.logit_recent:spherical_kd_loss",
        "response",
        "Guo et al. 2020, Reducing the Teacher-Student Gap via Spherical Knowledge Distillation",
    ),
    "ctkd": LossSpec(
        "distill.losses.logit_recent:CTKDLoss",
        "response",
        "Li et al. 2023, Curriculum Temperature for Knowledge Distillation (CTKD)",
    ),
    "tf_kd": LossSpec(
        "distill.losses.response:virtual_teacher_loss",
        "response",
        "Yuan et al. 2020, Revisiting KD via Label Smoothing Regularization (Tf-KD)",
        needs_teacher=False,
    ),
    "dist_plus_relation": LossSpec(
        "distill.losses.correlation:dist_plus_relation_loss",
        "feature",
        "Huang et al. 2025, DIST+ (channel and spatial relations of a feature map; with dist on the logits: DIST+)",
    ),
    "rkd_distance": LossSpec(
        "distill.losses.relation:rkd_distance_loss",
        "relation",
        "Park et al. 2019, Relational Knowledge Distillation (distance)",
    ),
    "rkd_angle": LossSpec(
        "distill.losses.relation:rkd_angle_loss",
        "relation",
        "Park et al. 2019, Relational Knowledge Distillation (angle)",
    ),
    "sp": LossSpec(
        "distill.losses.relation:sp_loss",
        "relation",
        "Tung & Mori 2019, Similarity-Preserving Knowledge Distillation",
    ),
    "cc": LossSpec(
        "distill.losses.relation:cc_loss",
        "relation",
        "Peng et al. 2019, Correlation Congruence for Knowledge Distillation",
    ),
    "fsp": LossSpec(
        "distill.losses.relation:fsp_loss",
        "relation",
        "Yim et al. 2017, A Gift from Knowledge Distillation (FSP matrices)",
    ),
    "graph": LossSpec(
        "distill.losses.relation:graph_loss",
        "relation",
        "batch adjacency matching, the surveys' L_graph (Liu et al. 2023)",
    ),
    "lsp": LossSpec(
        "distill.losses.relation:lsp_loss",
        "relation",
        "Yang et al. 2020, Distilling Knowledge from Graph Convolutional Networks (local structure preserving)",
    ),
    "fitnet": LossSpec(
        "distill.losses.response:mse_loss",
        "feature",
        "Romero et al. 2015, FitNets: hints (MSE) through a trained adapter",
    ),
    "at": LossSpec(
        "distill.losses.feature:at_loss",
        "feature",
        "Zagoruyko & Komodakis 2017, Attention Transfer (activation-based)",
    ),
    "grad_at": LossSpec(
        "distill.losses.feature:grad_at_loss",
        "feature",
        "Zagoruyko & Komodakis 2017, Attention Transfer (gradient-based)",
    ),
    "nst": LossSpec(
        "distill.losses.feature:nst_loss",
        "feature",
        "Huang & Wang 2017, Neuron Selectivity Transfer",
    ),
    "pkt": LossSpec(
        "distill.losses.feature:pkt_loss",
        "feature",
        "Passalis & Tefas 2018, Probabilistic Knowledge Transfer",
    ),
    "ft": LossSpec(
        "distill.losses.feature:FactorTransferLoss",
        "feature",
        "Kim et al. 2018, Paraphrasing Complex Network (Factor Transfer)",
    ),
    "vid": LossSpec(
        "distill.losses.feature:VIDLoss",
        "feature",
        "Ahn et al. 2019, Variational Information Distillation",
    ),
    "ab": LossSpec(
        "distill.losses.feature:ab_loss",
        "feature",
        "Heo et al. 2019, Activation Boundaries",
    ),
    "cosine": LossSpec(
        "distill.losses.feature:cosine_loss",
        "feature",
        "Sanh et al. 2019, DistilBERT (cosine hidden-state loss)",
    ),
    "attention_kl": LossSpec(
        "distill.losses.feature:attention_kl_loss",
        "feature",
        "Wang et al. 2020, MiniLM (attention distribution KL)",
    ),
    "minilm_relation": LossSpec(
        "distill.losses.relation:minilm_relation_loss",
        "feature",
        "Wang et al. 2020/2021, MiniLM and MiniLMv2 (self-attention relation transfer)",
    ),
    "infonce": LossSpec(
        "distill.losses.contrastive:InfoNCELoss",
        "contrastive",
        "van den Oord et al. 2018, InfoNCE; in-batch variant of CRD",
    ),
    "crd": LossSpec(
        "distill.losses.contrastive:CRDLoss",
        "contrastive",
        "Tian et al. 2020, Contrastive Representation Distillation (memory bank + NCE)",
    ),
    "seed": LossSpec(
        "distill.losses.contrastive:SEEDLoss",
        "contrastive",
        "Fang et al. 2021, SEED: Self-supervised Distillation (queue similarity)",
    ),
    "alp": LossSpec(
        "distill.losses.feature:LayerAttentionLoss",
        "feature",
        "Passban et al. 2021, ALP-KD: attention over all teacher layers",
    ),
    "afd": LossSpec(
        "distill.losses.feature:AttentionFeatureLoss",
        "feature",
        "Ji, Heo & Park 2021, Show, Attend and Distill (attention-based feature linking)",
    ),
    "mgd": LossSpec(
        "distill.losses.feature:MGDLoss",
        "feature",
        "Yang et al. 2022, Masked Generative Distillation",
    ),
    "cwd": LossSpec(
        "distill.losses.dense:cwd_loss",
        "feature",
        "Shu et al. 2021, Channel-wise Knowledge Distillation for Dense Prediction",
    ),
    "det_cls_kd": LossSpec(
        "distill.losses.dense:det_cls_kd",
        "detection",
        "classification-head KD for sigmoid detectors (binary KL at temperature T; Hinton et al. 2015, Chen et al. 2017)",
    ),
    "det_box_kd": LossSpec(
        "distill.losses.dense:det_box_kd",
        "detection",
        "box-regression distillation to the teacher's boxes (GIoU, Rezatofighi et al. 2019, or L1), where the teacher sees an object",
    ),
    "det_obj_kd": LossSpec(
        "distill.losses.dense:det_obj_kd",
        "detection",
        "objectness / centerness KD (binary KL; Chen et al. 2017)",
    ),
    "fg_imitation": LossSpec(
        "distill.losses.dense:fg_imitation",
        "detection",
        "Wang et al. 2019, Distilling Object Detectors with Fine-grained Feature Imitation",
    ),
    "adaptive_levels": LossSpec(
        "distill.losses.dense:AdaptiveLevelImitation",
        "detection",
        "multi-level feature distillation with learnt level weights (MSFAD-style; Kendall et al. 2018 uncertainty weighting)",
    ),
    "pixel_kd": LossSpec(
        "distill.losses.dense:pixel_kd",
        "segmentation",
        "pixel-wise KD (Liu et al. 2019, Structured KD for Segmentation)",
    ),
    "pairwise_affinity": LossSpec(
        "distill.losses.dense:pairwise_affinity",
        "segmentation",
        "Liu et al. 2019, Structured Knowledge Distillation for Semantic Segmentation (pair-wise)",
    ),
    "cirkd": LossSpec(
        "distill.losses.dense:CIRKDLoss",
        "segmentation",
        "Yang et al. 2022, Cross-Image Relational Knowledge Distillation for Semantic Segmentation",
    ),
    "ofa": LossSpec(
        "distill.losses.feature:OFALoss",
        "feature",
        "Hao et al. 2023, One-for-All KD: features to logit space for heterogeneous pairs",
    ),
    "reviewkd": LossSpec(
        "distill.losses.feature_peers:ReviewKDLoss",
        "feature",
        "Chen et al. 2021, Distilling Knowledge via Knowledge Review",
    ),
    "ofd": LossSpec(
        "distill.losses.feature_peers:ofd_loss",
        "feature",
        "Heo et al. 2019, A Comprehensive Overhaul of Feature Distillation",
    ),
    "srd": LossSpec(
        "distill.losses.feature_peers:srd_loss",
        "feature",
        "Yang et al. 2021, Knowledge Distillation via Softmax Regression Representation Learning",
    ),
    "pad": LossSpec(
        "distill.losses.feature_peers:PADLoss",
        "feature",
        "Zhang et al. 2020, Prime-Aware Adaptive Distillation",
    ),
    "ickd": LossSpec(
        "distill.losses.feature_peers:ickd_loss",
        "feature",
        "Liu et al. 2021, Exploring Inter-Channel Correlation for Diversity-Preserved KD (ICKD)",
    ),
    "kdsvd": LossSpec(
        "distill.losses.feature_peers:kdsvd_loss",
        "feature",
        "Lee, Kim & Song 2018, Self-supervised KD Using Singular Value Decomposition (KD-SVD)",
    ),
    "affinity": LossSpec(
        "distill.losses.feature_peers:affinity_loss",
        "feature",
        "He et al. 2019, Knowledge Adaptation for Efficient Semantic Segmentation (affinity)",
    ),
    "cat_kd": LossSpec(
        "distill.losses.feature_peers:cat_kd_loss",
        "feature",
        "Guo et al. 2023, Class Attention Transfer Based Knowledge Distillation (CAT-KD)",
    ),
    "sdd": LossSpec(
        "distill.losses.feature_peers:sdd_loss",
        "feature",
        "Wei et al. 2024, Scale Decoupled Distillation (SDD)",
    ),
    "wcord": LossSpec(
        "distill.losses.contrastive:WCoRDLoss",
        "contrastive",
        "Chen et al. 2021, Wasserstein Contrastive Representation Distillation",
    ),
}


# The token divergences `lm_kd` and `DistillationTrainer` offer: name -> (the function's name
# in `distill.losses.divergences`, the paper). `distill methods` lists them with the losses.
DIVERGENCES: dict[str, tuple[str, str]] = {
    "forward_kl": ("forward_kl", "Hinton et al. 2015 / Kim & Rush 2016 (token-level KD)"),
    "reverse_kl": ("reverse_kl", "Gu et al. 2024, MiniLLM (reverse KL)"),
    "jsd": (
        "generalized_jsd",
        "Agarwal et al. 2024, On-Policy Distillation (GKD), generalized JSD",
    ),
    "skew_kl": ("skew_forward_kl", "Ko et al. 2024, DistiLLM (skew KL)"),
    "skew_reverse_kl": ("skew_reverse_kl", "Ko et al. 2024, DistiLLM (skew reverse KL)"),
    "tv": ("total_variation", "Wen et al. 2023, f-Divergence Minimization (total variation)"),
}
