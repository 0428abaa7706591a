"""Feature scaling of a table's numeric columns, fitted on the training rows and applied
to every split (`data.options.scale`), and the warning for features far from unit scale,
the usual reason a table trains to chance."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from distill.core.errors import ConfigError


def apply_scale(
    data: Any, sources: list[Any], columns: list[str], scale: str, name: str, numeric: bool,
    kind: str,
) -> None:  # fmt: skip
    """`scale` on a table's numeric columns ('auto': 'standard'); refused on a text or image
    input (`kind`), whose columns are not numbers. Records what was fitted on `data`."""
    if numeric:
        how = "standard" if scale == "auto" else scale
        data.preprocessing = scale_features(data, sources, columns, how, name)
    elif scale not in ("none", "auto"):
        raise ConfigError(
            f"dataset {name!r}: scale applies to numeric feature columns; this table's input "
            f"is {kind or 'an image column'} (use transforms for images)"
        )


SCALINGS = ("none", "standard", "minmax")


def scale_features(
    data: Any, sources: list[Any], columns: list[str], how: str, name: str
) -> dict | None:
    """Fit `how` on the training split's rows and set it on every source (train and test
    files); returns what was fitted, for the run dir. With 'none', warn when the features
    are far from unit scale, the usual reason a table trains to chance."""
    if how not in SCALINGS:
        raise ConfigError(f"dataset {name!r}: scale must be one of {list(SCALINGS)}, got {how!r}")
    rows = data.train.source
    positions = np.sort(data.train.positions)
    if how == "none":
        step = max(1, len(positions) // 20_000)  # a sample of rows is enough to warn
        _warn_scale(rows.read_many(positions[::step]), columns, name)
        return None
    x = rows.read_many(positions).astype(np.float64)
    if how == "standard":
        offset, divisor = x.mean(0), x.std(0)
    else:
        offset, divisor = x.min(0), x.max(0) - x.min(0)
    divisor = np.where(divisor > 0, divisor, 1.0)  # a constant feature stays constant
    scaling = (offset.astype(np.float32), divisor.astype(np.float32))
    for source in sources:
        if source is not None:
            source.scaling = scaling
    return {
        "scale": how,
        "fitted_on": f"{len(positions)} training rows",
        "columns": columns,
        "offset": scaling[0].tolist(),
        "divisor": scaling[1].tolist(),
    }


def _warn_scale(x: np.ndarray, columns: list[str], name: str) -> None:
    std = x.std(0)
    spread = np.abs(x).max(0)
    positive = std[std > 0]
    if not positive.size:
        return
    ratio = positive.max() / positive.min()
    if np.median(positive) > 20 or spread.max() > 1e3 or ratio > 1e3:
        print(
            f"dataset {name!r}: the features are far from unit scale (median std "
            f"{np.median(positive):.3g}, largest |value| {spread.max():.3g}, std ratio "
            f"{ratio:.3g}); networks train poorly on such inputs: set scale: standard (or "
            f"minmax) in data.options to scale them with statistics of the training rows",
            file=sys.stderr,
        )
