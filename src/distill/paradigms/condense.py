"""Dataset distillation: a few synthetic samples per class that train almost as well as all.

`data.condense` replaces the training split by a condensed set, so any run (supervised,
offline KD, ...) trains on it while validation and test stay real:

- `method: dm` — Distribution Matching (Zhao & Bilen 2023, Dataset Condensation with
  Distribution Matching). Synthetic samples S_c start as random real samples of class c and
  are optimised so that, under many randomly initialised embedding networks psi, their mean
  embedding matches the real class mean:
      min_S  E_psi  sum_c || mean_{x in real_c} psi(x) - mean_{s in S_c} psi(s) ||^2
  A new random network is drawn every iteration; no network is ever trained.
- `method: random` — the same number of real samples per class, drawn at random (baseline).

Only labelled training samples are condensed. The set is cached on disk, keyed by the data
spec and these settings, so a sweep over students reuses it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import Tensor

from distill.core.errors import ConfigError
from distill.core.settings import CondenseSettings, NetSpec  # noqa: F401  (defined with the config)


def default_net(input_shape: tuple[int, ...]) -> NetSpec:
    """A small ConvNet on signals and images; an MLP on feature vectors."""
    if len(input_shape) >= 2 and input_shape[-1] > 1:
        return NetSpec(name="convnet", args={"channels": [32, 64], "kernel_size": 3, "stride": 1})
    return NetSpec(name="mlp", args={"hidden": [128]})


def random_subset(x: Tensor, y: Tensor, per_class: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in torch.unique(y):
        rows = torch.nonzero(y == c).flatten()
        keep.append(rows[torch.randperm(len(rows), generator=g)[:per_class]])
    idx = torch.cat(keep)
    return x[idx].clone(), y[idx].clone()


def distribution_matching(
    x: Tensor,
    y: Tensor,
    settings: CondenseSettings,
    num_classes: int,
    *,
    log_every: int = 0,
) -> tuple[Tensor, Tensor]:
    """(synthetic inputs, labels) by distribution matching; see the module docstring."""
    from distill.models import build_model
    from distill.taps import Tap

    net = settings.net or default_net(tuple(x.shape[1:]))
    syn_x, syn_y = random_subset(x, y, settings.per_class, settings.seed)
    syn_x.requires_grad_(True)
    opt = torch.optim.SGD([syn_x], lr=settings.lr, momentum=0.5)
    classes = torch.unique(y)
    n_cls = int(classes.max()) + 1
    rows = {int(c): torch.nonzero(y == c).flatten() for c in classes}
    g = torch.Generator().manual_seed(settings.seed + 1)

    def class_means(feats: Tensor, labels: Tensor) -> Tensor:
        flat = feats.flatten(1)
        sums = flat.new_zeros(n_cls, flat.shape[1]).index_add_(0, labels, flat)
        counts = torch.bincount(labels, minlength=n_cls).clamp_min(1).unsqueeze(1)
        return (sums / counts)[classes]

    for it in range(settings.iterations):
        torch.manual_seed(settings.seed * 100_003 + it)  # this iteration's random network
        model = build_model(net.name, tuple(x.shape[1:]), num_classes, net.args).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        real = torch.cat(
            [r[torch.randperm(len(r), generator=g)[: settings.batch_real]] for r in rows.values()]
        )
        with Tap(model, [settings.layer], "condense net") as tap:
            with torch.no_grad():
                mu_real = class_means(tap.run(x[real]).feats[settings.layer], y[real])
            mu_syn = class_means(tap.run(syn_x).feats[settings.layer], syn_y)
        loss = (mu_real - mu_syn).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if not torch.isfinite(syn_x).all():
            raise ConfigError(
                f"data.condense: the synthetic samples became non-finite at iteration {it} "
                f"(lr {settings.lr}); lower data.condense.lr"
            )
        if log_every and it % log_every == 0:
            print(f"condense {it}/{settings.iterations}: {float(loss):.4f}")
    return syn_x.detach(), syn_y


def condense(data: Any, settings: CondenseSettings, fingerprint: dict) -> Any:
    """`data` (DataSplits) with its training split replaced by the condensed set (cached)."""
    from distill.core.checkpoint import load_weights, save_weights
    from distill.data.core import ArrayDataset
    from distill.data.raw import cache_dir

    train = data.train
    if not hasattr(train, "inputs"):
        raise ConfigError("data.condense needs an in-memory array dataset (inputs and labels)")
    labelled = train.targets >= 0
    x, y = train.inputs[labelled].float(), train.targets[labelled]
    small = [int(c) for c in torch.unique(y) if int((y == c).sum()) < settings.per_class]
    if small:
        raise ConfigError(
            f"data.condense.per_class={settings.per_class}: classes {small} have fewer labelled "
            f"training samples than that; lower per_class"
        )
    key_src = json.dumps([fingerprint, settings.model_dump(mode="json"), "v1"], sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    path = cache_dir() / "condensed" / f"{data.name}-{settings.method}-{key}.safetensors"
    if path.is_file():
        tensors, _ = load_weights(path)
        syn_x, syn_y = tensors["inputs"], tensors["targets"]
    else:
        if settings.method == "random":
            syn_x, syn_y = random_subset(x, y, settings.per_class, settings.seed)
        else:
            syn_x, syn_y = distribution_matching(x, y, settings, data.num_classes)
        save_weights(path, {"inputs": syn_x, "targets": syn_y}, {"settings": key_src})
    data.train = ArrayDataset(syn_x, syn_y)
    return data


__all__ = ["CondenseSettings", "condense", "distribution_matching", "random_subset"]
