"""Distillation losses: pure functions of tensors, named in one table.

`LOSSES` (`distill.losses.table`) maps the name used in configs to a `LossSpec` (where the
function is, its family and the paper that defines it). A `package.module:attr` string in a
config reaches user losses. The functions are imported from their family's module when
first used: importing this package imports neither torch nor any loss.
"""

from __future__ import annotations

from distill.core.registry import lazy_exports
from distill.losses.table import LOSSES, LossSpec

_HOME = {
    "AdaptiveLevelImitation": "distill.losses.dense",
    "AttentionFeatureLoss": "distill.losses.feature",
    "CIRKDLoss": "distill.losses.dense",
    "CRDLoss": "distill.losses.contrastive",
    "CTKDLoss": "distill.losses.logit_recent",
    "FactorTransferLoss": "distill.losses.feature",
    "InfoNCELoss": "distill.losses.contrastive",
    "KD_PREPARED": "distill.losses.response",
    "LayerAttentionLoss": "distill.losses.feature",
    "MGDLoss": "distill.losses.feature",
    "OFALoss": "distill.losses.feature",
    "PADLoss": "distill.losses.feature_peers",
    "PreparedTeacher": "distill.losses.response",
    "ReviewKDLoss": "distill.losses.feature_peers",
    "SEEDLoss": "distill.losses.contrastive",
    "SOFT_CE_PREPARED": "distill.losses.response",
    "VIDLoss": "distill.losses.feature",
    "WCoRDLoss": "distill.losses.contrastive",
    "ab_loss": "distill.losses.feature",
    "affinity_loss": "distill.losses.feature_peers",
    "at_loss": "distill.losses.feature",
    "attention_kl_loss": "distill.losses.feature",
    "cat_kd_loss": "distill.losses.feature_peers",
    "cc_loss": "distill.losses.relation",
    "cosine_loss": "distill.losses.feature",
    "cwd_loss": "distill.losses.dense",
    "det_box_kd": "distill.losses.dense",
    "det_cls_kd": "distill.losses.dense",
    "det_obj_kd": "distill.losses.dense",
    "dist_loss": "distill.losses.response",
    "dist_plus_channel_relation": "distill.losses.correlation",
    "dist_plus_loss": "distill.losses.correlation",
    "dist_plus_relation_loss": "distill.losses.correlation",
    "dist_plus_spatial_relation": "distill.losses.correlation",
    "dkd_loss": "distill.losses.response",
    "fg_imitation": "distill.losses.dense",
    "fsp_loss": "distill.losses.relation",
    "grad_at_loss": "distill.losses.feature",
    "graph_loss": "distill.losses.relation",
    "ickd_loss": "distill.losses.feature_peers",
    "js_loss": "distill.losses.response",
    "kd_loss": "distill.losses.response",
    "kdsvd_loss": "distill.losses.feature_peers",
    "ls_kd_loss": "distill.losses.response",
    "lsp_loss": "distill.losses.relation",
    "minilm_relation_loss": "distill.losses.relation",
    "mlkd_loss": "distill.losses.logit_recent",
    "mse_loss": "distill.losses.response",
    "nkd_loss": "distill.losses.logit_recent",
    "nst_loss": "distill.losses.feature",
    "ofd_loss": "distill.losses.feature_peers",
    "pairwise_affinity": "distill.losses.dense",
    "pearson_distance": "distill.losses.response",
    "pixel_kd": "distill.losses.dense",
    "pkt_loss": "distill.losses.feature",
    "reverse_kl_loss": "distill.losses.response",
    "rkd_angle_loss": "distill.losses.relation",
    "rkd_distance_loss": "distill.losses.relation",
    "sdd_loss": "distill.losses.feature_peers",
    "skd_direction_loss": "distill.losses.logit_recent",
    "skd_instance_loss": "distill.losses.logit_recent",
    "skd_loss": "distill.losses.logit_recent",
    "soft_cross_entropy": "distill.losses.response",
    "sp_loss": "distill.losses.relation",
    "spherical_kd_loss": "distill.losses.logit_recent",
    "srd_loss": "distill.losses.feature_peers",
    "ttm_loss": "distill.losses.response",
    "virtual_teacher_loss": "distill.losses.response",
    "wttm_loss": "distill.losses.logit_recent",
}


__getattr__ = lazy_exports(__name__, _HOME)


__all__ = ["LOSSES", "LossSpec", *sorted(_HOME)]
