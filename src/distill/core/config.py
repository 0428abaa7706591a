"""Experiment configs: YAML parsed safely into typed, frozen, validated objects.

Unknown keys are errors that suggest the nearest valid key; every problem in a file is
reported at once. `key=value` overrides use dotted paths (`train.epochs=5`,
`objective.terms.0.weight=0.5`); values are parsed as YAML scalars or lists.
"""

from __future__ import annotations

import codecs
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator

from distill.core.errors import ConfigError, did_you_mean
from distill.core.settings import (
    CondenseSettings,
    QuantSettings,
    SparsitySettings,
    Strict,
    TrainSettings,
)


class AugmentConfig(Strict):
    name: str
    args: dict[str, Any] = {}


class DataConfig(Strict):
    name: str = "mnist1d"
    val_fraction: float = Field(0.1, ge=0, lt=1)
    split_seed: int = 0
    train_samples: int | None = Field(None, ge=1)  # keep labels on only this many (stratified)
    unlabeled: bool = False  # keep the other training inputs, without labels, as a transfer set
    options: dict[str, Any] = {}  # passed to the dataset loader, e.g. {num_samples: 8000}
    classes: list[int] | None = None  # keep only these classes, relabelled 0..k-1 (specialists)
    # keep only these classes' samples, labels unchanged, the model still has every class's
    # output: one task of a class-incremental sequence (scheme: lifelong)
    task_classes: list[int] | None = None
    # a related task with another label space: class c becomes label_map[c] (e.g. parity
    # [0, 1, 0, 1, ...]), to train a cross-task teacher
    label_map: list[int] | None = None
    # cross-modal: the student's modality (a view of each input) and a second modality of the
    # same samples for the teacher (distill.data.views: raw, spectrogram, flatten, profiles)
    view: str | None = None
    paired: str | None = None
    augment: list[AugmentConfig] = []
    # dataset distillation: train on a few synthetic (or random real) samples per class
    condense: CondenseSettings | None = None


class ModelConfig(Strict):
    name: str  # a table name ('convnet') or your own 'package.module:attr'
    args: dict[str, Any] = {}
    weights: str | None = None  # a .safetensors file or a run dir (uses its best weights)
    # outputs, when not the data's classes: a cross-task teacher predicts its own task's
    num_classes: int | None = Field(None, ge=1)
    # compression while training: fake-quantized (QAT) and/or magnitude-pruned weights
    quantize: QuantSettings | None = None
    sparsity: SparsitySettings | None = None
    # a PEFT adapter around a Hugging Face model: peft.LoraConfig's fields, e.g.
    # {r: 8, lora_alpha: 16, target_modules: [q_proj, v_proj]}; only the adapter trains
    peft: dict[str, Any] | None = None


class TeacherConfig(ModelConfig):
    """One of several teachers. A specialist predicts only `classes` (its logits in that order)."""

    classes: list[int] | None = None


class TermConfig(Strict):
    loss: str  # a LOSSES name or 'package.module:attr'
    name: str | None = None  # for logs; defaults to the loss name
    weight: float = Field(1.0, ge=0)  # a negative weight would reward the student for diverging
    warmup_steps: int = Field(0, ge=0)
    start_step: int = Field(0, ge=0)  # off until this optimizer step, then warms up
    ramp: Literal["linear", "cosine"] = "linear"
    student: str | list[str] = (
        "logits"  # 'logits', a layer name ('layer:input': its input), or a list
    )
    teacher: str | list[str] = "logits"
    adapter: str | None = (
        None  # linear/conv1x1/conv3x3/tokens/feature_to_tokens: student tensor -> teacher shape
    )
    resize: Literal["pool", "interpolate"] | None = None  # how the adapter matches spatial sizes
    args: dict[str, Any] = {}  # keyword hyperparameters of the loss, e.g. {temperature: 4}


class ObjectiveConfig(Strict):
    task_weight: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    terms: list[TermConfig] = []


class SchemeConfig(Strict):
    """Who teaches whom: a SCHEMES name and its arguments (`distill schemes` lists them)."""

    name: str = "offline"
    args: dict[str, Any] = {}


