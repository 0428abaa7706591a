import json

import torch
import yaml
from helpers import REPO, make_teacher, synthetic_cfg

from distill.app.cli import main
from distill.app.demo import demo_configs, run_demo


def _write(tmp_path, cfg, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_run_then_resume_through_the_cli(tmp_path, capsys):
    path = _write(tmp_path, synthetic_cfg(tmp_path / "r", train={"epochs": 2}))
    assert main(["run", path, "train.max_steps=3"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["complete"] is False and first["steps"] == 3
    assert main(["run", path]) == 2  # refuses to overwrite
    assert "already holds a run" in capsys.readouterr().err
    assert main(["run", path, "--resume"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["complete"] and done["epochs"] == 2 and done["test_acc"] > 0.9


def test_validate_reports_the_mistyped_layer(tmp_path, capsys):
    teacher = make_teacher(tmp_path / "t.safetensors")
    cfg = synthetic_cfg(
        tmp_path / "r",
        scheme="offline",
        teacher={"name": "mlp", "args": {"hidden": [32, 32]}, "weights": str(teacher)},
        objective={
            "terms": [
                {"loss": "mse", "student": "blocks.0", "teacher": "blocks.1", "adapter": "linear"}
            ]
        },
    )
    path = _write(tmp_path, cfg)
    assert main(["validate", path]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["validate", path, "objective.terms.0.teacher=block.1"]) == 1
    err = capsys.readouterr().err
    assert "unknown layer 'block.1' in teacher mlp; did you mean 'blocks.1'" in err
    assert main(["validate", path, "objective.terms.0.los=kd"]) == 2
    assert "did you mean 'loss'" in capsys.readouterr().err


def test_methods_json(capsys):
    assert main(["methods", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(set(r) == {"name", "family", "paper"} for r in rows)
    names = {r["name"] for r in rows}
    assert {"kd", "soft_ce", "mse", "reverse_kl", "js", "offline", "supervised"} <= names
    assert main(["methods"]) == 0
    assert "Hinton" in capsys.readouterr().out


def test_layers(capsys):
    assert main(["layers", "resnet", "--args", '{"widths": [4, 8]}']) == 0
    out = capsys.readouterr().out
    assert "layer2" in out and "1x8x20" in out
    assert main(["layers", "convnet", "--dataset", "digits", "--args", '{"channels": [4]}']) == 0
    assert "1x4x4x4" in capsys.readouterr().out


def test_demo_configs_share_one_recipe(tmp_path):
    cfgs = demo_configs("mnist1d", tmp_path)
    scratch, kd = cfgs["student-scratch"], cfgs["student-kd"]
    assert (
        scratch["train"] == kd["train"]
        and scratch["data"] == kd["data"]
        and scratch["student"] == kd["student"]
    )
    assert kd["teacher"]["weights"] == str(tmp_path / "teacher")


def test_demo_end_to_end_short(tmp_path):
    result = run_demo("digits", tmp_path, epochs=2)
    rows = {r["model"]: r for r in result["rows"]}
    assert set(rows) == {"teacher", "student-scratch", "student-kd"}
    assert rows["teacher"]["agreement"] == 1.0
    assert (
        rows["student-kd"]["params"]
        == rows["student-scratch"]["params"]
        < rows["teacher"]["params"]
    )
    assert all(r["latency_ms"] > 0 and r["size_bytes"] > 0 for r in rows.values())


def test_example_configs_match_the_demo_recipe(tmp_path):
    # The YAML quick start and the demo must describe the same experiment.

    from distill.core.config import load_config, parse_config

    root = REPO / "configs"
    demo = demo_configs("mnist1d", tmp_path)
    pairs = {
        "mnist1d_teacher.yaml": "teacher",
        "mnist1d_scratch.yaml": "student-scratch",
        "mnist1d_kd.yaml": "student-kd",
    }
    for filename, key in pairs.items():
        from_yaml = load_config(root / filename).model_dump()
        from_demo = parse_config(demo[key]).model_dump()
        for section in ("data", "student", "objective", "scheme"):
            assert from_yaml[section] == from_demo[section], (filename, section)
        assert {k: v for k, v in from_yaml["train"].items() if k not in ("seed", "progress")} == {
            k: v for k, v in from_demo["train"].items() if k not in ("seed", "progress")
        }
        if key == "student-kd":
            assert from_yaml["teacher"]["args"] == from_demo["teacher"]["args"]


def test_a_model_returning_a_tuple_trains_evaluates_and_exports(tmp_path, monkeypatch, capsys):
    (tmp_path / "tuplenet.py").write_text(
        "import torch\n"
        "from torch import nn\n"
        "class TupleNet(nn.Module):\n"
        "    def __init__(self, num_classes: int, hidden: int = 16):\n"
        "        super().__init__()\n"
        "        self.body = nn.Sequential(nn.Linear(8, hidden), nn.ReLU())\n"
        "        self.head = nn.Linear(hidden, num_classes)\n"
        "    def forward(self, x):\n"
        "        h = self.body(x)\n"
        "        return self.head(h), h  # (logits, features), as many codebases do\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = synthetic_cfg(tmp_path / "r", train={"epochs": 2})
    cfg["student"] = {"name": "tuplenet:TupleNet", "args": {}}
    path = _write(tmp_path, cfg)
    assert main(["validate", path]) == 0
    capsys.readouterr()
    assert main(["run", path]) == 0  # the end of the first epoch evaluates it
    result = json.loads(capsys.readouterr().out)
    assert result["complete"] and result["test_acc"] > 0.9
    assert main(["eval", str(tmp_path / "r"), "--eps", "0.05"]) == 0
    from distill.compress.export import export_onnx, parity
    from distill.models import build_model

    model = build_model("tuplenet:TupleNet", (8,), 3, {})
    export_onnx(model, (8,), tmp_path / "m.onnx")
    assert parity(model, tmp_path / "m.onnx", torch.randn(16, 8))["top1_agreement"] == 1.0


def test_demo_prints_a_line_per_epoch_without_a_terminal(tmp_path, capsys):
    # capsys' stderr is not a TTY, like `distill demo > log 2>&1`
    assert main(["demo", "--dataset", "digits", "--epochs", "2", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert err.count("epoch 1/2") >= 3 and err.count("epoch 2/2") >= 3  # each of the 3 models
