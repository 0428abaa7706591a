"""Hugging Face causal language models as `distill` models (config names `hf_causal_lm`,
`hf_pretrained`). `transformers` is imported only when one is built."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from distill.core.errors import ConfigError
from distill.models.hf_auto import require_transformers as _transformers


def hf_causal_lm(
    input_shape: Sequence[int], num_classes: int, *, arch: str = "gpt2", **config: Any
) -> nn.Module:
    """A randomly initialised causal LM of any `transformers` architecture, from its config.

    `arch` is a model type (gpt2, llama, qwen2, mistral, ...); the other arguments are that
    config's fields (n_layer, hidden_size, ...). The vocabulary defaults to the data's
    (`num_classes`); give `vocab_size` to pad it (e.g. to a multiple of 64). Positions default
    to at least the block length.
    """
    tf = _transformers()
    config.setdefault("vocab_size", num_classes)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        config.setdefault(key, None)  # pretrained defaults (e.g. GPT-2's 50256) would not fit
    if config["vocab_size"] < num_classes:
        raise ConfigError(
            f"hf_causal_lm: vocab_size {config['vocab_size']} is smaller than the data's "
            f"{num_classes} tokens"
        )
    try:
        cfg = tf.AutoConfig.for_model(arch, **config)
    except ValueError as e:
        raise ConfigError(f"hf_causal_lm: {e}") from None
    for key in ("n_positions", "max_position_embeddings"):
        if hasattr(cfg, key) and getattr(cfg, key) < input_shape[0]:
            setattr(cfg, key, int(input_shape[0]))
    return tf.AutoModelForCausalLM.from_config(cfg)


def hf_pretrained(input_shape: Sequence[int], num_classes: int, *, path: str) -> nn.Module:
    """A pretrained causal LM from a local directory (safetensors weights only; no hub)."""
    tf = _transformers()
    if not Path(path).is_dir():
        raise ConfigError(f"hf_pretrained: {path!r} is not a directory saved by save_pretrained")
    try:
        return tf.AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, use_safetensors=True
        )
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"hf_pretrained: cannot load {path!r}: {str(e).splitlines()[0]}"
        ) from None
