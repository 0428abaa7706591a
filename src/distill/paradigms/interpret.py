"""Interpretable students: a decision tree and a sparse linear model that mimic a neural teacher.

`distill interpret CONFIG` labels an enlarged transfer set (the training inputs plus MUNGE
samples, Bucilă et al. 2006) with the teacher's soft predictions and fits scikit-learn
students to them (model extraction in the spirit of Craven & Shavlik 1996 and of Frosst &
Hinton 2017, who distil a network into a soft decision tree):

- `tree_soft`: a regression tree fitted to the teacher's class probabilities (squared error
  to the probability vector, i.e. the Brier score), predicting its leaf's argmax;
- `tree_teacher_labels`: a classification tree on the teacher's top-1 labels;
- `linear_soft`: a multi-task Lasso on the teacher's centred log-probabilities (one weight
  vector per class, the L1/L2 penalty zeroes whole input features);

against the same model families trained on the true labels alone (`tree_hard`, an
L1-penalised logistic regression `linear_hard`). Every student is scored on the test split
by accuracy and fidelity (agreement with the teacher's top-1). `rules.txt` holds the soft
tree as readable if/then rules.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from distill.core.config import DataConfig, ModelConfig, RunDirMixin, load_command_config
from distill.core.errors import ConfigError
from distill.core.settings import Strict


class TransferSpec(Strict):
    multiplier: int = Field(10, ge=0)  # MUNGE copies of the training inputs
    p: float = Field(0.5, ge=0, le=1)
    s: float = Field(1.0, gt=0)


class TreeSpec(Strict):
    max_depth: int | None = Field(8, ge=1)
    min_samples_leaf: int = Field(5, ge=1)


class LinearSpec(Strict):
    alpha: float = Field(0.01, gt=0)  # multi-task Lasso penalty (soft-label student)
    C: float = Field(0.1, gt=0)  # inverse L1 penalty of the hard-label logistic regression


class InterpretConfig(RunDirMixin, Strict):
    name: str = "interpret"
    run_dir: str | None = None
    data: DataConfig = DataConfig()
    teacher: ModelConfig
    transfer: TransferSpec = TransferSpec()
    tree: TreeSpec = TreeSpec()
    linear: LinearSpec = LinearSpec()
    seed: int = 0


def load_interpret_config(path: str | Path, overrides: list[str] = ()) -> InterpretConfig:
    cfg = load_command_config(path, overrides, InterpretConfig, "interpret config")
    if cfg.teacher.weights is None:
        raise ConfigError("teacher.weights: an interpretable student needs a trained teacher")
    return cfg


def feature_names(input_shape: tuple[int, ...]) -> list[str]:
    """'x[r,c]' style names of the flattened inputs (a leading single channel is dropped)."""
    shape = input_shape[1:] if len(input_shape) > 1 and input_shape[0] == 1 else input_shape
    return [
        "x[" + ",".join(str(i) for i in np.unravel_index(j, shape)) + "]"
        for j in range(math.prod(shape))
    ]


def tree_rules(tree: Any, names: list[str], class_names: list[str] | None = None) -> str:
    """A fitted scikit-learn tree as nested if/else rules; a leaf says its predicted class,
    that class's share and how many transfer samples reached it."""
    t = tree.tree_
    lines: list[str] = []

    def leaf(node: int) -> str:
        value = t.value[node].reshape(-1)
        probs = value / value.sum() if value.sum() > 0 else value
        k = int(np.argmax(probs))
        label = class_names[k] if class_names else str(k)
        return f"class {label} (p={probs[k]:.2f}, n={int(t.n_node_samples[node])})"

    def walk(node: int, depth: int) -> None:
        pad = "  " * depth
        if t.children_left[node] == -1:
            lines.append(f"{pad}-> {leaf(node)}")
            return
        name, thr = names[t.feature[node]], t.threshold[node]
        lines.append(f"{pad}if {name} <= {thr:.3f}:")
        walk(t.children_left[node], depth + 1)
        lines.append(f"{pad}else:  # {name} > {thr:.3f}")
        walk(t.children_right[node], depth + 1)

    walk(0, 0)
    return "\n".join(lines) + "\n"


def _l1() -> dict[str, Any]:
    """An L1 penalty for LogisticRegression: `l1_ratio=1` from scikit-learn 1.8 (where
    `penalty` is deprecated), `penalty='l1'` before."""
    import sklearn

    major, minor = (int(v) for v in sklearn.__version__.split(".")[:2])
    return {"l1_ratio": 1.0} if (major, minor) >= (1, 8) else {"penalty": "l1"}


def _flat(x: torch.Tensor) -> np.ndarray:
    return x.reshape(len(x), -1).float().numpy().astype(np.float64)


