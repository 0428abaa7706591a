"""The `distill compress` config: a base experiment and its stages (see
`distill.compress.pipeline` for what each stage does), read and checked before anything
runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from distill.core.config import (
    ModelConfig,
    SchemeConfig,
    apply_override,
    read_yaml,
    validated,
)
from distill.core.errors import ConfigError
from distill.core.settings import QuantSettings, SparsitySettings, Strict

from .search import SearchSettings


class PruneSpec(Strict):
    amount: float = Field(..., ge=0, lt=1)  # fraction of channels (structured) or weights
    structured: bool = True
    criterion: Literal["l1", "bn"] = "l1"  # structured: filter L1 norm or BatchNorm |scale|
    scope: Literal["global", "layer"] = "global"  # unstructured only
    skip: list[str] = []


class LowRankSpec(Strict):
    energy: float | None = Field(0.9, gt=0, le=1)  # keep this share of sum(S^2)
    rank_ratio: float | None = Field(None, gt=0, le=1)  # or this fraction of the full rank
    min_features: int = Field(16, ge=1)
    skip: list[str] = []


class StageConfig(Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["load", "train", "prune", "lowrank", "quantize", "search"]
    source: str | None = None  # the earlier stage whose model this one starts from
    teacher: str | None = None  # the earlier stage whose model teaches this one
    model: ModelConfig | None = None  # load/train: the model (train default: base student)
    scheme: SchemeConfig | None = None  # replaces offline KD (e.g. speq, qkd)
    objective: dict[str, Any] | None = None  # replaces the base objective
    train: dict[str, Any] = {}  # overrides of the base train settings (epochs, optimizer, ...)
    prune: PruneSpec | None = None
    lowrank: LowRankSpec | None = None
    quantize: QuantSettings | None = None
    sparsity: SparsitySettings | None = None  # gradual unstructured pruning while training
    search: SearchSettings | None = None

    @model_validator(mode="after")
    def _kind_fields(self):
        need = {
            "load": ["model"],
            "prune": ["source", "prune"],
            "lowrank": ["source", "lowrank"],
            "quantize": ["source", "quantize"],
            "search": ["search"],
        }.get(self.kind, [])
        missing = [f for f in need if getattr(self, f) is None]
        if missing:
            raise ValueError(f"a {self.kind} stage needs {', '.join(missing)}")
        if self.kind == "load" and self.model.weights is None:
            raise ValueError("a load stage's model needs weights (a file or a run dir)")
        return self


class ExportSettings(Strict):
    onnx: bool = True
    opset: int = Field(17, ge=13)
    latency_repeats: int = Field(200, ge=10)
    threads: int = Field(1, ge=1)


class CompressConfig(Strict):
    name: str
    run_dir: str | None = None
    base: str | dict[str, Any]  # a `distill run` config file, or one inline
    stages: list[StageConfig] = Field(..., min_length=1)
    export: ExportSettings = ExportSettings()

    @model_validator(mode="after")
    def _references(self):
        seen: list[str] = []
        for s in self.stages:
            if s.name in seen:
                raise ValueError(f"stage name {s.name!r} is used twice")
            for field in ("source", "teacher"):
                ref = getattr(s, field)
                if ref is not None and ref not in seen:
                    raise ValueError(
                        f"stage {s.name!r}: {field} {ref!r} is not an earlier stage "
                        f"(earlier: {seen or 'none'})"
                    )
            seen.append(s.name)
        return self

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / "compress" / self.name


def load_compress_config(path: str | Path, overrides: list[str] = ()) -> CompressConfig:
    path = Path(path)
    data = read_yaml(path, "compression config")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping (name:, base:, stages:)")
    if isinstance(data.get("base"), str):  # read first, so base.train.seed=1 overrides work
        base = Path(data["base"])
        if not base.is_absolute() and not base.is_file():
            base = path.parent / data["base"]  # relative to the compression config
        data["base"] = read_yaml(base, "base: experiment config")
    for assignment in overrides:
        apply_override(data, assignment)
    return validated(data, CompressConfig, str(path))


# ------------------------------------------------------------------------------- running
