"""distill auto's students from families it does not build itself: a Hugging Face encoder
with every k-th layer kept and initialised from the teacher (as DistilBERT was made), and
timm / torchvision models by name. The whole command runs on a BERT teacher and text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import reviews_data, stand_in_vision, write_reviews

pytest.importorskip("transformers")

from distill.app.auto.candidates import family_students, label_of, propose  # noqa: E402
from distill.app.auto.families import init_from_teacher, named_students  # noqa: E402
from distill.app.auto.settings import AutoSettings  # noqa: E402
from distill.models import build_model  # noqa: E402

BERT = {
    "arch": "bert",
    "vocab_size": 40,
    "num_attention_heads": 2,
    "max_position_embeddings": 32,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 4,
}


def _bert(args=BERT, seed=0):
    torch.manual_seed(seed)
    return build_model("hf_model", (2, 16), 2, dict(args))


def test_an_encoder_keeps_every_kth_layer_and_starts_from_the_teachers_weights():
    teacher = _bert()
    specs = family_students({"name": "hf_model", "args": BERT}, teacher)
    kept = {s["args"]["num_hidden_layers"]: s["init_layers"] for s in specs if "init_layers" in s}
    assert kept[2] == [0, 2] and kept[1] == [0]  # k = 2, and k = 4 (k = 3 repeats k = 2)
    narrow = [s for s in specs if "init_layers" not in s]
    assert narrow[0]["args"]["hidden_size"] == 16 and narrow[0]["args"]["num_hidden_layers"] == 2
    spec = next(s for s in specs if s.get("init_layers") == [0, 2])
    assert label_of(spec).endswith("from teacher layers [0, 2]")
    student = build_model("hf_model", (2, 16), 2, spec["args"])
    copied, total = init_from_teacher(student, teacher, [0, 2], 4)
    assert copied == total  # same width: every tensor comes from the teacher
    ours, theirs = student.state_dict(), teacher.state_dict()
    layer = "model.bert.encoder.layer.{}.attention.self.query.weight"
    assert torch.equal(ours[layer.format(1)], theirs[layer.format(2)])
    assert torch.equal(ours[layer.format(0)], theirs[layer.format(0)])
    emb = "model.bert.embeddings.word_embeddings.weight"
    assert torch.equal(ours[emb], theirs[emb])
    assert torch.equal(ours["model.classifier.weight"], theirs["model.classifier.weight"])


def test_distilbert_fields_and_a_saved_folder_give_students_too(tmp_path):
    distil = {"arch": "distilbert", "vocab_size": 40, "dim": 32, "hidden_dim": 64,
              "n_heads": 2, "n_layers": 4, "max_position_embeddings": 32}  # fmt: skip
    teacher = _bert(distil)
    specs = family_students({"name": "hf_model", "args": distil}, teacher)
    assert {s["args"]["n_layers"] for s in specs if s.get("init_layers")} == {2, 1}
    for spec in specs:
        assert "num_hidden_layers" not in spec["args"]  # the config's own spelling
        student = build_model("hf_model", (2, 16), 2, spec["args"])
        if spec.get("init_layers"):
            copied, total = init_from_teacher(student, teacher, spec["init_layers"], 4)
            assert copied == total
    bert = _bert()
    bert.model.save_pretrained(tmp_path / "bert")
    saved = {"task": "sequence_classification", "path": str(tmp_path / "bert")}
    specs = family_students({"name": "hf_model", "args": saved}, bert)
    for spec in specs:  # built from the folder's config, without the folder
        assert "path" not in spec["args"] and spec["args"]["arch"] == "bert"
        build_model("hf_model", (2, 16), 2, spec["args"])


def test_timm_and_torchvision_families_by_name(monkeypatch, tmp_path):
    assert [s["args"]["model"] for s in named_students(
        {"name": "torchvision", "args": {"model": "resnet50"}})] == ["resnet34", "resnet18"]  # fmt: skip
    effnet = named_students(
        {"name": "timm", "args": {"model": "efficientnet_b2", "drop_rate": 0.1}}
    )
    assert [s["args"] for s in effnet] == [
        {"model": "efficientnet_b1", "drop_rate": 0.1},
        {"model": "efficientnet_b0", "drop_rate": 0.1},
    ]
    assert named_students({"name": "timm", "args": {"model": "my_own_net"}}) == []
    seen = []
    stand_in_vision(monkeypatch, seen)
    settings = AutoSettings(
        teacher={"name": "timm", "args": {"model": "resnet50"}, "weights": "w"},
        data={"name": "synthetic"},
        out=str(tmp_path / "auto"),
    )
    from distill.app.auto.candidates import Profile

    images = [(torch.randn(3, 8, 8), 0)]
    data = type("D", (), {"input_shape": (3, 8, 8), "num_classes": 4, "train": images})()
    teacher = Profile("teacher", {"name": "timm", "args": {"model": "resnet50"}}, 10**6, 4, 1.0)
    profiles = propose(settings, data, teacher)
    assert [p.spec["args"]["model"] for p in profiles] == ["resnet34", "resnet18"]
    assert any(s[:2] == ("timm", "resnet18") for s in seen)
    assert all(p.params > 0 for p in profiles)


@pytest.fixture(scope="module")
def bert_teacher(tmp_path_factory):
    from distill.app.run import run_experiment
    from distill.core.config import parse_config

    root = write_reviews(tmp_path_factory.mktemp("reviews"))
    data = reviews_data(root)
    cfg = {
        "name": "bert-teacher",
        "run_dir": str(root / "teacher"),
        "scheme": "supervised",
        "data": data,
        "student": {"name": "hf_model", "args": BERT},
        "train": {"epochs": 8, "batch_size": 32, "progress": False,
                  "optimizer": {"name": "adamw", "lr": 1e-3}},
    }  # fmt: skip
    assert run_experiment(parse_config(cfg))["test_acc"] > 0.8
    (root / "teacher.yaml").write_text(yaml.safe_dump(cfg))
    return root


@pytest.mark.slow  # one of the longest end-to-end checks: python -m pytest -m slow
def test_auto_on_a_bert_teacher_searches_its_layer_dropped_students(bert_teacher, tmp_path):
    from distill.app.cli import main

    out = tmp_path / "auto"
    args = ["auto", "--teacher", str(bert_teacher / "teacher"), "--model-config",
            str(bert_teacher / "teacher.yaml"), "--max-candidates", "1", "--trials", "1",
            "--methods", "kd", "--epochs", "2", "--seeds", "2", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "auto.json").read_text())
    students = {a["student"] for a in summary["comparison"]}
    assert students == {"hf_model(arch=bert, hidden_size=32, intermediate_size=64, "
                        "num_hidden_layers=2) from teacher layers [0, 2]"}  # fmt: skip
    by_role = {a["role"]: a for a in summary["comparison"]}
    # the KD baseline starts from the teacher's layers, scratch from random weights
    kd, scratch = (
        yaml.safe_load((Path(by_role[r]["run_dirs"][0]) / "config.yaml").read_text())
        for r in ("kd", "scratch")
    )
    assert kd["student"]["weights"].endswith("init.safetensors")
    assert scratch["student"].get("weights") is None
    assert (out / "student.safetensors").is_file()