def _fit_students(cfg: InterpretConfig, xt, pt, x_lab, y_lab) -> dict[str, tuple[Any, str]]:
    """The five students: trees and sparse linear models, from the teacher's soft outputs
    on the transfer set or from the true labels; name -> (fitted model, what it learnt)."""
    from sklearn.linear_model import LogisticRegression, MultiTaskLasso
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    log_pt = np.log(np.clip(pt, 1e-6, None))
    log_pt -= log_pt.mean(1, keepdims=True)
    tree = {"max_depth": cfg.tree.max_depth, "min_samples_leaf": cfg.tree.min_samples_leaf}
    seed = cfg.seed
    logistic = LogisticRegression(
        C=cfg.linear.C, solver="saga", max_iter=5000, random_state=seed, **_l1()
    )
    return {
        "tree_soft": (
            DecisionTreeRegressor(random_state=seed, **tree).fit(xt, pt),
            "teacher probabilities on the transfer set",
        ),
        "tree_teacher_labels": (
            DecisionTreeClassifier(random_state=seed, **tree).fit(xt, pt.argmax(1)),
            "teacher top-1 labels on the transfer set",
        ),
        "tree_hard": (
            DecisionTreeClassifier(random_state=seed, **tree).fit(x_lab, y_lab),
            "true labels of the training split",
        ),
        "linear_soft": (
            MultiTaskLasso(alpha=cfg.linear.alpha, max_iter=5000).fit(xt, log_pt),
            "teacher log-probabilities on the transfer set (multi-task Lasso)",
        ),
        "linear_hard": (
            logistic.fit(x_lab, y_lab),
            "true labels of the training split (L1 logistic regression)",
        ),
    }


def _student_row(name: str, model: Any, source: str, x_test, y_test, teacher_pred) -> dict:
    scores = model.predict(x_test)
    pred = scores.argmax(1) if scores.ndim == 2 else scores.astype(int)
    if name.startswith("tree"):
        size = f"{model.get_n_leaves()} leaves, depth {model.get_depth()}"
    else:
        coef = np.atleast_2d(model.coef_)
        used = int((np.abs(coef) > 0).any(0).sum())
        size = f"{used} of {coef.shape[1]} inputs used"
    return {
        "model": name,
        "trained_on": source,
        "test_acc": float((pred == y_test).mean()),
        "fidelity": float((pred == teacher_pred).mean()),
        "size": size,
    }


def run_interpret(cfg: InterpretConfig, *, progress: bool = True) -> dict[str, Any]:
    """Fit every student (module docstring); write results.json, rules.txt and report.md."""
    from distill.app.build import load_data, load_model
    from distill.core.checkpoint import atomic_write_text
    from distill.data.core import ArrayDataset
    from distill.evaluate import predict_logits
    from distill.paradigms.ensemble import transfer_set

    data = load_data(cfg.data)
    teacher = load_model(cfg.teacher, data, "teacher").eval()
    train, test = data.train, data.test
    if not hasattr(train, "inputs"):
        raise ConfigError("distill interpret needs an in-memory array dataset")
    tr = cfg.transfer
    x_t = transfer_set(train.inputs, tr.multiplier, p=tr.p, s=tr.s, seed=cfg.seed)
    with torch.no_grad():
        p_t = F.softmax(predict_logits(teacher, ArrayDataset(x_t, torch.zeros(len(x_t)))), -1)
        teacher_pred = predict_logits(teacher, test).argmax(-1).numpy()
    y_test = test.targets.numpy()
    labelled = train.targets >= 0
    x_lab, y_lab = _flat(train.inputs[labelled]), train.targets[labelled].numpy()
    t0 = time.perf_counter()
    students = _fit_students(cfg, _flat(x_t), p_t.numpy().astype(np.float64), x_lab, y_lab)
    if progress:
        print(f"fitted 5 students in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    size = f"{sum(p.numel() for p in teacher.parameters())} parameters"
    rows = [
        {
            "model": "teacher",
            "trained_on": "-",
            "test_acc": float((teacher_pred == y_test).mean()),
            "fidelity": 1.0,
            "size": size,
        }
    ]
    x_test = _flat(test.inputs)
    for name, (model, source) in students.items():
        rows.append(_student_row(name, model, source, x_test, y_test, teacher_pred))
    run_dir = cfg.resolved_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    names = feature_names(data.input_shape)
    atomic_write_text(run_dir / "rules.txt", tree_rules(students["tree_soft"][0], names))
    result = {
        "name": cfg.name,
        "run_dir": str(run_dir),
        "transfer_samples": len(x_t),
        "labelled_samples": len(y_lab),
        "rows": rows,
    }
    atomic_write_text(run_dir / "results.json", json.dumps(result, indent=2))
    atomic_write_text(run_dir / "report.md", markdown(cfg.name, rows))
    return result


def markdown(name: str, rows: list[dict[str, Any]]) -> str:
    out = [
        f"# {name}",
        "",
        "| model | trained on | test accuracy | fidelity to teacher | size |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['trained_on']} | {100 * r['test_acc']:.1f} | "
            f"{100 * r['fidelity']:.1f} | {r['size']} |"
        )
    return "\n".join(out) + "\n"


__all__ = [
    "InterpretConfig",
    "feature_names",
    "load_interpret_config",
    "run_interpret",
    "tree_rules",
]
