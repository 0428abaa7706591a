"""The bad-input suite: each case is a user mistake met through the CLI.

Every case must exit with a clear one-paragraph error (no traceback) that names the
problem and the fix, and must leave the run dir as it was (absent, or byte-identical).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from helpers import make_teacher, synthetic_cfg

from distill.app.cli import main

USERBITS = """
import numpy as np
import torch
from torch import nn

def _xy(n, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8)).astype("float32"), rng.integers(0, classes, n)

def empty_train():
    x, y = _xy(50)
    return {"x": x[:0], "y": y[:0], "x_test": x, "y_test": y}

def negative_labels():
    x, y = _xy(200)
    y[3] = -2
    return {"x": x, "y": y, "x_test": x[:20], "y_test": y[:20] % 3}

def float_labels():
    x, y = _xy(200)
    return {"x": x, "y": y.astype("float32"), "x_test": x[:20], "y_test": y[:20]}

def nan_inputs():
    x, y = _xy(200)
    x[7, 2] = np.nan
    return {"x": x, "y": y, "x_test": x[8:28], "y_test": y[8:28]}

def length_mismatch():
    x, y = _xy(200)
    return {"x": x, "y": y[:-1], "x_test": x[:20], "y_test": y[:20]}

def unseen_test_class():
    x, y = _xy(200)
    y_test = y[:20].copy()
    y_test[0] = 7
    return {"x": x, "y": y, "x_test": x[:20], "y_test": y_test}

def not_data():
    return [1, 2, 3]

def five_classes(input_shape, num_classes):
    return nn.Linear(8, 5)

def not_a_module():
    return "a string"

def wrong_input():
    return nn.Linear(3, 3)

def labels_one_to_c():  # like scikit-learn's wine file: classes 1..3
    x, y = _xy(200)
    return {"x": x, "y": y + 1, "x_test": x[:20], "y_test": y[:20] + 1}

def stray_label():
    x, y = _xy(200)
    y[11] = 50
    return {"x": x, "y": y, "x_test": x[:20], "y_test": y[:20]}

def fixed_classes_out_of_range():
    x, y = _xy(200)
    y[4] = 5
    return {"x": x, "y": y, "x_test": x[:20], "y_test": y[:20], "num_classes": 3}