def _scheme_from_name(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


class StageConfig(Strict):
    """One stage of a multi-stage run; anything left out comes from the top of the config.

    `train` is merged key by key over the top-level train section; `teacher: previous`
    makes the previous stage's trained student the teacher; `init: previous` starts the
    student from the previous stage's best weights (same architecture), `fresh` from scratch.
    """

    name: str
    scheme: SchemeConfig | None = None
    student: ModelConfig | None = None
    teacher: ModelConfig | Literal["previous"] | None = None
    objective: ObjectiveConfig | None = None
    train: dict[str, Any] = {}
    init: Literal["previous", "fresh"] = "previous"

    _scheme = field_validator("scheme", mode="before")(_scheme_from_name)


class ExperimentConfig(Strict):
    name: str = "experiment"
    run_dir: str | None = None  # default: runs/<name>
    scheme: SchemeConfig = SchemeConfig()
    data: DataConfig = DataConfig()
    student: ModelConfig
    teacher: ModelConfig | None = None
    teachers: list[TeacherConfig] = []  # multi_teacher: several frozen teachers
    peers: list[ModelConfig] = []  # online schemes: the student's peers (trained with it)
    objective: ObjectiveConfig = ObjectiveConfig()
    train: TrainSettings = TrainSettings()
    stages: list[StageConfig] = []  # a multi-stage run: each stage trains in turn

    _scheme = field_validator("scheme", mode="before")(_scheme_from_name)
    # the YAML file this config was read from (None when built in Python): --overwrite never
    # clears the folder holding it
    _source: Path | None = PrivateAttr(default=None)

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name


def _model_classes(annotation: Any) -> list[type[Strict]]:
    """The Strict models an annotation can hold (through Optional, list, tuple)."""
    if isinstance(annotation, type) and issubclass(annotation, Strict):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, tuple):
        return [m for arg in typing.get_args(annotation) for m in _model_classes(arg)]
    return []


def unknown_keys(data: Any, model: type[Strict], path: str = "") -> list[str]:
    """Every key in `data` that `model` does not define, with a suggestion, recursively."""
    if not isinstance(data, dict):
        return []
    problems = []
    fields = model.model_fields
    for key, value in data.items():
        where = f"{path}{key}"
        if key not in fields:
            problems.append(
                f"{where}: unknown key{did_you_mean(str(key), fields)} valid keys: {', '.join(fields)}"
            )
            continue
        for sub in _model_classes(fields[key].annotation):
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                prefix = f"{where}.{i}." if isinstance(value, list) else f"{where}."
                problems += unknown_keys(item, sub, prefix)
    return problems


