"""Hugging Face classifiers as distill models: `student: {name: hf_model, args: {...}}`.

A model comes from a local folder saved with `save_pretrained` (`path`: weights loaded
with safetensors only, nothing downloaded) or is built untrained from a config (`arch` plus
that config's fields, e.g. `{arch: bert, hidden_size: 128, num_hidden_layers: 2}`), for
the task the data has:

| `task` | Auto class | the input distill feeds it |
| --- | --- | --- |
| `sequence_classification` | `AutoModelForSequenceClassification` | (N, 2, L) token ids and attention mask, stacked (what `data.options.tokenizer` gives) |
| `image_classification` | `AutoModelForImageClassification` | (N, C, H, W) pixel values |

The classification head is sized to the data's classes (`num_labels`); a pretrained folder
whose head has another size gets a new head (said on stderr). The wrapper keeps the
Hugging Face model unmodified as `.model`, so taps name its layers as they are
(`model.bert.encoder.layer.1`), and it returns the model's output, whose `.logits` distill
reads.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from distill.core.errors import ConfigError

TASKS = {
    "sequence_classification": "AutoModelForSequenceClassification",
    "image_classification": "AutoModelForImageClassification",
}


class TokenClassifier(nn.Module):
    """A sequence classifier fed (N, 2, L) stacked token ids and attention mask."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Any:
        if x.dim() != 3 or x.shape[1] != 2:
            raise ValueError(
                f"a token classifier reads (N, 2, L) token ids and attention mask, got "
                f"{tuple(x.shape)}; give the text data a tokenizer (data.options.tokenizer)"
            )
        x = x.long()
        return self.model(input_ids=x[:, 0], attention_mask=x[:, 1])


class ImageClassifier(nn.Module):
    """An image classifier fed (N, C, H, W) pixel values."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Any:
        return self.model(pixel_values=x)


def require_transformers() -> Any:
    """The `transformers` module, or a ConfigError saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "this model needs Hugging Face transformers: pip install 'distill[llm]'"
        ) from None
    return transformers


def hf_model(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    task: str = "sequence_classification",
    path: str | None = None,
    arch: str | None = None,
    **config: Any,
) -> nn.Module:
    """A Hugging Face classifier for `task`, from a local folder (`path`) or a config (`arch`)."""
    tf = require_transformers()
    if task not in TASKS:
        raise ConfigError(f"hf_model: unknown task {task!r}; choose from {sorted(TASKS)}")
    if (path is None) == (arch is None):
        raise ConfigError(
            "hf_model: give path (a folder saved with save_pretrained) or arch (a model type "
            "such as bert, distilbert, vit, with its config fields), not both"
        )
    auto = getattr(tf, TASKS[task])
    if path is not None:
        model = _pretrained(tf, auto, path, num_classes, config)
    else:
        try:
            cfg = tf.AutoConfig.for_model(arch, num_labels=num_classes, **config)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"hf_model: {e}") from None
        model = auto.from_config(cfg)
    wrapper = TokenClassifier if task == "sequence_classification" else ImageClassifier
    return wrapper(model)


def _pretrained(tf: Any, auto: Any, path: str, num_classes: int, config: dict) -> nn.Module:
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"hf_model: {path!r} is not a folder saved by save_pretrained (no config.json)"
        )
    saved = tf.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    resized = getattr(saved, "num_labels", None) != num_classes
    if resized:
        print(
            f"hf_model: {path!r} has {saved.num_labels} labels and the data {num_classes}: "
            f"its classification head is replaced by a new, untrained one",
            file=sys.stderr,
        )
    try:
        return auto.from_pretrained(
            str(folder),
            num_labels=num_classes,
            ignore_mismatched_sizes=resized,
            local_files_only=True,
            use_safetensors=True,
            **config,
        )
    except (OSError, ValueError) as e:
        raise ConfigError(f"hf_model: cannot load {path!r}: {str(e).splitlines()[0]}") from None
