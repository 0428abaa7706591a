"""Several LM teachers for one student (issue 42): rows routed by a data column to the
teacher of their domain, or a fixed mixture; teachers of different kinds (the run's own
teacher section and a cache of another teacher); each teacher's loss reported, checked
against its formula; and the refusals."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

pytest.importorskip("transformers")
pytest.importorskip("datasets")

from distill.app.build import build
from distill.app.cli import main
from distill.app.run import run_experiment
from distill.core.checkpoint import save_weights
from distill.core.config import parse_config
from distill.core.errors import ConfigError
from distill.data import load_batch
from distill.llm.lm_loss import lm_losses_from_logits
from distill.losses.divergences import sparse_kd_loss
from distill.models import build_model

GPT2 = {"name": "hf_causal_lm", "args": {"arch": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2}}
WORDS = ["river", "stone", "cloud", "quiet", "morning", "light", "garden", "slow", "bread", "warm"]


def _rows(n: int) -> list[dict]:
    rng = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        pick = torch.randint(0, len(WORDS), (5,), generator=rng).tolist()
        if i % 2:
            rows.append({"text": " ".join(WORDS[j] for j in pick), "domain": "prose"})
        else:
            rows.append({"text": f"def f{pick[0]}(x): return x * {pick[1]} + {pick[2]}",
                         "domain": "code"})  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("routing")
    (root / "data.jsonl").write_text("\n".join(json.dumps(r) for r in _rows(160)))
    data = {"name": "hf_text", "options": {"path": str(root / "data.jsonl"), "tokenizer": "bytes",
                                           "length": 32, "route_column": "domain"}}  # fmt: skip
    for i, name in enumerate(("code", "prose")):
        torch.manual_seed(i)
        save_weights(
            root / f"{name}.safetensors", build_model(GPT2["name"], (32,), 259, GPT2["args"])
        )
    base = {
        "name": "r", "data": data, "student": GPT2,
        "train": {"epochs": 1, "batch_size": 16, "progress": False, "monitor": "nll"},
    }  # fmt: skip
    prose = {**base, "run_dir": str(root / "p"), "scheme": {"name": "lm_kd"},
             "teacher": {**GPT2, "weights": str(root / "prose.safetensors")}}  # fmt: skip
    (root / "prose.yaml").write_text(yaml.safe_dump(prose))
    assert (
        main(["lm-cache", str(root / "prose.yaml"), "--out", str(root / "cache"), "--k", "16"]) == 0
    )
    return root, base


def _cfg(root, base, route: dict, **args) -> dict:
    return {
        **base,
        "run_dir": str(root / "run"),
        "scheme": {"name": "lm_kd", "args": {"route": route, **args}},
        "teacher": {**GPT2, "weights": str(root / "code.safetensors")},
    }


TEACHERS = lambda root: {"code": {"local": True}, "prose": {"cache": str(root / "cache")}}  # noqa: E731


def test_each_row_learns_from_its_domains_teacher(setup):
    root, base = setup
    built = build(parse_config(_cfg(root, base, {"teachers": TEACHERS(root)})))
    built.student.eval()  # no dropout: the step's logits and these are the same
    batch = load_batch(built.data.train, torch.arange(12))
    out = built.scheme.step(dict(batch), 0)
    z = built.student(input_ids=batch["input"], attention_mask=batch["attention_mask"]).logits
    y, n = batch["target"], (batch["target"] >= 0).sum()
    code = built.data.train.route_names.index("code")
    rows = {"code": batch["route"] == code, "prose": batch["route"] != code}
    assert rows["code"].any() and rows["prose"].any()
    with torch.no_grad():
        z_t = built.teacher(input_ids=batch["input"][rows["code"]]).logits
    want_code = lm_losses_from_logits(z[rows["code"]], z_t, y[rows["code"]],
                                      divergence="forward_kl", num_tokens=n)[0]  # fmt: skip
    ids, values, extra = built.scheme.router.sources["prose"].rows(batch["index"][rows["prose"]])
    want_prose = sparse_kd_loss(z[rows["prose"]], ids, values, extra, "topk",
                                mask=y[rows["prose"]] >= 0, num_tokens=n)  # fmt: skip
    torch.testing.assert_close(out["kd_code"], want_code)
    torch.testing.assert_close(out["kd_prose"], want_prose)
    torch.testing.assert_close(out["kd"], want_code + want_prose)
    # a fixed mixture: every row learns from both, weights normalised
    mixed = build(parse_config(_cfg(root, base, {"teachers": TEACHERS(root),
                                                 "weights": {"code": 3, "prose": 1}})))  # fmt: skip
    mixed.student.load_state_dict(built.student.state_dict())
    mixed.student.eval()
    out = mixed.scheme.step(dict(batch), 0)
    with torch.no_grad():
        z_t = built.teacher(input_ids=batch["input"]).logits
    all_code = lm_losses_from_logits(z, z_t, y, divergence="forward_kl", num_tokens=n)[0]
    ids, values, extra = mixed.scheme.router.sources["prose"].rows(batch["index"])
    all_prose = sparse_kd_loss(z, ids, values, extra, "topk", mask=y >= 0, num_tokens=n)
    torch.testing.assert_close(out["kd"], 0.75 * all_code + 0.25 * all_prose)


def test_routed_training_end_to_end_and_refusals(setup):
    root, base = setup
    cfg = _cfg(root, base, {"teachers": TEACHERS(root)}, kd_weight=1.0)
    result = run_experiment(parse_config(cfg))
    assert result["complete"] and result["test_ppl"] > 1
    assert result["teacher_source"].startswith("2 teachers, routed by the data's column (code:")
    # a cache and a server alone need no teacher section: nothing is loaded
    both = {"a": {"cache": str(root / "cache")}, "b": {"cache": str(root / "cache")}}
    no_local = {**cfg, "scheme": {"name": "lm_kd", "args": {"route": {
        "teachers": both, "weights": {"a": 1, "b": 1}}}}}  # fmt: skip
    no_local.pop("teacher")
    assert build(parse_config(no_local)).teacher is None

    def refused(route: dict, match: str, **args) -> None:
        with pytest.raises(ConfigError, match=match):
            build(parse_config(_cfg(root, base, route, **args)))

    refused({"teachers": {"code": {"local": True}, "other": {"cache": str(root / "cache")}}},
            r"names \['prose'\] \(68 training rows\), which are not among")  # fmt: skip
    refused({"teachers": TEACHERS(root), "weights": {"code": 1}}, "give a weight >= 0 for each")
    refused({"teachers": TEACHERS(root)}, "forward KL at temperature 1", divergence="jsd")
    refused({"teachers": TEACHERS(root)}, "cannot be combined", chunk_size=8)
    with pytest.raises(ConfigError, match="one of local: true, cache: PATH or server"):
        build(parse_config(_cfg(root, base, {"teachers": {"a": {}, "b": {"local": True}}})))
    plain = _cfg(root, base, {"teachers": TEACHERS(root)})
    plain["data"] = {**plain["data"], "options": {**plain["data"]["options"]}}
    del plain["data"]["options"]["route_column"]
    with pytest.raises(ConfigError, match="set data.options.route_column"):
        build(parse_config(plain))
