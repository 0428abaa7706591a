"""Text classification with Hugging Face models from YAML: a CSV of reviews, a tokenizer
folder, a BERT teacher distilled into a smaller BERT (random-init from configs, offline)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("datasets")

from helpers import reviews_data, write_reviews  # noqa: E402

from distill.app.run import run_experiment  # noqa: E402
from distill.core.config import parse_config  # noqa: E402
from distill.core.errors import ConfigError, DataError  # noqa: E402
from distill.data import load_dataset  # noqa: E402

BERT = {
    "arch": "bert",
    "vocab_size": 40,
    "num_attention_heads": 2,
    "max_position_embeddings": 32,
}


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    """reviews.csv (text, sentiment name) and a WordLevel tokenizer folder `tok/`."""
    return write_reviews(tmp_path_factory.mktemp("reviews"))


def test_text_is_tokenized_to_ids_and_mask(reviews):
    s = load_dataset("table", **reviews_data(reviews)["options"])
    assert s.input_shape == (2, 16) and s.class_names == ["negative", "positive"]
    x, y = s.train[0]
    assert x.dtype == torch.long
    ids, mask = x
    n = int(mask.sum())
    assert mask[:n].all() and not mask[n:].any() and (ids[n:] == 0).all()  # padded with [PAD]
    words = s.train.source.read(int(s.train.positions[0])).split()
    assert n == min(len(words), 16)


def test_bert_teacher_distils_into_a_smaller_bert_from_yaml(tmp_path, reviews):
    teacher_model = {
        "name": "hf_model",
        "args": {**BERT, "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128},
    }
    student_model = {
        "name": "hf_model",
        "args": {**BERT, "hidden_size": 32, "num_hidden_layers": 1, "intermediate_size": 64},
    }
    train = {"epochs": 8, "batch_size": 32, "progress": False}
    teacher = run_experiment(
        parse_config(
            {
                "name": "t",
                "run_dir": str(tmp_path / "t"),
                "scheme": "supervised",
                "data": reviews_data(reviews),
                "student": teacher_model,
                "train": {**train, "optimizer": {"name": "adamw", "lr": 0.001}},
            }
        )
    )
    assert teacher["test_acc"] > 0.9
    kd = run_experiment(
        parse_config(
            {
                "name": "s",
                "run_dir": str(tmp_path / "s"),
                "scheme": "offline",
                "data": reviews_data(reviews),
                "teacher": {**teacher_model, "weights": str(tmp_path / "t")},
                "student": student_model,
                "objective": {
                    "task_weight": 0.5,
                    "terms": [
                        {"loss": "kd", "weight": 0.5},
                        {
                            "loss": "fitnet",
                            "weight": 0.1,
                            "student": "model.bert.encoder.layer.0",
                            "teacher": "model.bert.encoder.layer.1",
                            "adapter": "tokens",
                        },
                    ],
                },
                "train": {**train, "optimizer": {"name": "adamw", "lr": 0.003}},
            }
        )
    )
    assert kd["complete"] and kd["teacher_test_acc"] == teacher["test_acc"]
    assert kd["test_acc"] > 0.8


def test_a_save_pretrained_folder_loads_with_the_same_logits(tmp_path, reviews):
    from distill.models import build_model

    torch.manual_seed(0)
    args = {**BERT, "hidden_size": 32, "num_hidden_layers": 1, "intermediate_size": 64}
    model = build_model("hf_model", (2, 16), 2, args).eval()
    model.model.save_pretrained(tmp_path / "bert")
    again = build_model("hf_model", (2, 16), 2, {"path": str(tmp_path / "bert")}).eval()
    x = load_dataset("table", **reviews_data(reviews)["options"]).test[0][0][None]
    torch.testing.assert_close(model(x).logits, again(x).logits)
    three = build_model("hf_model", (2, 16), 3, {"path": str(tmp_path / "bert")})
    assert three(x).logits.shape == (1, 3)  # a new head for another class count
    with pytest.raises(ConfigError, match="not a folder saved by save_pretrained"):
        build_model("hf_model", (2, 16), 2, {"path": str(tmp_path)})
    with pytest.raises(ConfigError, match="path .* or arch"):
        build_model("hf_model", (2, 16), 2, {})


def test_text_without_a_tokenizer_is_refused_with_the_fix(reviews):
    opts = reviews_data(reviews)["options"]
    with pytest.raises(ConfigError, match="holds text; give tokenizer"):
        load_dataset("table", **{k: v for k, v in opts.items() if k != "tokenizer"})
    with pytest.raises(DataError, match="for text classification give text: review"):
        load_dataset("table", train=opts["train"], label="sentiment")
    with pytest.raises(ConfigError, match="tokenizer .* is not a folder"):
        load_dataset("table", **{**opts, "tokenizer": str(reviews / "nope")})


@pytest.fixture(scope="module")
def trained_bert(tmp_path_factory, reviews):
    run = tmp_path_factory.mktemp("bert") / "run"
    args = {**BERT, "hidden_size": 32, "num_hidden_layers": 1, "intermediate_size": 64}
    result = run_experiment(
        parse_config(
            {
                "name": "b",
                "run_dir": str(run),
                "scheme": "supervised",
                "data": reviews_data(reviews),
                "student": {"name": "hf_model", "args": args},
                "train": {"epochs": 2, "batch_size": 32, "progress": False},
            }
        )
    )
    assert result["complete"]
    return run


def test_export_hf_folder_loads_with_auto_classes_and_its_tokenizer(trained_bert, reviews):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill.app.artifacts import export_run
    from distill.app.assess import load_run

    info = export_run(trained_bert, "hf")
    assert info["max_abs_logit_diff"] == 0.0
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(info["files"])
    model = AutoModelForSequenceClassification.from_pretrained(info["path"]).eval()
    tok = AutoTokenizer.from_pretrained(info["path"])
    enc = tok(["a good film", "the plot was awful and bad"], padding=True, return_tensors="pt")
    student, _, _ = load_run(trained_bert)
    x = torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(**enc).logits, student(x).logits)
    with pytest.raises(ConfigError, match="earlier export; add --overwrite"):
        export_run(trained_bert, "hf")
    assert export_run(trained_bert, "hf", overwrite=True)["max_abs_logit_diff"] == 0.0


def test_export_onnx_token_model_takes_integer_ids_of_any_batch_and_length(trained_bert):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from distill.app.artifacts import export_run
    from distill.app.assess import load_run

    info = export_run(trained_bert, "onnx")
    assert info["max_abs_logit_diff"] < 1e-4
    sess = ort.InferenceSession(f"{info['path']}/model.onnx", providers=["CPUExecutionProvider"])
    assert [i.type for i in sess.get_inputs()] == ["tensor(int64)", "tensor(int64)"]
    student, _, _ = load_run(trained_bert)
    ids = torch.randint(4, 40, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    got = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        want = student(torch.stack([ids, mask], 1)).logits
    assert float((torch.from_numpy(got) - want).abs().max()) < 1e-4


def test_export_refuses_a_user_folder_and_non_hf_students(trained_bert, tmp_path):
    from distill.app.artifacts import export_run

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="did not write"):
        export_run(trained_bert, "torchscript", tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    info = export_run(trained_bert, "torchscript", tmp_path / "ts")
    assert info["max_abs_logit_diff"] == 0.0 and "model.pt" in info["files"]


@pytest.mark.parametrize("out_dim", [None, 8])
def test_sentence_transformers_folder_encodes_identically(tmp_path, reviews, out_dim):
    pytest.importorskip("sentence_transformers")
    from transformers import AutoTokenizer, BertConfig, BertModel

    from distill.app.artifacts import check_sentence_transformers, write_sentence_transformers
    from distill.models.encoders import SentenceEncoder

    torch.manual_seed(0)
    backbone = BertModel(
        BertConfig(
            vocab_size=40,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=32,
        )
    )
    encoder = SentenceEncoder(backbone, out_dim=out_dim).eval()
    tok = AutoTokenizer.from_pretrained(str(reviews / "tok"))
    write_sentence_transformers(encoder, tok, tmp_path, max_length=16)
    long = "the movie was very good and the plot was quite fine but the actor was bad and it is"
    assert len(tok(long)["input_ids"]) > 16  # cut at the trained 16 tokens on both sides
    texts = ["a good film", "the plot was awful and bad", "it is fine", long]
    assert check_sentence_transformers(encoder, tok, tmp_path, texts, 16) >= 0.99999
    assert (tmp_path / "2_Dense").is_dir() == (out_dim is not None)


def test_text_from_a_hugging_face_dataset_map_style_and_streamed(tmp_path, reviews):
    import csv as csv_module

    from datasets import Dataset

    with open(reviews / "reviews.csv") as f:
        rows = list(csv_module.DictReader(f))
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    opts = {
        "text": "review",
        "label": "sentiment",
        "tokenizer": str(reviews / "tok"),
        "max_length": 16,
    }
    s = load_dataset("hf", path=str(tmp_path / "saved"), **opts)
    assert s.input_shape == (2, 16) and s.class_names == ["negative", "positive"]
    assert s.train[0][0].dtype == torch.long
    (tmp_path / "parts").mkdir()
    Dataset.from_list(rows[:500]).to_parquet(str(tmp_path / "parts" / "train.parquet"))
    Dataset.from_list(rows[500:]).to_parquet(str(tmp_path / "parts" / "test.parquet"))
    files = {
        "train": str(tmp_path / "parts/train.parquet"),
        "test": str(tmp_path / "parts/test.parquet"),
    }
    streamed = load_dataset(
        "hf",
        path="parquet",
        data_files=files,
        streaming=True,
        val_samples=50,
        class_names=["negative", "positive"],
        **opts,
    )
    assert streamed.input_shape == (2, 16)
    x, y = next(iter(streamed.train))
    assert x.dtype == torch.long and y in (0, 1)
