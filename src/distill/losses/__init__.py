"""Distillation losses: pure functions of tensors, named in one table.

`LOSSES` (`distill.losses.table`) maps the name used in configs to a `LossSpec` (where the
function is, its family and the paper that defines it). A `package.module:attr` string in a
config reaches user losses. The functions are imported from their family's module when
first used: importing this package imports neither torch nor any loss.
"""

from __future__ import annotations

from distill.core.registry import lazy_exports
from distill.losses.table import LOSSES, LossSpec

# Every table entry is exported under its function's (or class's) name, from its module;
# derived from the table, so a new loss needs no second entry here.
_HOME = {spec.target.split(":")[1]: spec.target.split(":")[0] for spec in LOSSES.values()}
# ... and the helpers that are not losses of their own
_HOME.update(
    {
        "KD_PREPARED": "distill.losses.response",
        "PreparedTeacher": "distill.losses.response",
        "SOFT_CE_PREPARED": "distill.losses.response",
        "kd_rows": "distill.losses.response",
        "kl_rows": "distill.losses.response",
        "pearson_distance": "distill.losses.response",
        "symmetric_kl": "distill.losses.response",
        "dist_plus_channel_relation": "distill.losses.correlation",
        "dist_plus_loss": "distill.losses.correlation",
        "dist_plus_spatial_relation": "distill.losses.correlation",
        "skd_direction_loss": "distill.losses.logit_recent",
        "skd_instance_loss": "distill.losses.logit_recent",
    }
)


__getattr__ = lazy_exports(__name__, _HOME)


__all__ = ["LOSSES", "LossSpec", *sorted(_HOME)]
