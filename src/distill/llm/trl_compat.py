"""A TRL user's `DistillationTrainer` script, run by distill's with only the import changed.

TRL 1.16's `DistillationTrainer` is configured by a `trl.DistillationConfig`: the student is
trained on-policy (it completes every prompt, up to `max_completion_length` tokens, sampled
at `temperature`) to match the teacher under the generalized JSD with `beta` (0 forward
KL, 0.5 JSD, 1 reverse KL), with no cross-entropy term; models may be given as paths. When
distill's trainer receives such a config, these become its defaults (`lmbda=1`,
`divergence="jsd"` with that `beta`, `temperature` for the loss and for sampling,
`max_new_tokens`, `kd_weight=1`, `task_weight=0`); an option passed explicitly still wins.
The config is recognised by its class name and fields, so trl need not be installed.
"""

from __future__ import annotations

from typing import Any

DEFAULTS: dict[str, Any] = {
    "divergence": "forward_kl",
    "temperature": 1.0,
    "kd_weight": 0.5,
    "task_weight": 0.5,
    "beta": 0.5,
    "lmbda": 0.0,
    "max_new_tokens": 128,
    "generation_temperature": 1.0,
}


OPTIONS = tuple(DEFAULTS)


def is_trl_config(args: Any) -> bool:
    return type(args).__name__ == "DistillationConfig" and hasattr(args, "max_completion_length")


def resolve_options(given: dict[str, Any], args: Any) -> dict[str, Any]:
    """The trainer's options: distill's defaults, then a TRL config's meaning of its own
    fields, then what was passed (None: not passed)."""
    out = dict(DEFAULTS)
    if is_trl_config(args):
        out.update(
            divergence="jsd",
            beta=float(args.beta),
            temperature=float(args.temperature),
            generation_temperature=float(args.temperature),
            lmbda=1.0,
            max_new_tokens=int(args.max_completion_length or DEFAULTS["max_new_tokens"]),
            kd_weight=1.0,
            task_weight=0.0,
        )
    out.update({k: v for k, v in given.items() if v is not None})
    return out


def load_if_path(model: Any, role: str) -> Any:
    """A model given as a path (as TRL takes it) loaded with `from_pretrained`."""
    if not isinstance(model, str):
        return model
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    if not (Path(model) / "config.json").is_file():
        raise ValueError(
            f"{role} {model!r} is not a local model folder (no config.json); distill loads "
            f"models from disk only: save_pretrained it there first"
        )
    return AutoModelForCausalLM.from_pretrained(model)