from shutil import rmtree  # imported, not defined here: a config may not name it
"""


@dataclass
class Case:
    id: str
    argv: list[str]  # CONFIG stands for the good config's path
    fragments: list[str]
    code: int = 2
    setup: str | None = None  # name of a setup step below
    teacher: bool = False  # use the offline config with a teacher
    absent: tuple[str, ...] = ()  # advice the message must not give


CASES = [
    # ---------------------------------------------------------------- configs
    Case(
        "unknown-top-key",
        ["validate", "CONFIG", "trian.epochs=3"],
        ["trian: unknown key; did you mean 'train'"],
    ),
    Case(
        "unknown-nested-key",
        ["validate", "CONFIG", "train.optimzer.lr=1"],
        ["did you mean 'optimizer'"],
    ),
    Case(
        "wrong-type",
        ["validate", "CONFIG", "train.epochs=ten"],
        ["train.epochs", "valid integer", "'ten'"],
    ),
    Case(
        "out-of-range",
        ["validate", "CONFIG", "train.optimizer.lr=-1"],
        ["train.optimizer.lr", "greater than 0"],
    ),
    Case(
        "bad-choice",
        ["validate", "CONFIG", "train.precision=fp8"],
        ["train.precision", "'fp32', 'bf16' or 'fp16'"],
    ),
    Case("missing-student", ["validate", "CONFIG", "student="], ["student", "valid dictionary"]),
    Case("yaml-not-mapping", ["validate", "LIST_YAML"], ["top level must be a mapping"]),
    Case("yaml-syntax", ["validate", "BROKEN_YAML"], ["is not valid YAML"]),
    Case("yaml-python-tag", ["validate", "EVIL_YAML"], ["is not valid YAML"]),
    Case("missing-config-file", ["run", "nope.yaml"], ["config file 'nope.yaml' does not exist"]),
    Case(
        "bad-import",
        ["run", "CONFIG", "student.name=nosuch_mod:Net"],
        ["cannot import 'nosuch_mod'", "PYTHONPATH"],
    ),
    Case(
        "missing-attr", ["run", "CONFIG", "student.name=userbits:Nope"], ["has no attribute 'Nope'"]
    ),
    Case(
        "malformed-ref",
        ["run", "CONFIG", "student.name=userbits:"],
        ["must look like 'package.module:attr'"],
    ),
    Case(
        "unknown-scheme",
        ["run", "CONFIG", "scheme=ofline"],
        ["unknown scheme 'ofline'; did you mean 'offline'"],
    ),
    Case(
        "unknown-loss",
        ["run", "CONFIG", "objective.terms.0.loss=kdd"],
        ["unknown loss 'kdd'; did you mean 'kd'"],
        teacher=True,
    ),
    Case(
        "unknown-adapter",
        ["run", "CONFIG", "objective.terms.0.adapter=lin"],
        ["unknown adapter 'lin'"],
        teacher=True,
    ),
    Case(
        "unknown-augment",
        ["run", "CONFIG", "data.augment=[{name: shfit}]"],
        ["unknown augmentation 'shfit'; did you mean 'shift'"],
    ),
    Case(
        "bad-augment-args",
        ["run", "CONFIG", "data.augment=[{name: shift, args: {maxshift: 2}}]"],
        ["data.augment:", "maxshift"],
    ),
    Case(
        "unknown-dataset",
        ["run", "CONFIG", "data.name=mnist"],
        ["unknown dataset 'mnist'; did you mean 'mnist1d'"],
    ),
    Case(
        "bad-dataset-option",
        ["run", "CONFIG", "data.options.num_sample=5"],
        ["num_sample", "data.options"],
    ),
    Case(
        "override-no-equals", ["run", "CONFIG", "train.epochs"], ["must look like key.path=value"]
    ),
    Case(
        "override-bad-index",
        ["run", "CONFIG", "objective.terms.4.weight=1"],
        ["is not a valid index"],
        teacher=True,
    ),
    Case(
        "offline-without-teacher",
        ["run", "CONFIG", "scheme=offline"],
        ["offline scheme needs a teacher"],
    ),
    Case(
        "teacher-without-weights",
        ["run", "CONFIG", "teacher.weights=null"],
        ["teacher.weights", "must be trained"],
        teacher=True,
    ),
    Case(
        "supervised-with-terms",
        ["run", "CONFIG", "scheme=supervised"],
        ["supervised scheme has no teacher"],
        teacher=True,
    ),
    Case(
        "unknown-loss-arg",
        ["run", "CONFIG", "objective.terms.0.args={temprature: 2}"],
        ["has no argument 'temprature'", "'temperature'"],
        teacher=True,
    ),
    Case(
        "fp16-on-cpu",
        ["run", "CONFIG", "train.precision=fp16", "train.device=cpu"],
        ["fp16 needs a CUDA device"],
    ),
    Case("cuda-missing", ["run", "CONFIG", "train.device=cuda"], ["no CUDA device is available"]),
    Case(
        "no-validation-split",
        ["run", "CONFIG", "data.val_fraction=0"],
        ["leaves no validation samples"],
    ),
    Case("resume-and-overwrite", ["run", "CONFIG", "--resume", "--overwrite"], ["choose one"]),
    # ---------------------------------------------------------------- models
    Case(
        "student-layer",
        ["run", "CONFIG", "objective.terms.0.student=block.0"],
        ["unknown layer 'block.0' in student mlp; did you mean 'blocks.0'"],
        teacher=True,
    ),
    Case(
        "teacher-layer",
        ["validate", "CONFIG", "objective.terms.0.teacher=heda"],
        ["unknown layer 'heda' in teacher mlp; did you mean 'head'"],
        code=1,
        teacher=True,
    ),
    Case(
        "teacher-classes",
        ["run", "CONFIG", "teacher.name=userbits:five_classes", "teacher.args={}"],
        ["teacher predicts 5 classes and the student 3"],
        teacher=True,
        setup="five_class_teacher",
    ),
    Case(
        "student-classes",
        ["run", "CONFIG", "student.name=userbits:five_classes", "student.args={}"],
        ["student predicts 5 classes but the data has 3"],
    ),
    Case(
        "feature-shape",
        [
            "run",
            "CONFIG",
            "objective.terms.0.student=blocks.0",
            "objective.terms.0.teacher=blocks.1",
            "objective.terms.0.loss=mse",
            "objective.terms.0.args={}",
        ],
        ["(4, 16) vs teacher 'blocks.1' (4, 32)", "adapter: linear"],
        teacher=True,
    ),
    Case(
        "model-bad-args",
        ["run", "CONFIG", "student.args={hiden: [3]}"],
        ["its arguments are", "hidden"],
    ),
    Case(
        "model-not-module",
        ["run", "CONFIG", "student.name=userbits:not_a_module", "student.args={}"],
        ["not a torch.nn.Module"],
    ),
    Case(
        "model-wrong-input",
        ["run", "CONFIG", "student.name=userbits:wrong_input", "student.args={}"],
        ["student userbits:wrong_input failed on a batch of shape (4, 8)", "distill layers"],
    ),
    Case(
        "teacher-weights-mismatch",
        ["run", "CONFIG", "teacher.args={hidden: [7]}"],
        ["weights do not fit the teacher", "shape mismatch"],
        teacher=True,
    ),
    # ---------------------------------------------------------------- data
    Case(
        "empty-train",
        ["run", "CONFIG", "data={name: 'userbits:empty_train'}"],
        ["train split is empty"],
    ),
    Case(
        "negative-label",
        ["run", "CONFIG", "data={name: 'userbits:negative_labels'}"],
        ["has label -2", "labels must be 0..C-1"],
    ),
    Case(
        "float-labels",
        ["run", "CONFIG", "data={name: 'userbits:float_labels'}"],
        ["labels have dtype float32", "must be integers"],
    ),
    Case(
        "nan-inputs",
        ["run", "CONFIG", "data={name: 'userbits:nan_inputs'}"],
        ["hold NaN or inf", "index 7"],
    ),
    Case(
        "length-mismatch",
        ["run", "CONFIG", "data={name: 'userbits:length_mismatch'}"],
        ["200 inputs but 199 labels"],
    ),
    Case(
        "unseen-test-class",
        ["run", "CONFIG", "data={name: 'userbits:unseen_test_class'}"],
        ["label 7, never seen in train"],
    ),
    Case(
        "not-data",
        ["run", "CONFIG", "data={name: 'userbits:not_data'}"],
        ["returned list", "x, y, x_test, y_test"],
    ),
    # ---------------------------------------------------------------- checkpoints
    Case(
        "teacher-truncated",
        ["run", "CONFIG"],
        ["not a readable safetensors file"],
        teacher=True,
        setup="truncate_teacher",
    ),
    Case(
        "teacher-missing",
        ["run", "CONFIG", "teacher.weights=gone.safetensors"],
        ["'gone.safetensors' does not exist"],
        teacher=True,
    ),
    Case(
        "teacher-pickle",
        ["run", "CONFIG"],
        ["not a readable safetensors file"],
        teacher=True,
        setup="pickle_teacher",
    ),
    Case(
        "resume-truncated",
        ["run", "CONFIG", "--resume"],
        ["truncated"],
        setup="prior_run_truncated",
    ),
    Case(
        "resume-checksum",
        ["run", "CONFIG", "--resume"],
        ["checksum mismatch"],
        setup="prior_run_flipped",
    ),
    Case(
        "resume-version",
        ["run", "CONFIG", "--resume"],
        ["format 'distill-9'", "reads 'distill-1'"],
        setup="prior_run_version",
    ),
    Case(
        "resume-other-config",
        ["run", "CONFIG", "--resume", "student.args={hidden: [32]}"],
        ["cannot resume", "student.args.hidden changed"],
        setup="prior_run",
    ),
    Case("resume-nothing", ["run", "CONFIG", "--resume"], ["nothing to resume"]),
    Case(
        "run-dir-taken",
        ["run", "CONFIG"],
        ["already holds a run", "--resume", "--overwrite"],
        setup="prior_run",
    ),
    # ---------------------------------------------------------------- issue 39
    Case("config-random-bytes", ["validate", "RANDOM_YAML"], ["is not UTF-8 text", "byte 0x"]),
    Case(
        "yaml-alias-bomb",
        ["validate", "BOMB_YAML"],
        ["is not valid YAML", "aliases (*name) expand to", "write the values out"],
    ),
    Case(
        "model-arg-wrong-type",
        ["run", "CONFIG", "student.args.hidden=big"],
        ["argument hidden='big' is not a valid Sequence[int]", "distill layers mlp"],
    ),
    Case(
        "csv-ragged-row",
        ["run", "CONFIG", "data={name: table, options: {train: ragged.csv}}"],
        ["cannot read 'ragged.csv' as csv", "Expected 4 fields in line 5, saw 5", "that row"],
        setup="bad_tables",
    ),
    Case(
        "csv-header-then-garbage",
        ["run", "CONFIG", "data={name: table, options: {train: garbage.csv}}"],
        ["cannot read 'garbage.csv' as csv", "UnicodeDecodeError", "UTF-8"],
        setup="bad_tables",
    ),
    Case(  # a one-epoch run would drop the last partial batch and never read this row
        "csv-nan-cell-never-read",
        ["run", "CONFIG", "data={name: table, options: {train: holes.csv}}", "train.epochs=1"],
        ["missing value (empty, NA or NaN) in column 'b' at row 398", "fill or drop"],
        setup="bad_tables",
    ),
    Case(
        "parquet-negative-label",
        ["run", "CONFIG", "data={name: table, options: {train: negative.parquet}}"],
        ["sample 5 has label -5", "negative label is no class", "label_values: [...]"],
        setup="bad_tables",
    ),
    # ---------------------------------------------------------------- run dirs (issue 23)
    Case(
        "overwrite-unmarked-dir",
        ["run", "CONFIG", "--overwrite"],
        ["refuses to clear", "no .distill-run marker", "'thesis.txt'"],
        setup="user_file_in_run_dir",
    ),
    Case(  # issue 39: results.json / metrics in a folder of the user's are no marker
        "overwrite-users-experiment-folder",
        ["run", "CONFIG", "--overwrite"],
        ["refuses to clear", "no .distill-run marker", "'report.md'", "'model.onnx'"],
        setup="users_experiment_folder",
    ),
    Case(
        "run-into-users-experiment-folder",
        ["run", "CONFIG"],
        ["already holds a run", "--resume", "will not clear it", "set run_dir=<new dir>"],
        setup="users_experiment_folder",
        absent=("replace it with --overwrite",),
    ),
    Case(
        "overwrite-run-with-user-file",
        ["run", "CONFIG", "--overwrite"],
        ["files that distill did not write", "'thesis.txt'"],
        setup="prior_run_with_user_file",
    ),
    Case(
        "overwrite-working-dir",
        ["run", "CONFIG", "run_dir=.", "--overwrite"],
        ["refuses to clear '.'", "working directory"],
    ),
    Case(
        "overwrite-config-folder",
        ["run", "SUB_CONFIG", "run_dir=sub", "--overwrite"],
        ["refuses to clear 'sub'", "holds the config file"],
        setup="config_in_subfolder",
    ),
    Case("overwrite-home", ["run", "CONFIG", "run_dir=HOME", "--overwrite"], ["home folder"]),
    Case("overwrite-root", ["run", "CONFIG", "run_dir=/", "--overwrite"], ["file-system root"]),
    Case(
        "run-dir-is-a-file",
        ["run", "CONFIG"],
        ["run_dir", "is a file, not a folder"],
        setup="run_dir_is_a_file",
    ),
    Case(
        "run-dir-under-a-file",
        ["run", "CONFIG", "run_dir=notes.txt/run"],
        ["lies under", "notes.txt", "which is a file"],
        setup="notes_file",
    ),
    Case(
        "fresh-run-would-clobber",
        ["run", "CONFIG"],
        ["was not made by distill", "'config.yaml'", "would overwrite"],
        setup="user_config_in_run_dir",
    ),
    Case("config-is-a-folder", ["run", "sub"], ["is a folder", "YAML file"], setup="subfolder"),
    Case(
        "allow-change-not-allowed",
        ["run", "CONFIG", "--resume", "--allow-change", "train.epochs"],
        ["--allow-change 'train.epochs'", "train.optimizer.lr"],
        setup="prior_run",
    ),
    Case(
        "resume-changed-lr-without-asking",
        ["run", "CONFIG", "--resume", "train.optimizer.lr=0.001"],
        ["cannot resume", "train.optimizer.lr changed", "--allow-change"],
        setup="prior_run",
    ),
    # ---------------------------------------------------------------- strict inputs (issue 23)
    Case("duplicate-yaml-key", ["validate", "DUP_YAML"], ["found the key 'train' twice"]),
    Case(
        "bool-for-number",
        ["validate", "CONFIG", "train.optimizer.lr=true"],
        ["lr must be a number", "True"],
    ),
    Case("inf-for-number", ["validate", "CONFIG", "train.optimizer.lr=.inf"], ["finite number"]),
    Case(
        "negative-term-weight",
        ["validate", "CONFIG", "objective.terms.0.weight=-0.5"],
        ["objective.terms.0.weight", "greater than or equal to 0"],
        teacher=True,
    ),
    Case(
        "train-samples-too-many",
        ["run", "CONFIG", "data.train_samples=100000"],
        ["data.train_samples=100000", "has only 288 samples"],
    ),
    Case(
        "labels-one-to-c",
        ["run", "CONFIG", "data={name: 'userbits:labels_one_to_c'}"],
        ["train labels run 1..3 but never use 0", "y - 1"],
    ),
    Case(
        "stray-large-label",
        ["run", "CONFIG", "data={name: 'userbits:stray_label'}"],
        ["train labels run 0..50 but never use 3, 4", "np.unique"],
    ),
    Case(
        "label-above-fixed-classes",
        ["run", "CONFIG", "data={name: 'userbits:fixed_classes_out_of_range'}"],
        ["train label 5 at index 4 is outside 0..2", "num_classes=3"],
    ),
    Case(
        "teacher-weights-flipped-byte",
        ["run", "CONFIG"],
        ["checksum mismatch", "teacher.safetensors"],
        teacher=True,
        setup="flip_teacher_byte",
    ),
    Case(
        "teacher-torch-save-of-a-module",
        ["run", "CONFIG"],
        ["torch.save", "holds Python objects", "distill.models.zoo.MLP", "model.state_dict()"],
        teacher=True,
        setup="torch_save_whole_teacher",
    ),
    Case(
        "teacher-nan-weights",
        ["run", "CONFIG"],
        ["teacher", "hold NaN or inf", "diverged"],
        teacher=True,
        setup="nan_teacher",
    ),
    Case(
        "augment-wrong-modality",
        ["run", "CONFIG", "data.augment=[{name: shift}]"],
        ["data.augment.0", "'shift' applies to (C, L) signals or (C, H, W) images", "(8,)"],
    ),
    Case(
        "reference-to-stdlib",
        ["validate", "CONFIG", "student.name=os:system", "student.args={}"],
        ["'os' is part of Python's standard library"],
        code=1,
    ),
    Case(
        "reference-to-imported-callable",
        ["validate", "CONFIG", "student.name=userbits:rmtree", "student.args={}"],
        ["is shutil.rmtree, from Python's standard library"],
        code=1,
    ),
    # ---------------------------------------------------------------- CLI misuse
    Case("eval-not-a-run-dir", ["eval", "nowhere"], ["'nowhere' is not a run dir"]),
    Case(
        "layers-bad-json",
        ["layers", "mlp", "--args", "{hidden: 3"],
        ["--args must be a JSON object"],
    ),
    Case("layers-unknown-model", ["layers", "mlpp"], ["unknown model 'mlpp'; did you mean 'mlp'"]),
    Case(
        "layers-config-no-teacher",
        ["layers", "CONFIG", "--role", "teacher"],
        ["has no teacher section"],
    ),
]


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "userbits.py").write_text(textwrap.dedent(USERBITS))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _config(ws: Path, teacher: bool) -> str:
    cfg = synthetic_cfg(ws / "run", train={"epochs": 1})
    cfg["data"]["options"] = {"num_samples": 400, "num_features": 8, "num_classes": 3}
    if teacher:
        weights = make_teacher(ws / "teacher.safetensors")
        cfg.update(
            scheme="offline",
            teacher={"name": "mlp", "args": {"hidden": [32, 32]}, "weights": str(weights)},
            objective={
                "task_weight": 0.5,
                "terms": [{"loss": "kd", "weight": 0.5, "args": {"temperature": 2.0}}],
            },
        )
    path = ws / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _setup(ws: Path, step: str | None, config: str) -> None:
    if step is None:
        return
    if step == "user_file_in_run_dir":
        (ws / "run").mkdir()
        (ws / "run/thesis.txt").write_text("two years of work\n")
    elif step == "bad_tables":
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        rng = np.random.default_rng(0)
        x, y = rng.normal(size=(400, 3)).round(3), rng.integers(0, 3, 400)
        rows = [f"{a},{b},{c},{k}" for (a, b, c), k in zip(x, y)]
        header = "a,b,c,label\n"
        ragged = rows[:3] + [rows[3] + ",9"] + rows[4:]
        (ws / "ragged.csv").write_text(header + "\n".join(ragged) + "\n")
        (ws / "garbage.csv").write_bytes(header.encode() + bytes(range(128, 256)) * 8)
        holes = rows[:398] + ["0.1,,0.3,1"] + rows[399:]
        (ws / "holes.csv").write_text(header + "\n".join(holes) + "\n")
        y[5] = -5
        pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1], "label": y}), ws / "negative.parquet")
    elif step == "users_experiment_folder":  # a person's own results, no distill marker
        (ws / "run/checkpoints").mkdir(parents=True)
        (ws / "run/config.yaml").write_text("lr: 0.1\n")
        (ws / "run/results.json").write_text('{"acc": 0.93}\n')
        (ws / "run/metrics.jsonl").write_text('{"epoch": 1}\n')
        (ws / "run/report.md").write_text("notes\n")
        (ws / "run/model.onnx").write_bytes(bytes(range(256)) * 12)
    elif step == "user_config_in_run_dir":
        (ws / "run").mkdir()
        (ws / "run/config.yaml").write_text("my own notes\n")
    elif step == "run_dir_is_a_file":
        (ws / "run").write_text("not a folder\n")
    elif step == "notes_file":
        (ws / "notes.txt").write_text("notes\n")
    elif step == "subfolder":
        (ws / "sub").mkdir()
    elif step == "config_in_subfolder":
        (ws / "sub").mkdir()
        (ws / "sub/c.yaml").write_text(Path(config).read_text())
    elif step == "flip_teacher_byte":
        data = bytearray((ws / "teacher.safetensors").read_bytes())
        data[-3] ^= 0xFF
        (ws / "teacher.safetensors").write_bytes(bytes(data))
    elif step == "torch_save_whole_teacher":
        import torch as th  # (the whole module pickled, as torch.save(model) does)

        from distill.app.build import build
        from distill.core.config import load_config

        teacher = build(load_config(config)).teacher
        th.save(teacher, ws / "teacher.safetensors")
    elif step == "nan_teacher":
        from distill.core.checkpoint import load_weights, save_weights

        state, _ = load_weights(ws / "teacher.safetensors")
        state["head.weight"][0, 0] = float("nan")
        save_weights(ws / "teacher.safetensors", state)
    elif step == "truncate_teacher":
        data = (ws / "teacher.safetensors").read_bytes()
        (ws / "teacher.safetensors").write_bytes(data[: len(data) // 2])
    elif step == "pickle_teacher":
        import os
        import pickle

        class Payload:
            def __reduce__(self):
                return (os.system, ("touch PWNED",))

        (ws / "teacher.safetensors").write_bytes(pickle.dumps(Payload()))
    elif step == "five_class_teacher":
        import torch

        from distill.core.checkpoint import save_weights

        save_weights(ws / "teacher.safetensors", torch.nn.Linear(8, 5))
    elif step.startswith("prior_run"):
        assert main(["run", config, "train.max_steps=2"]) == 0
        last = ws / "run/checkpoints/last.safetensors"
        if step == "prior_run_with_user_file":
            (ws / "run/thesis.txt").write_text("two years of work\n")
        if step == "prior_run_truncated":
            last.write_bytes(last.read_bytes()[:100])
        elif step == "prior_run_flipped":
            data = bytearray(last.read_bytes())
            data[-5] ^= 0xFF
            last.write_bytes(bytes(data))
        elif step == "prior_run_version":
            import torch
            from safetensors.torch import save_file

            save_file(
                {"x": torch.zeros(1)}, str(last), metadata={"format": "distill-9", "distill": "{}"}
            )


def _snapshot(ws: Path) -> dict[str, bytes]:
    run = ws / "run"
    return (
        {str(p): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
        if run.is_dir()
        else {}
    )


def _user_files(ws: Path) -> dict[str, bytes]:
    """Every file in the workspace (the user's config, notes, weights, run dir)."""
    files = {}
    for p in sorted(ws.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and "profile" not in p.parts:
            files[str(p)] = p.read_bytes()
    return files


def test_the_suite_is_large_enough():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


NEEDS_NO_CUDA = {"cuda-missing"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, workspace: Path, capsys):
    if case.id in NEEDS_NO_CUDA and torch.cuda.is_available():
        pytest.skip("this bad input is only bad on a machine without CUDA")
    config = _config(workspace, case.teacher)
    (workspace / "list.yaml").write_text("- a\n- b\n")
    (workspace / "broken.yaml").write_text("student: {name: mlp\n")
    (workspace / "evil.yaml").write_text(
        "student: !!python/object/apply:os.system ['touch PWNED']\n"
    )
    (workspace / "random.yaml").write_bytes(bytes(range(256)) * 4)
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 8):  # 10^8 leaves from a few hundred bytes
        bomb.append(f"{chr(97 + i)}: &{chr(97 + i)} [{', '.join(['*' + chr(96 + i)] * 10)}]")
    (workspace / "bomb.yaml").write_text("\n".join(bomb) + "\n")
    (workspace / "dup.yaml").write_text(
        "student: {name: mlp}\ntrain: {epochs: 3}\ntrain: {epochs: 5}\n"
    )
    _setup(workspace, case.setup, config)
    capsys.readouterr()
    before = _snapshot(workspace)
    everything = _user_files(workspace)
    names = {
        "CONFIG": config,
        "SUB_CONFIG": "sub/c.yaml",
        "LIST_YAML": "list.yaml",
        "BROKEN_YAML": "broken.yaml",
        "EVIL_YAML": "evil.yaml",
        "DUP_YAML": "dup.yaml",
        "RANDOM_YAML": "random.yaml",
        "BOMB_YAML": "bomb.yaml",
        "run_dir=HOME": f"run_dir={Path.home()}",
    }
    code = main([names.get(a, a) for a in case.argv])
    err = capsys.readouterr().err
    assert code == case.code, err
    assert "Traceback" not in err
    assert len(err) < 6000, f"{len(err)} characters of error text"
    for fragment in case.fragments:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    for advice in case.absent:
        assert advice not in err, f"{advice!r} should not be in:\n{err}"
    assert _snapshot(workspace) == before  # nothing written, nothing half-written
    after = _user_files(workspace)
    assert {k: after.get(k) for k in everything} == everything  # every file is as it was
    assert not (workspace / "PWNED").exists()


@pytest.mark.parametrize("argv", [[], ["trian"], ["demo", "--dataset", "cifar"]])
def test_cli_misuse_is_an_argparse_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage: distill" in capsys.readouterr().err


def test_debug_flag_shows_the_traceback(workspace):
    config = _config(workspace, False)
    with pytest.raises(Exception, match="unknown dataset"):
        main(["--debug", "run", config, "data.name=mnist"])
