"""Dual-space KD (Zhang et al. 2024; `distill.llm.vocab.DualSpaceKD`) in
`DistillationTrainer`, for a teacher with another tokenizer.

The text is tokenised by both models as for the other cross-tokenizer losses
(`distill.llm.cross_trainer`); DSKD then needs no alignment of positions: its cross-model
attention finds, for each student position, the teacher's hidden states to read. Its
attention and projections are parameters of their own. The trainer adds them to its
optimizer (a parameter group of their own, no weight decay), averages their gradients over
processes itself (they sit outside the student's DDP wrapper), and saves them as
`dskd.safetensors` in every checkpoint folder, from which a resumed run reloads them. The
loss is task + kd_weight (KL in the student's space + KL in the teacher's) + the alignment
cross-entropy that trains the projection, as in the YAML loop's `cross_tokenizer: dskd`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from distill.llm.vocab import DualSpaceKD

FILE = "dskd.safetensors"


def _width(model: Any) -> int:
    cfg = model.config
    return int(getattr(cfg, "hidden_size", None) or cfg.n_embd)


def bridge(student: Any, teacher: Any) -> DualSpaceKD:
    return DualSpaceKD(
        _width(student),
        _width(teacher),
        student.get_input_embeddings().embedding_dim,
        teacher.get_input_embeddings().embedding_dim,
    )


def dskd_losses(trainer: Any, model: Any, inputs: dict, targets: Tensor, n: Any):
    """(kd, ce, outputs, alignment cross-entropy) of a batch; pops the teacher's columns."""
    t_ids, t_mask = inputs.pop("teacher_input_ids"), inputs.pop("teacher_attention_mask")
    inputs.pop("align_student"), inputs.pop("align_teacher")
    student = trainer.accelerator.unwrap_model(model)
    out = model(**inputs, output_hidden_states=True)
    with torch.no_grad():
        t_out = trainer.teacher(input_ids=t_ids, attention_mask=t_mask, output_hidden_states=True)
        e_t = trainer.teacher.get_input_embeddings()(t_ids)
    ids = inputs["input_ids"][:, :-1]
    y = torch.where(targets != -100, targets, -1)
    kl_s, kl_t, align = trainer.dskd(
        out.hidden_states[-1][:, :-1],
        student.get_input_embeddings()(ids),
        student.get_output_embeddings().weight,
        t_out.hidden_states[-1],
        e_t,
        trainer.teacher.get_output_embeddings().weight,
        t_mask,
        y,
        temperature=trainer.div_args["temperature"],
    )
    mask = targets != -100
    logits = out.logits[:, :-1].float()
    ce = torch.nn.functional.cross_entropy(logits[mask], targets[mask], reduction="sum") / n
    return kl_s + kl_t, ce, out, align


def reduce_grads(trainer: Any) -> None:
    """The bridge's gradients averaged over processes (it is outside the DDP wrapper)."""
    if trainer.accelerator.num_processes < 2:
        return
    for p in trainer.dskd.parameters():
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= trainer.accelerator.num_processes


def save(trainer: Any, folder: str | Path) -> None:
    from safetensors.torch import save_file

    if trainer.args.should_save:
        state = {k: v.detach().cpu().contiguous() for k, v in trainer.dskd.state_dict().items()}
        save_file(state, str(Path(folder) / FILE))


def load(trainer: Any, folder: str | Path) -> None:
    from safetensors.torch import load_file

    path = Path(folder) / FILE
    if path.is_file():
        trainer.dskd.load_state_dict(load_file(str(path)))
