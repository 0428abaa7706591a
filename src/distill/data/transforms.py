"""Per-sample transforms for data read from files, each random draw from an explicit generator.

A transform is `fn(sample, gen) -> sample`: it takes a Pillow image (or a tensor) and a
`torch.Generator`. The dataset seeds that generator from (run seed, epoch, sample id), so the
view a sample gets in epoch e is a pure function of those three numbers: the same on every
DataLoader worker count, after a resume, and in a teacher-cache build that computes the
teacher's outputs on every epoch's views ahead of training (`distill.data.records`).

The standard steps are here by name (`resize`, `center_crop`, `random_resized_crop`,
`random_crop`, `hflip`, `to_tensor`, `normalize`), written on Pillow and torch because
torchvision, which has the same steps, is an optional dependency. Any callable taking one
sample is accepted too (a torchvision or albumentations pipeline); its random draws come from
the global torch RNG, which the dataset seeds from the same (seed, epoch, sample id) key
inside a forked RNG state, so such pipelines are just as reproducible.

Means and standard deviations by name: `imagenet` (0.485, 0.456, 0.406) / (0.229, 0.224,
0.225), the statistics of the ImageNet-1k training set that torchvision's pretrained models
expect; `cifar10` (0.4914, 0.4822, 0.4465) / (0.2470, 0.2435, 0.2616); `half` 0.5 / 0.5
(maps [0, 1] to [-1, 1]).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from distill.core.errors import ConfigError

Transform = Callable[[Any, torch.Generator], Any]

NORMALIZATION = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "half": ((0.5,), (0.5,)),
}


def _size(size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) from an int (square) or a pair."""
    if isinstance(size, int) and not isinstance(size, bool):
        h = w = size
    elif isinstance(size, list | tuple) and len(size) == 2:
        h, w = (int(v) for v in size)
    else:
        raise ConfigError(f"a transform size is an int or [height, width], got {size!r}")
    if h < 1 or w < 1:
        raise ConfigError(f"a transform size must be at least 1 pixel, got {size!r}")
    return h, w


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def to_tensor(sample: Any, gen: torch.Generator | None = None) -> Tensor:
    """A Pillow image as float32 (C, H, W) in [0, 1]; tensors and arrays pass through as float32."""
    if isinstance(sample, Tensor):  # token ids (int64) stay integers
        return sample if sample.dtype == torch.long else sample.float()
    if isinstance(sample, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(sample)).float()
    array = np.asarray(sample)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim == 2:
        array = array[:, :, None]
    scale = 255.0 if array.dtype == np.uint8 else float(np.iinfo(array.dtype).max)
    return torch.from_numpy(array.transpose(2, 0, 1).copy()).float() / scale


def _pil(sample: Any, step: str) -> Any:
    if not hasattr(sample, "resize") or isinstance(sample, Tensor | np.ndarray):
        raise ConfigError(
            f"transform {step!r} works on images, but it was given a {type(sample).__name__}; "
            f"put it before to_tensor / normalize"
        )
    return sample


def resize(sample: Any, gen: torch.Generator, *, size: int | Sequence[int]) -> Any:
    """Resize to `size`: an int scales the shorter side to it (aspect kept), a pair is (H, W)."""
    img = _pil(sample, "resize")
    w, h = img.size
    _size(size)  # checks it
    if isinstance(size, int):
        short = min(w, h)  # the shorter side becomes `size`
        new = (max(1, round(w * size / short)), max(1, round(h * size / short)))
    else:
        new = (_size(size)[1], _size(size)[0])
    return img if new == (w, h) else img.resize(new, resample=_bilinear())


def _bilinear() -> int:
    from PIL import Image

    return Image.Resampling.BILINEAR


def center_crop(sample: Any, gen: torch.Generator, *, size: int | Sequence[int]) -> Any:
    """The central (H, W) window (padded with zeros when the image is smaller)."""
    img = _pil(sample, "center_crop")
    th, tw = _size(size)
    w, h = img.size
    left, top = (w - tw) // 2, (h - th) // 2
    return img.crop((left, top, left + tw, top + th))


def random_crop(
    sample: Any, gen: torch.Generator, *, size: int | Sequence[int], padding: int = 0
) -> Any:
    """A uniformly placed (H, W) window, after `padding` zero pixels on every side."""
    img = _pil(sample, "random_crop")
    th, tw = _size(size)
    w, h = img.size
    w, h = w + 2 * padding, h + 2 * padding
    if tw > w or th > h:
        raise ConfigError(f"random_crop size {(th, tw)} is larger than the padded image {(h, w)}")
    left = int(torch.randint(w - tw + 1, (), generator=gen)) - padding
    top = int(torch.randint(h - th + 1, (), generator=gen)) - padding
    return img.crop((left, top, left + tw, top + th))


