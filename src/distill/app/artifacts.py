"""`distill export RUN_DIR --format hf|onnx|torchscript`: a trained student in a standard format.

- `hf`: a Hugging Face folder (`config.json`, `model.safetensors`, and the tokenizer files
  when the data was tokenized) that `AutoModelFor...from_pretrained` loads, for students
  that are Hugging Face models (`hf_model`, `hf_causal_lm`, `hf_pretrained`);
- `sentence-transformers`: for embedding students (`SentenceEncoder`: a transformer, mean
  pooling, an optional projection, L2 normalisation), the folder `SentenceTransformer(path)`
  loads: the transformer and tokenizer at the top, then `1_Pooling`, `2_Dense` (when
  projected) and `3_Normalize` modules, as `modules.json` lists them;
- `onnx`: `model.onnx`; a token classifier takes integer `input_ids` and `attention_mask`
  of dynamic batch and length, other models their input tensor with a dynamic batch;
- `torchscript`: `model.pt` (traced), loaded with `torch.jit.load`.

Every export is checked before it is kept: the exported model is loaded back (by
`from_pretrained`, ONNX Runtime or `torch.jit.load`) and its logits on test samples are
compared with the PyTorch student's; the largest difference is reported. The folder is
written next to its destination and renamed into place, so an interrupted export leaves
nothing that looks complete; an existing destination is replaced only when a previous
export wrote it (it holds `.distill-export`) and `overwrite` is given.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.core.checkpoint import fsync_dir
from distill.core.errors import ConfigError
from distill.taps import logits_of

FORMATS = ("hf", "sentence-transformers", "onnx", "torchscript")
MARKER = ".distill-export"


def _hf_inner(model: nn.Module) -> Any:
    """The transformers model inside a distill student, or None."""

    def is_hf(m: Any) -> bool:
        return hasattr(m, "save_pretrained") and hasattr(m, "config")

    if is_hf(model):  # a transformers model itself (hf_causal_lm, hf_pretrained)
        return model
    inner = getattr(model, "model", None)  # hf_model's wrappers hold it as .model
    return inner if is_hf(inner) else None


def _test_inputs(data: Any, n: int = 8) -> torch.Tensor:
    from distill.evaluate import iter_batches

    return next(iter(iter_batches(data.test, n)))["input"][:n]


def _destination(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise ConfigError(
                f"export destination {str(out)!r} holds files distill did not write; give "
                f"another --out (nothing was changed)"
            )
        if not overwrite:
            raise ConfigError(
                f"{str(out)!r} holds an earlier export; add --overwrite to replace it"
            )


def _write_hf(model: nn.Module, data: Any, cfg: Any, tmp: Path) -> str:
    """The student as a `save_pretrained` folder and its tokenizer beside it; returns which
    tokenizer was saved."""
    inner = _hf_inner(model)
    if inner is None:
        raise ConfigError(
            f"--format hf needs a Hugging Face student (hf_model, hf_causal_lm, hf_pretrained); "
            f"this one is {type(model).__name__}: use --format onnx or torchscript"
        )
    if hasattr(inner, "merge_and_unload"):  # a PEFT student: the adapter merged in
        import copy

        inner = copy.deepcopy(inner).merge_and_unload()
    inner.save_pretrained(tmp, safe_serialization=True)
    tok = getattr(data, "tokenizer", None)
    folder = (cfg.data.options or {}).get("tokenizer")
    if tok is None and isinstance(folder, str) and Path(folder).expanduser().is_dir():
        from transformers import AutoTokenizer  # text columns tokenised in the data pipeline

        tok = AutoTokenizer.from_pretrained(str(Path(folder).expanduser()), local_files_only=True)
    return save_tokenizer(tok, tmp)


def save_tokenizer(tok: Any, path: Path) -> str:
    """`tok` written as Hugging Face tokenizer files into `path` (what `AutoTokenizer`
    loads), whichever kind it is: a `transformers` tokenizer, one distill wraps, or
    distill's own BPE / `tokenizer.json` (given its BOS, EOS and PAD tokens). The byte
    tokenizer has no Hugging Face form and is described instead. Returns what was saved."""
    if tok is None:
        return "none: the data has no tokenizer"
    hf = getattr(tok, "hf", None)
    if hf is None and hasattr(tok, "save_pretrained"):
        hf = tok
    if hf is not None:
        hf.save_pretrained(str(path))
        return str(getattr(tok, "name", None) or getattr(hf, "name_or_path", "") or type(hf))
    inner = getattr(tok, "tok", None)  # distill.llm.text.HFTokenizer: a `tokenizers` object
    if inner is None:
        return (
            f"{getattr(tok, 'name', type(tok).__name__)}: not saved (it has no Hugging Face "
            f"form; ids 0-255 are UTF-8 bytes, {tok.bos_id} BOS, {tok.eos_id} EOS, "
            f"{tok.pad_id} PAD)"
        )
    from transformers import PreTrainedTokenizerFast

    name = inner.id_to_token
    PreTrainedTokenizerFast(
        tokenizer_object=inner,
        bos_token=name(tok.bos_id),
        eos_token=name(tok.eos_id),
        pad_token=name(tok.pad_id),
    ).save_pretrained(str(path))
    return Path(tok.name).name


def _check_hf(model: nn.Module, tmp: Path, x: torch.Tensor) -> float:
    inner = _hf_inner(model)
    peft = hasattr(inner, "merge_and_unload")
    cls = type(inner.get_base_model()) if peft else type(inner)
    again = cls.from_pretrained(str(tmp), local_files_only=True, use_safetensors=True).eval()
    wrapped = type(model)(again) if inner is not model and not peft else again
    with torch.no_grad():
        return float((logits_of(wrapped(x)) - logits_of(model(x))).abs().max())


def _write_dense(proj: nn.Linear, dense: Path) -> None:
    """The projection head as a sentence-transformers Dense module folder."""
    from safetensors.torch import save_file

    dense.mkdir()
    config = {
        "in_features": proj.in_features,
        "out_features": proj.out_features,
        "bias": proj.bias is not None,
        "activation_function": "torch.nn.modules.linear.Identity",
    }
    (dense / "config.json").write_text(json.dumps(config))
    weights = {"linear.weight": proj.weight.detach().contiguous()}
    if proj.bias is not None:
        weights["linear.bias"] = proj.bias.detach().contiguous()
    save_file(weights, str(dense / "model.safetensors"))


def write_sentence_transformers(
    encoder: nn.Module, tokenizer: Any, path: Path, max_length: int
) -> None:
    """`encoder` (a distill SentenceEncoder) as a sentence-transformers folder at `path`."""
    backbone = encoder.backbone
    width = backbone.config.hidden_size
    backbone.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    (path / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_length, "do_lower_case": False})
    )
    pooling = {
        "word_embedding_dimension": width,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=1))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if encoder.project is not None:
        _write_dense(encoder.project, path / "2_Dense")
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
        )
    if encoder.normalize:
        (path / "3_Normalize").mkdir()
        modules.append(
            {
                "idx": len(modules),
                "name": str(len(modules)),
                "path": "3_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
    (path / "modules.json").write_text(json.dumps(modules, indent=1))


def check_sentence_transformers(
    encoder: nn.Module, tokenizer: Any, path: Path, texts: list[str], max_length: int
) -> float:
    """The smallest cosine similarity between the folder's and the encoder's embeddings,
    both reading the texts cut at the trained `max_length` tokens (what the folder's
    sentence_bert_config.json tells sentence-transformers)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ConfigError(
            "checking a sentence-transformers export needs the package: pip install "
            "torch==<your torch> sentence-transformers"
        ) from None
    loaded = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    got = loaded.encode(texts, convert_to_tensor=True, normalize_embeddings=False)
    enc = tokenizer(
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    with torch.no_grad():
        want = encoder.eval()(enc["input_ids"], enc["attention_mask"])
    return float(torch.nn.functional.cosine_similarity(got.float(), want.float(), dim=-1).min())


def _write_onnx(model: nn.Module, x: torch.Tensor, tmp: Path) -> float:
    from distill.compress.export import export_onnx, onnx_logits
    from distill.models.hf_auto import TokenClassifier

    if isinstance(model, TokenClassifier):  # (N, 2, L): token ids and mask stacked
        return _ids_onnx(model.model, x[:, 0].long(), x[:, 1].long(), tmp, per_token=False)
    if _hf_inner(model) is model and x.dim() == 2:  # a causal LM: (N, L) token ids
        ids = x.long()
        return _ids_onnx(model, ids, torch.ones_like(ids), tmp, per_token=True)
    export_onnx(model, tuple(x.shape[1:]), tmp / "model.onnx")
    with torch.no_grad():
        return float((onnx_logits(tmp / "model.onnx", x) - logits_of(model(x))).abs().max())


def _ids_onnx(
    inner: nn.Module, ids: torch.Tensor, mask: torch.Tensor, tmp: Path, *, per_token: bool
) -> float:
    """A transformers model as ONNX with integer `input_ids` and `attention_mask` in and
    `logits` out (per token for a language model), checked in ONNX Runtime."""
    from distill.compress.export import require_onnx

    require_onnx()

    class Ids(nn.Module):
        def __init__(self, inner: nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits

    wrapped = Ids(inner).eval()
    axes = {0: "batch", 1: "length"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python control flow
        torch.onnx.export(
            wrapped,
            (ids, mask),
            str(tmp / "model.onnx"),
            dynamo=False,
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={
                "input_ids": axes,
                "attention_mask": axes,
                "logits": axes if per_token else {0: "batch"},
            },
            opset_version=17,
        )
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        return float((torch.from_numpy(got) - wrapped(ids, mask)).abs().max())


def _export_sentence_model(model: nn.Module, data: Any, tmp: Path) -> float:
    from distill.models.encoders import SentenceEncoder

    if not isinstance(model, SentenceEncoder) or data.tokenizer is None:
        raise ConfigError(
            "--format sentence-transformers needs an embedding student (sentence_encoder, "
            "pretrained_encoder) trained on tokenized sentences; use hf, onnx or torchscript"
        )
    max_length = int(data.input_shape[0])
    write_sentence_transformers(model, data.tokenizer, tmp, max_length)
    texts = list(getattr(data.test, "texts", []))[:16] or ["a sentence", "another one"]
    return check_sentence_transformers(model, data.tokenizer, tmp, texts, max_length)


def _write_torchscript(model: nn.Module, x: torch.Tensor, tmp: Path) -> float:
    with torch.no_grad():
        traced = torch.jit.trace(model, x, strict=False, check_trace=False)
    traced.save(str(tmp / "model.pt"))
    again = torch.jit.load(str(tmp / "model.pt"))
    with torch.no_grad():
        return float((logits_of(again(x)) - logits_of(model(x))).abs().max())


def export_run(
    run_dir: str | Path, fmt: str, out: str | Path | None = None, *, overwrite: bool = False
) -> dict[str, Any]:
    """Export the best student of `run_dir` as `fmt` into `out` (default RUN_DIR/export/FMT)."""
    from distill.app.assess import load_run
    from distill.app.stages import final_stage_dir
    from distill.core.config import load_config

    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    model, data, weights = load_run(run_dir)
    cfg = load_config(final_stage_dir(Path(run_dir)) / "config.yaml")
    out = Path(out) if out is not None else Path(run_dir) / "export" / fmt
    _destination(out, overwrite)
    if fmt == "onnx":
        from distill.compress.export import require_onnx

        require_onnx()  # before any folder is made
    x = _test_inputs(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if fmt == "hf":
            saved = _write_hf(model, data, cfg, tmp)
            diff = _check_hf(model, tmp, x)
        elif fmt == "sentence-transformers":
            diff = _export_sentence_model(model, data, tmp)
        elif fmt == "onnx":
            diff = _write_onnx(model, x, tmp)
        else:
            diff = _write_torchscript(model, x, tmp)
        key = "min_cosine" if fmt == "sentence-transformers" else "max_abs_logit_diff"
        info = {"format": fmt, "weights": str(weights), key: diff}
        if fmt == "hf":
            info["tokenizer"] = saved
        (tmp / MARKER).write_text(json.dumps(info, indent=1))
        if out.exists():  # an earlier export (checked above): move it aside, then drop it
            old = Path(tempfile.mkdtemp(prefix=".old.", dir=out.parent))
            os.replace(out, old / "x")
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, out)
        fsync_dir(out.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**info, "path": str(out), "files": sorted(p.name for p in out.iterdir())}
