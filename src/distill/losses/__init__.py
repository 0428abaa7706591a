"""Distillation losses: pure functions of tensors, named in one table.

`LOSSES` maps the name used in configs to a `LossSpec` (the function, its family and the
paper that defines it). A `package.module:attr` string in a config reaches user losses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from distill.losses.contrastive import CRDLoss, InfoNCELoss, SEEDLoss, WCoRDLoss
from distill.losses.dense import (
    AdaptiveLevelImitation,
    CIRKDLoss,
    cwd_loss,
    det_box_kd,
    det_cls_kd,
    det_obj_kd,
    fg_imitation,
    pairwise_affinity,
    pixel_kd,
)
from distill.losses.feature import (
    AttentionFeatureLoss,
    FactorTransferLoss,
    LayerAttentionLoss,
    MGDLoss,
    OFALoss,
    VIDLoss,
    ab_loss,
    at_loss,
    attention_kl_loss,
    cosine_loss,
    grad_at_loss,
    minilm_relation_loss,
    nst_loss,
    pkt_loss,
)
from distill.losses.feature_peers import (
    PADLoss,
    ReviewKDLoss,
    affinity_loss,
    cat_kd_loss,
    ickd_loss,
    kdsvd_loss,
    ofd_loss,
    sdd_loss,
    srd_loss,
)
from distill.losses.logit_recent import (
    CTKDLoss,
    mlkd_loss,
    nkd_loss,
    spherical_kd_loss,
    wttm_loss,
)
from distill.losses.relation import (
    cc_loss,
    fsp_loss,
    graph_loss,
    lsp_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    sp_loss,
)
from distill.losses.response import (
    KD_PREPARED,
    SOFT_CE_PREPARED,
    PreparedTeacher,
    dist_loss,
    dkd_loss,
    js_loss,
    kd_loss,
    ls_kd_loss,
    mse_loss,
    reverse_kl_loss,
    soft_cross_entropy,
    ttm_loss,
    virtual_teacher_loss,
)


@dataclass(frozen=True)
class LossSpec:
    fn: Callable[
        ..., Tensor
    ]  # a function, or an nn.Module class built from (student_shape, teacher_shape)
    family: str
    paper: str
    needs_teacher: bool = True  # False: reads only the student (teacher-free KD)
    # teacher-side work a cached teacher can do once per sample (distill.cache)
    prepared: PreparedTeacher | None = None


LOSSES: dict[str, LossSpec] = {
    "kd": LossSpec(
        kd_loss,
        "response",
        "Hinton, Vinyals & Dean 2015, Distilling the Knowledge in a Neural Network",
        prepared=KD_PREPARED,
    ),
    "soft_ce": LossSpec(
        soft_cross_entropy,
        "response",
        "Hinton, Vinyals & Dean 2015 (cross-entropy form)",
        prepared=SOFT_CE_PREPARED,
    ),
    "reverse_kl": LossSpec(reverse_kl_loss, "response", "Gu et al. 2024, MiniLLM (reverse KL)"),
    "js": LossSpec(js_loss, "response", "Lin 1991 (Jensen-Shannon); Agarwal et al. 2024, GKD"),
    "mse": LossSpec(
        mse_loss,
        "response/feature",
        "Ba & Caruana 2014 (logits); Romero et al. 2015, FitNets (features)",
    ),
    "dkd": LossSpec(dkd_loss, "response", "Zhao et al. 2022, Decoupled Knowledge Distillation"),
    "ls_kd": LossSpec(
        ls_kd_loss, "response", "Sun et al. 2024, Logit Standardization in Knowledge Distillation"
    ),
    "dist": LossSpec(
        dist_loss,
        "response",
        "Huang et al. 2022, Knowledge Distillation from A Stronger Teacher (DIST)",
    ),
    "ttm": LossSpec(
        ttm_loss,
        "response",
        "Zheng & Yang 2024, Knowledge Distillation Based on Transformed Teacher Matching",
    ),
    "nkd": LossSpec(
        nkd_loss,
        "response",
        "Yang et al. 2023, From Knowledge Distillation to Self-Knowledge Distillation (NKD)",
    ),
    "wttm": LossSpec(
        wttm_loss,
        "response",
        "Zheng & Yang 2024, Knowledge Distillation Based on Transformed Teacher Matching (WTTM)",
    ),
    "mlkd": LossSpec(
        mlkd_loss, "response", "Jin, Wang & Lin 2023, Multi-Level Logit Distillation (MLKD)"
    ),
    "spherical_kd": LossSpec(
        spherical_kd_loss,
        "response",
        "Guo et al. 2020, Reducing the Teacher-Student Gap via Spherical Knowledge Distillation",
    ),
    "ctkd": LossSpec(
        CTKDLoss,
        "response",
        "Li et al. 2023, Curriculum Temperature for Knowledge Distillation (CTKD)",
    ),
    "tf_kd": LossSpec(
        virtual_teacher_loss,
        "response",
        "Yuan et al. 2020, Revisiting KD via Label Smoothing Regularization (Tf-KD)",
        needs_teacher=False,
    ),
    "rkd_distance": LossSpec(
        rkd_distance_loss,
        "relation",
        "Park et al. 2019, Relational Knowledge Distillation (distance)",
    ),
    "rkd_angle": LossSpec(
        rkd_angle_loss, "relation", "Park et al. 2019, Relational Knowledge Distillation (angle)"
    ),
    "sp": LossSpec(
        sp_loss, "relation", "Tung & Mori 2019, Similarity-Preserving Knowledge Distillation"
    ),
    "cc": LossSpec(
        cc_loss, "relation", "Peng et al. 2019, Correlation Congruence for Knowledge Distillation"
    ),
    "fsp": LossSpec(
        fsp_loss, "relation", "Yim et al. 2017, A Gift from Knowledge Distillation (FSP matrices)"
    ),
    "graph": LossSpec(
        graph_loss, "relation", "batch adjacency matching, the surveys' L_graph (Liu et al. 2023)"
    ),
    "lsp": LossSpec(
        lsp_loss,
        "relation",
        "Yang et al. 2020, Distilling Knowledge from Graph Convolutional Networks (local "
        "structure preserving)",
    ),
    "fitnet": LossSpec(
        mse_loss, "feature", "Romero et al. 2015, FitNets: hints (MSE) through a trained adapter"
    ),
    "at": LossSpec(
        at_loss, "feature", "Zagoruyko & Komodakis 2017, Attention Transfer (activation-based)"
    ),
    "grad_at": LossSpec(
        grad_at_loss, "feature", "Zagoruyko & Komodakis 2017, Attention Transfer (gradient-based)"
    ),
    "nst": LossSpec(nst_loss, "feature", "Huang & Wang 2017, Neuron Selectivity Transfer"),
    "pkt": LossSpec(pkt_loss, "feature", "Passalis & Tefas 2018, Probabilistic Knowledge Transfer"),
    "ft": LossSpec(
        FactorTransferLoss,
        "feature",
        "Kim et al. 2018, Paraphrasing Complex Network (Factor Transfer)",
    ),
    "vid": LossSpec(VIDLoss, "feature", "Ahn et al. 2019, Variational Information Distillation"),
    "ab": LossSpec(ab_loss, "feature", "Heo et al. 2019, Activation Boundaries"),
    "cosine": LossSpec(
        cosine_loss, "feature", "Sanh et al. 2019, DistilBERT (cosine hidden-state loss)"
    ),
    "attention_kl": LossSpec(
        attention_kl_loss, "feature", "Wang et al. 2020, MiniLM (attention distribution KL)"
    ),
    "minilm_relation": LossSpec(
        minilm_relation_loss,
        "feature",
        "Wang et al. 2020/2021, MiniLM and MiniLMv2 (self-attention relation transfer)",
    ),
    "infonce": LossSpec(
        InfoNCELoss, "contrastive", "van den Oord et al. 2018, InfoNCE; in-batch variant of CRD"
    ),
    "crd": LossSpec(
        CRDLoss,
        "contrastive",
        "Tian et al. 2020, Contrastive Representation Distillation (memory bank + NCE)",
    ),
    "seed": LossSpec(
        SEEDLoss,
        "contrastive",
        "Fang et al. 2021, SEED: Self-supervised Distillation (queue similarity)",
    ),
    "alp": LossSpec(
        LayerAttentionLoss,
        "feature",
        "Passban et al. 2021, ALP-KD: attention over all teacher layers",
    ),
    "afd": LossSpec(
        AttentionFeatureLoss,
        "feature",
        "Ji, Heo & Park 2021, Show, Attend and Distill (attention-based feature linking)",
    ),
    "mgd": LossSpec(MGDLoss, "feature", "Yang et al. 2022, Masked Generative Distillation"),
    "cwd": LossSpec(
        cwd_loss,
        "feature",
        "Shu et al. 2021, Channel-wise Knowledge Distillation for Dense Prediction",
    ),
    "det_cls_kd": LossSpec(
        det_cls_kd,
        "detection",
        "classification-head KD for sigmoid detectors (binary KL at temperature T; Hinton et "
        "al. 2015, Chen et al. 2017)",
    ),
    "det_box_kd": LossSpec(
        det_box_kd,
        "detection",
        "box-regression distillation to the teacher's boxes (GIoU, Rezatofighi et al. 2019, or "
        "L1), where the teacher sees an object",
    ),
    "det_obj_kd": LossSpec(
        det_obj_kd, "detection", "objectness / centerness KD (binary KL; Chen et al. 2017)"
    ),
    "fg_imitation": LossSpec(
        fg_imitation,
        "detection",
        "Wang et al. 2019, Distilling Object Detectors with Fine-grained Feature Imitation",
    ),
    "adaptive_levels": LossSpec(
        AdaptiveLevelImitation,
        "detection",
        "multi-level feature distillation with learnt level weights (MSFAD-style; Kendall et "
        "al. 2018 uncertainty weighting)",
    ),
    "pixel_kd": LossSpec(
        pixel_kd, "segmentation", "pixel-wise KD (Liu et al. 2019, Structured KD for Segmentation)"
    ),
    "pairwise_affinity": LossSpec(
        pairwise_affinity,
        "segmentation",
        "Liu et al. 2019, Structured Knowledge Distillation for Semantic Segmentation (pair-wise)",
    ),
    "cirkd": LossSpec(
        CIRKDLoss,
        "segmentation",
        "Yang et al. 2022, Cross-Image Relational Knowledge Distillation for Semantic Segmentation",
    ),
    "ofa": LossSpec(
        OFALoss,
        "feature",
        "Hao et al. 2023, One-for-All KD: features to logit space for heterogeneous pairs",
    ),
    "reviewkd": LossSpec(
        ReviewKDLoss, "feature", "Chen et al. 2021, Distilling Knowledge via Knowledge Review"
    ),
    "ofd": LossSpec(
        ofd_loss, "feature", "Heo et al. 2019, A Comprehensive Overhaul of Feature Distillation"
    ),
    "srd": LossSpec(
        srd_loss,
        "feature",
        "Yang et al. 2021, Knowledge Distillation via Softmax Regression Representation Learning",
    ),
    "pad": LossSpec(PADLoss, "feature", "Zhang et al. 2020, Prime-Aware Adaptive Distillation"),
    "ickd": LossSpec(
        ickd_loss,
        "feature",
        "Liu et al. 2021, Exploring Inter-Channel Correlation for Diversity-Preserved KD (ICKD)",
    ),
    "kdsvd": LossSpec(
        kdsvd_loss,
        "feature",
        "Lee, Kim & Song 2018, Self-supervised KD Using Singular Value Decomposition (KD-SVD)",
    ),
    "affinity": LossSpec(
        affinity_loss,
        "feature",
        "He et al. 2019, Knowledge Adaptation for Efficient Semantic Segmentation (affinity)",
    ),
    "cat_kd": LossSpec(
        cat_kd_loss,
        "feature",
        "Guo et al. 2023, Class Attention Transfer Based Knowledge Distillation (CAT-KD)",
    ),
    "sdd": LossSpec(sdd_loss, "feature", "Wei et al. 2024, Scale Decoupled Distillation (SDD)"),
    "wcord": LossSpec(
        WCoRDLoss,
        "contrastive",
        "Chen et al. 2021, Wasserstein Contrastive Representation Distillation",
    ),
}

__all__ = [
    "LOSSES",
    "AdaptiveLevelImitation",
    "CIRKDLoss",
    "cwd_loss",
    "det_box_kd",
    "det_cls_kd",
    "det_obj_kd",
    "fg_imitation",
    "pairwise_affinity",
    "pixel_kd",
    "AttentionFeatureLoss",
    "CRDLoss",
    "PADLoss",
    "ReviewKDLoss",
    "affinity_loss",
    "cat_kd_loss",
    "ickd_loss",
    "kdsvd_loss",
    "ofd_loss",
    "sdd_loss",
    "srd_loss",
    "CTKDLoss",
    "InfoNCELoss",
    "SEEDLoss",
    "WCoRDLoss",
    "FactorTransferLoss",
    "LayerAttentionLoss",
    "OFALoss",
    "VIDLoss",
    "ab_loss",
    "at_loss",
    "attention_kl_loss",
    "minilm_relation_loss",
    "cosine_loss",
    "grad_at_loss",
    "nst_loss",
    "pkt_loss",
    "cc_loss",
    "fsp_loss",
    "graph_loss",
    "lsp_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "sp_loss",
    "dist_loss",
    "mlkd_loss",
    "nkd_loss",
    "spherical_kd_loss",
    "wttm_loss",
    "dkd_loss",
    "ls_kd_loss",
    "ttm_loss",
    "virtual_teacher_loss",
    "LossSpec",
    "PreparedTeacher",
    "js_loss",
    "kd_loss",
    "mse_loss",
    "reverse_kl_loss",
    "soft_cross_entropy",
]