def random_resized_crop(
    sample: Any,
    gen: torch.Generator,
    *,
    size: int | Sequence[int],
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> Any:
    """Inception-style crop (Szegedy et al. 2015): a window covering a `scale` fraction of the
    area with aspect ratio in `ratio` (log-uniform), resized to `size`. After 10 failed draws,
    falls back to the central crop of the clamped ratio, as torchvision does."""
    img = _pil(sample, "random_resized_crop")
    w, h = img.size
    area = w * h
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    box = None
    for _ in range(10):
        target = area * _uniform(gen, scale[0], scale[1])
        aspect = math.exp(_uniform(gen, log_lo, log_hi))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            left = int(torch.randint(w - cw + 1, (), generator=gen))
            top = int(torch.randint(h - ch + 1, (), generator=gen))
            box = (left, top, left + cw, top + ch)
            break
    if box is None:
        aspect = w / h
        if aspect < ratio[0]:
            cw, ch = w, round(w / ratio[0])
        elif aspect > ratio[1]:
            cw, ch = round(h * ratio[1]), h
        else:
            cw, ch = w, h
        left, top = (w - cw) // 2, (h - ch) // 2
        box = (left, top, left + cw, top + ch)
    th, tw = _size(size)
    return img.resize((tw, th), resample=_bilinear(), box=box)


def hflip(sample: Any, gen: torch.Generator, *, p: float = 0.5) -> Any:
    """Mirror left-right with probability `p` (images or (..., W) tensors)."""
    if float(torch.rand((), generator=gen)) >= p:
        return sample
    if isinstance(sample, Tensor):
        return sample.flip(-1)
    from PIL import Image

    return _pil(sample, "hflip").transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def normalize(
    sample: Any,
    gen: torch.Generator,
    *,
    mean: str | Sequence[float] = "imagenet",
    std: Sequence[float] | None = None,
) -> Tensor:
    """(x - mean) / std per channel; `mean` may name a set of statistics (see the module doc)."""
    return Normalize(mean, std)(sample, gen)


class Normalize:
    """`normalize` with its statistics checked and shaped once, not per sample."""

    def __init__(
        self, mean: str | Sequence[float] = "imagenet", std: Sequence[float] | None = None
    ):
        if isinstance(mean, str):
            if mean not in NORMALIZATION:
                raise ConfigError(
                    f"normalize: unknown statistics {mean!r}; choose from {sorted(NORMALIZATION)} "
                    f"or give mean: [...] and std: [...]"
                )
            mean, std = NORMALIZATION[mean]
        if std is None or len(std) != len(mean):
            raise ConfigError("normalize: give one std per mean (one value per channel)")
        if any(float(v) <= 0 for v in std):
            raise ConfigError(f"normalize: every std must be > 0, got {list(std)}")
        self.keywords = {"mean": list(mean), "std": list(std)}
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        self.scale = 1.0 / torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1)

    def __call__(self, sample: Any, gen: torch.Generator | None = None) -> Tensor:
        x = to_tensor(sample)
        if x.dim() != 3 or self.mean.shape[0] not in (1, x.shape[0]):
            raise ConfigError(
                f"normalize: {self.mean.shape[0]} means for an input of shape {tuple(x.shape)}; "
                f"give one mean and std per channel of a (C, H, W) image"
            )
        return (x - self.mean) * self.scale


class Tokenize:
    """Text to (2, max_length) int64: token ids and attention mask, padded and truncated by
    a Hugging Face tokenizer loaded from a local folder (never downloaded)."""

    def __init__(self, path: str, max_length: int = 128):
        from pathlib import Path

        if not isinstance(max_length, int) or max_length < 2:
            raise ConfigError(f"max_length must be an integer >= 2, got {max_length!r}")
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise ConfigError(
                f"tokenizer {path!r} is not a folder; give a folder saved with "
                f"tokenizer.save_pretrained (tokenizer.json / vocab files)"
            )
        try:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except ImportError:
            raise ConfigError("text data needs transformers: pip install 'distill[llm]'") from None
        except (OSError, ValueError) as e:
            raise ConfigError(f"tokenizer {path!r}: {str(e).splitlines()[0]}") from None
        if self.tokenizer.pad_token is None:  # GPT-style tokenizers: pad with end-of-text
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.keywords = {"path": str(folder), "max_length": max_length}
        self.max_length = max_length

    def __call__(self, text: str, gen: torch.Generator | None = None) -> Tensor:
        enc = self.tokenizer(
            text,
            max_length=self.max_length,
            truncation=True,
            padding="max_length",
            return_tensors="pt",
        )
        return torch.stack([enc["input_ids"][0], enc["attention_mask"][0]]).long()


