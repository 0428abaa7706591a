"""The search space of `distill auto`: which methods of the catalogue apply to a teacher and
student, with their key hyperparameters, as Optuna define-by-run suggestions.

Response methods always apply (they read the logits both models have). Feature and
relation methods apply when the layers can be paired without the user: every classifier
has a last linear layer, whose input is the last representation before the classes; the
student's and the teacher's are paired there (through a learned linear adapter where the
widths differ and the loss compares values one to one), and the pairing is said in the
report. Those terms are added to KD at its defaults, since alone they leave the
teacher's outputs (and with them any unlabelled inputs) unused.

Each method starts from the settings of its example config (`examples/<method>.yaml`)
and searches the task weight, its term weights (log scale) and its temperature, plus the
learning rate. `scratch` and `kd` at those defaults are the baselines every search carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

# method -> (task weight, terms) at the example configs' settings
RESPONSE: dict[str, tuple[float, list[dict[str, Any]]]] = {
    "kd": (0.1, [{"loss": "kd", "weight": 0.9, "args": {"temperature": 4.0}}]),
    "dist": (
        1.0,
        [{"loss": "dist", "weight": 1.0, "args": {"beta": 1.0, "gamma": 1.0, "temperature": 1.0}}],
    ),
    "dkd": (
        1.0,
        [{"loss": "dkd", "weight": 1.0, "args": {"alpha": 1.0, "beta": 8.0, "temperature": 4.0}}],
    ),
    "ls_kd": (0.1, [{"loss": "ls_kd", "weight": 0.9, "args": {"temperature": 2.0}}]),
    "nkd": (1.0, [{"loss": "nkd", "weight": 1.0, "args": {"gamma": 1.5, "temperature": 1.0}}]),
    "wttm": (1.0, [{"loss": "wttm", "weight": 1.0, "args": {"temperature": 4.0}}]),
    "js": (0.1, [{"loss": "js", "weight": 0.9, "args": {"temperature": 4.0}}]),
    "reverse_kl": (0.1, [{"loss": "reverse_kl", "weight": 0.9, "args": {"temperature": 4.0}}]),
    "skd": (
        0.1,
        [{"loss": "skd", "weight": 0.9, "args": {"variant": "authors", "temperature": 4.0}}],
    ),
}
# feature and relation terms at the classifier inputs, added to KD's defaults
FEATURE: dict[str, list[dict[str, Any]]] = {
    "kd+fitnet": [{"loss": "fitnet", "weight": 1.0, "adapter": "linear"}],
    "kd+rkd": [
        {"loss": "rkd_distance", "weight": 25.0},
        {"loss": "rkd_angle", "weight": 50.0},
    ],
    "kd+pkt": [{"loss": "pkt", "weight": 3e4}],
    "kd+sp": [{"loss": "sp", "weight": 3e3}],
}
BASELINES = ("scratch", "kd")


def all_methods() -> list[str]:
    return [*RESPONSE, *FEATURE]


@dataclass(frozen=True)
class Pairing:
    """Where feature terms read: the input of each model's classifier layer."""

    student: str
    teacher: str
    why: str


def classifier_input(model: nn.Module, num_classes: int) -> str | None:
    """'<name>:input' of the model's last linear layer with `num_classes` outputs."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == num_classes:
            found = name
    return f"{found}:input" if found else None


def pair_layers(student: nn.Module, teacher: nn.Module, num_classes: int) -> Pairing | None:
    s, t = classifier_input(student, num_classes), classifier_input(teacher, num_classes)
    if s is None or t is None:
        return None
    return Pairing(
        s,
        t,
        f"the inputs of the classifiers (student {s}, teacher {t}): the last representation "
        f"each model has before its classes, so the two describe the same thing",
    )


def methods_for(pairing: Pairing | None, wanted: list[str] | None) -> list[str]:
    """The methods to search: every response method, and the feature ones when paired."""
    names = list(RESPONSE) + (list(FEATURE) if pairing is not None else [])
    if wanted is None:
        return names
    unknown = [m for m in wanted if m not in all_methods()]
    if unknown:
        from distill.core.errors import ConfigError

        raise ConfigError(
            f"auto: unknown method(s) {unknown}; the ones auto searches are {all_methods()}"
        )
    return [m for m in names if m in wanted]


def _terms_with_temperature(trial: Any, method: str, terms: list[dict]) -> list[dict]:
    out = []
    for i, term in enumerate(terms):
        term = {**term, "args": dict(term.get("args", {}))}
        weight = term["weight"]
        term["weight"] = trial.suggest_float(f"{method}.w{i}", weight / 3, weight * 3, log=True)
        if "temperature" in term["args"]:
            term["args"]["temperature"] = trial.suggest_float(f"{method}.temperature", 1.0, 8.0)
        out.append(term)
    return out


def objective_for(method: str, trial: Any | None, pairing: Pairing | None) -> dict[str, Any]:
    """The objective section of a trial's config. `trial=None`: the method's defaults."""
    if method == "scratch":
        return {}
    if method in RESPONSE:
        task, terms = RESPONSE[method]
        if trial is None:
            return {"task_weight": task, "terms": terms}
        return {
            "task_weight": trial.suggest_float(f"{method}.task_weight", 0.0, 1.0),
            "terms": _terms_with_temperature(trial, method, terms),
        }
    task, kd = RESPONSE["kd"]
    extra = [{**t, "student": pairing.student, "teacher": pairing.teacher} for t in FEATURE[method]]
    if trial is None:
        return {"task_weight": task, "terms": [*kd, *extra]}
    for i, term in enumerate(extra):
        w = term["weight"]
        term["weight"] = trial.suggest_float(f"{method}.f{i}", w / 30, w * 30, log=True)
    return {
        "task_weight": trial.suggest_float(f"{method}.task_weight", 0.0, 1.0),
        "terms": [*_terms_with_temperature(trial, method, kd), *extra],
    }
