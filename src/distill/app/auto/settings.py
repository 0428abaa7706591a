"""What `distill auto` is asked: the teacher, the data, the budget and how long to search.

Read from the command line, from the `auto:` section of a YAML file, or from Python
(`distill.auto(...)`), into one typed, frozen `AutoSettings`. Budgets are written the way a
person says them: `2M` parameters, `1.5MB` on disk, `3ms` at batch 1, `0.97x` the
teacher's accuracy, `2h` of wall-clock time.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from distill.core.config import DataConfig, ModelConfig
from distill.core.errors import ConfigError
from distill.core.settings import Strict

_COUNT = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}
_BYTES = {
    "": 1,
    "b": 1,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def _number_with_unit(text: Any, units: dict[str, float], what: str, example: str) -> float:
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if match is None or match.group(2).lower() not in units:
        raise ConfigError(
            f"{what}: cannot read {text!r}; write a number with one of the units "
            f"{[u for u in units if u]}, e.g. {example}"
        )
    return float(match.group(1)) * units[match.group(2).lower()]


def parse_count(text: Any, what: str = "max_params") -> int:
    """'2M' -> 2_000_000, '500k' -> 500_000, 1200 -> 1200."""
    return int(_number_with_unit(text, _COUNT, what, "2M or 500k"))


def parse_bytes(text: Any, what: str = "max_size") -> int:
    """'1.5MB' -> 1_500_000, '2MiB' -> 2_097_152."""
    return int(_number_with_unit(text, _BYTES, what, "1.5MB or 800KiB"))


def parse_ms(text: Any, what: str = "max_latency") -> float:
    """'3ms' -> 3.0, '300us' -> 0.3, '0.002s' -> 2.0 (milliseconds)."""
    units = {"": 1.0, "ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}
    return _number_with_unit(text, units, what, "3ms or 300us")


def parse_seconds(text: Any, what: str = "time") -> float:
    """'2h' -> 7200, '90m' -> 5400, '1h30m' -> 5400, 600 -> 600."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    parts = re.findall(r"([0-9]*\.?[0-9]+)\s*([a-zA-Z]+)", str(text))
    rebuilt = "".join(f"{n}{u}" for n, u in parts)
    if not parts or rebuilt != re.sub(r"\s+", "", str(text)):
        raise ConfigError(f"{what}: cannot read {text!r} as a duration; write e.g. 2h, 45m, 1h30m")
    total = 0.0
    for number, unit in parts:
        if unit.lower() not in _SECONDS:
            raise ConfigError(
                f"{what}: unknown unit {unit!r} in {text!r}; use s, m, h or d (e.g. 1h30m)"
            )
        total += float(number) * _SECONDS[unit.lower()]
    return total


class Accuracy(Strict):
    """An accuracy floor: absolute (0.9) or relative to the teacher's (0.97x)."""

    value: float = Field(..., gt=0)
    relative: bool = False

    @classmethod
    def parse(cls, text: Any) -> Accuracy:
        raw = str(text).strip().lower()
        relative = raw.endswith("x")
        try:
            value = float(raw[:-1] if relative else raw.rstrip("%"))
        except ValueError:
            raise ConfigError(
                f"min_accuracy: cannot read {text!r}; write 0.9 (absolute), 90% or 0.97x (of "
                f"the teacher's accuracy)"
            ) from None
        if raw.endswith("%"):
            value /= 100
        if not relative and value > 1:
            raise ConfigError(f"min_accuracy: {text!r} is above 1; write 0.9, 90% or 0.97x")
        return cls(value=value, relative=relative)

    def floor(self, teacher_acc: float) -> float:
        return self.value * teacher_acc if self.relative else self.value

    def __str__(self) -> str:
        return f"{self.value:g}x the teacher's" if self.relative else f"{100 * self.value:.1f}%"


class Budget(Strict):
    """What the handed-over student must fit. Every bound is optional; they combine."""

    max_params: int | None = Field(None, ge=1)
    max_size_bytes: int | None = Field(None, ge=1)  # its safetensors file
    max_latency_ms: float | None = Field(None, gt=0)  # median at batch 1
    throughput_batch: int | None = Field(None, ge=1)  # also report samples/s at this batch
    min_throughput: float | None = Field(None, gt=0)  # samples/s at throughput_batch
    device: str = "cpu"
    threads: int = Field(1, ge=1)
    min_accuracy: Accuracy | None = None

    @field_validator("max_params", mode="before")
    @classmethod
    def _params(cls, v: Any) -> Any:
        return None if v is None else parse_count(v)

    @field_validator("max_size_bytes", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        return None if v is None else parse_bytes(v)

    @field_validator("max_latency_ms", mode="before")
    @classmethod
    def _latency(cls, v: Any) -> Any:
        return None if v is None else parse_ms(v)

    @field_validator("min_accuracy", mode="before")
    @classmethod
    def _accuracy(cls, v: Any) -> Any:
        return None if v is None or isinstance(v, Accuracy | dict) else Accuracy.parse(v)


class AutoSettings(Strict):
    """Everything `distill auto` needs (the `auto:` section of a YAML file)."""

    teacher: ModelConfig  # name, args and weights (a .safetensors file or a run dir)
    data: DataConfig
    budget: Budget = Budget()
    out: str = "runs/auto"
    time_s: float | None = Field(None, gt=0)  # wall-clock for the whole command
    trials: int | None = Field(None, ge=1)  # search trials (both: whichever ends first)
    epochs: int = Field(30, ge=1)  # per trial and per final run (trials may be pruned earlier)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0)  # AdamW; trials search x0.3..x3 around it
    seeds: int = Field(3, ge=2)  # seeds per finalist and baseline in the final comparison
    # an undecided verdict's best arm and scratch get a second look at up to this many
    # seeds (default: twice `seeds`; equal to `seeds`: one look)
    max_seeds: int | None = Field(None, ge=2)
    finalists: int = Field(2, ge=1)
    max_candidates: int = Field(4, ge=1)  # students proposed from the teacher's family
    candidates: list[ModelConfig] = []  # students of the user's own, measured and searched too
    methods: list[str] | None = None  # restrict the methods (default: all that apply)
    export: Literal["onnx", "torchscript", "hf"] | None = None
    # when the teacher breaks the budget: also try it pruned, and int8 students (auto.compressed)
    compress: Literal["auto", "off"] = "auto"
    storage: str | None = None  # an SQLAlchemy URL; default: sqlite in `out`
    seed: int = 0  # the search's sampler; trials train with seed 0, finals with 0..seeds-1
    device: str = "auto"  # where training runs (budget.device is where latency is measured)
    workers: int = Field(0, ge=0)
    progress: bool = True

    @model_validator(mode="after")
    def _seed_counts(self):
        if self.max_seeds is None:
            object.__setattr__(self, "max_seeds", 2 * self.seeds)
        elif self.max_seeds < self.seeds:
            raise ValueError(f"max_seeds ({self.max_seeds}) is below seeds ({self.seeds})")
        return self

    @field_validator("time_s", mode="before")
    @classmethod
    def _time(cls, v: Any) -> Any:
        return None if v is None else parse_seconds(v)

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out_dir / 'study.db').resolve()}"