TRANSFORMS: dict[str, Callable[..., Any]] = {
    "resize": resize,
    "center_crop": center_crop,
    "random_crop": random_crop,
    "random_resized_crop": random_resized_crop,
    "hflip": hflip,
    "to_tensor": to_tensor,
    "normalize": normalize,
}
# steps that change the image size, so mixed sizes come out equal
SIZING = {"resize", "center_crop", "random_crop", "random_resized_crop"}
RANDOM = {"random_crop", "random_resized_crop", "hflip"}


class Pipeline:
    """Steps applied in order, then `to_tensor` if the result is still an image."""

    def __init__(self, steps: Sequence[tuple[str, Transform]]):
        self.steps = list(steps)

    @property
    def sizes_inputs(self) -> bool:
        """Whether a step brings every image to one size (so mixed sizes are fine)."""
        return any(name in SIZING or name.startswith("user:") for name, _ in self.steps)

    @property
    def random(self) -> bool:
        """Whether a step draws random numbers (user callables are assumed to)."""
        return any(name in RANDOM or name.startswith("user:") for name, _ in self.steps)

    def __repr__(self) -> str:
        # stable across processes (a cache key): names and arguments, no object addresses
        parts = [
            name if name.startswith("user:") else f"{name}{sorted(step.keywords.items())}"
            for name, step in self.steps
        ]
        return f"Pipeline({', '.join(parts)})"

    def __call__(self, sample: Any, gen: torch.Generator) -> Tensor:
        for name, step in self.steps:
            if name.startswith("user:"):
                with torch.random.fork_rng(devices=[]):  # the user's draws, seeded per sample
                    torch.manual_seed(int(torch.randint(2**62, (), generator=gen)))
                    sample = step(sample)
            else:
                sample = step(sample, gen)
        return to_tensor(sample)


def build_transforms(spec: Any, where: str) -> Pipeline:
    """A Pipeline from config: a list of step names or {name: {args}} mappings, or a
    'package.module:attr' reference to the user's own callable (or a list mixing them).

    `transforms: [{random_resized_crop: {size: 32}}, hflip, {normalize: {mean: imagenet}}]`
    """
    from functools import partial

    from distill.core.registry import lookup

    if spec is None:
        return Pipeline([])
    if isinstance(spec, str | dict) or callable(spec):
        spec = [spec]
    steps: list[tuple[str, Transform]] = []
    for item in spec:
        if callable(item):  # given in Python
            steps.append((f"user:{getattr(item, '__name__', 'transform')}", item))
            continue
        if isinstance(item, str) and ":" in item:
            steps.append((f"user:{item}", _user_transform(item, where)))
            continue
        if isinstance(item, str):
            name, args = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            name, args = next(iter(item.items()))
            args = args if isinstance(args, dict) else {"size": args}
        else:
            raise ConfigError(
                f"{where}: each transform is a name or a one-key mapping {{name: {{args}}}}, "
                f"got {item!r}"
            )
        fn = lookup("transform", name, TRANSFORMS)
        _check_args(fn, args, f"{where}: {name}")
        steps.append((name, Normalize(**args) if fn is normalize else partial(fn, **args)))
    return Pipeline(steps)


def _check_args(fn: Callable, args: dict, where: str) -> None:
    params = inspect.signature(fn).parameters
    allowed = [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown argument(s) {unknown}; it takes {allowed}")
    missing = [p for p in allowed if params[p].default is inspect.Parameter.empty and p not in args]
    if missing:
        raise ConfigError(f"{where}: missing argument(s) {missing}")


def _user_transform(ref: str, where: str) -> Callable[[Any], Any]:
    """The user's function `fn(sample) -> sample` (a class is instantiated with no arguments,
    so a torchvision-style transform class with defaults works too)."""
    from distill.core.registry import lookup

    fn = lookup(f"{where}: transform", ref, {})
    return fn() if isinstance(fn, type) else fn