def _format_validation(err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"])
        out.append(f"{where}: {e['msg']} (got {e.get('input')!r})")
    return out


def parse_config(data: dict[str, Any], source: str = "config") -> ExperimentConfig:
    """Validate a plain dict; raise one ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping of keys, got {type(data).__name__}"
        )
    return validated(data, ExperimentConfig, source)


def validated(data: dict[str, Any], model: type[Strict], source: str):
    """`model` validated from `data`, or one ConfigError listing every problem (unknown keys
    with suggestions, then pydantic's)."""
    problems = unknown_keys(data, model)
    try:
        cfg = model.model_validate(data)
    except ValidationError as e:
        problems += [p for p in _format_validation(e) if "Extra inputs are not permitted" not in p]
        cfg = None
    if problems or cfg is None:
        raise ConfigError(f"{source} has {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return cfg


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one 'a.b.c=value' to nested dicts/lists in place (value parsed as YAML)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(
            f"override {assignment!r} must look like key.path=value, e.g. train.epochs=5"
        )
    try:
        value = safe_load_unique(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {assignment!r}: the value is not valid YAML ({e})") from None
    if isinstance(value, dict) and not raw.strip().startswith("{"):
        value = raw  # 'pkg.mod:attr' or 'a: b' without braces is text, not a mapping
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    f"override {key!r}: {'.'.join(parts[:i]) or 'list'} has {len(node)} items; {part!r} is not a valid index"
                )
            idx = int(part)
            if last:
                node[idx] = value
            else:
                node = node[idx]
            continue
        if not isinstance(node, dict):
            raise ConfigError(
                f"override {key!r}: {'.'.join(parts[:i])!r} is a value, not a section"
            )
        if last:
            node[part] = value
        else:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the
    last one, so a second `train:` would silently replace the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found the key {key!r} twice (first at line {seen[key].start_mark.line + 1}); "
                    f"YAML would keep only the last one, so merge them into one",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


# Bounds on what one YAML document may hold. A config is a few hundred values; these
# leave room for long inline lists while refusing "billion laughs" documents, whose few
# hundred bytes of aliases expand to millions of values when they are read.
MAX_YAML_BYTES = 4 * 1024 * 1024
MAX_YAML_VALUES = 1_000_000


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many values `node` stands for once every alias is written out (memoised per
    node, so a chain of aliases is counted without expanding it)."""
    key = id(node)
    if key not in memo:
        memo[key] = 0  # a node that contains itself (a recursive alias) counts once
        if isinstance(node, yaml.MappingNode):
            size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(_expanded_size(v, memo) for v in node.value)
        else:
            size = 1
        memo[key] = size
    return memo[key]


def safe_load_unique(text: str) -> Any:
    """yaml.safe_load, but a mapping with a repeated key is an error, and a document whose
    aliases expand to more than MAX_YAML_VALUES values is refused before it is built."""
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {})
        if size > MAX_YAML_VALUES:
            raise yaml.YAMLError(
                f"its aliases (*name) expand to {size:,} values, more than the "
                f"{MAX_YAML_VALUES:,} a config may hold; write the values out or use fewer aliases"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def decode_text(data: bytes, path: Path, what: str) -> str:
    """A text file's bytes as str: UTF-8 (a BOM allowed), or UTF-16/32 with a BOM, as
    editors on Windows save them; anything else is refused with the offending byte."""
    for bom, codec in (
        (codecs.BOM_UTF32_LE, "utf-32"),
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            try:
                return data.decode(codec)
            except UnicodeDecodeError:
                break
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{what} {str(path)!r} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
            f"{e.start} cannot be decoded); save it as UTF-8, or check it is the file you meant"
        ) from None


def read_yaml(path: Path, what: str) -> Any:
    """A YAML file's contents, read safely (no tags that build objects, no repeated keys);
    {} when empty."""
    if path.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a folder; give the path of a YAML file in it")
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ConfigError(
            f"{what} {str(path)!r} has {size:,} bytes, more than the {MAX_YAML_BYTES:,} a YAML "
            "config may have; check it is the file you meant"
        )
    text = decode_text(path.read_bytes(), path, what)
    try:
        return safe_load_unique(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None


def load_command_config(path: str | Path, overrides: list[str], model: type[Strict], what: str):
    """A command's own YAML config (federated, interpret, ...): read safely, overrides
    applied, validated against `model`."""
    data = read_yaml(Path(path), what)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level of a {what} must be a mapping of keys")
    for assignment in overrides:
        apply_override(data, assignment)
    return validated(data, model, str(path))


class RunDirMixin:
    """`run_dir` if set, else runs/<name>."""

    name: str
    run_dir: str | None

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name


def load_config(
    path: str | Path | None = None, overrides: list[str] = (), data: dict | None = None
) -> ExperimentConfig:
    """Read YAML (safely: no tags that build objects), apply overrides, validate."""
    if path is not None:
        path = Path(path)
        data = read_yaml(path, "config file")
    if data is not None and not isinstance(data, dict):
        raise ConfigError(
            f"{path or 'config'}: the top level must be a mapping of keys (student:, data:, ...), "
            f"got a {type(data).__name__}"
        )
    data = dict(data or {})
    for assignment in [None, *overrides]:
        if assignment is not None:
            apply_override(data, assignment)
        if isinstance(data.get("scheme"), str):  # so that scheme.args.x=... overrides work
            data["scheme"] = {"name": data["scheme"]}
    cfg = parse_config(data, str(path) if path else "config")
    cfg._source = path
    return cfg


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
