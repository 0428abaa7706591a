"""`DistillationTrainer`: token-level KD inside a Hugging Face `transformers.Trainer`.

For people who already train with `Trainer` (and launch it with `accelerate launch` or
`torchrun` for several GPUs, which `Trainer` handles through Accelerate): pass a frozen
`teacher_model` and pick a divergence; everything else — datasets, collators, arguments,
callbacks, checkpoints — stays as it was. Labels follow the Hugging Face convention
(`labels` = input ids, -100 where not supervised; shifted inside).

The loss is normalised by the supervised tokens of the whole optimizer step
(`num_items_in_batch`, which `Trainer` counts over every accumulated micro-batch), so
gradient accumulation does not change it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import transformers

from distill.llm.chunked import chunked_cross_entropy, chunked_token_divergence
from distill.llm.divergences import divergence_args, token_kd_loss


class DistillationTrainer(transformers.Trainer):
    """`transformers.Trainer` whose loss is task_weight * CE + kd_weight * divergence.

    Args beyond Trainer's: `teacher_model` (frozen here, moved to the training device),
    `divergence` (see `distill.llm.TOKEN_DIVERGENCES`), `temperature`, `kd_weight`,
    `task_weight`, `beta` (jsd), `alpha` (skew KL), `chunk_size` (> 0: the memory-efficient
    path from hidden states, never holding full logits).
    """

    def __init__(
        self,
        *args: Any,
        teacher_model: torch.nn.Module,
        divergence: str = "forward_kl",
        temperature: float = 1.0,
        kd_weight: float = 0.5,
        task_weight: float = 0.5,
        beta: float = 0.5,
        alpha: float = 0.1,
        chunk_size: int = 0,
        **kwargs: Any,
    ):
        div_args = divergence_args(divergence, temperature, beta, alpha)  # checks the name
        super().__init__(*args, **kwargs)
        self.teacher = teacher_model.to(self.args.device).eval()
        self.teacher.requires_grad_(False)
        self.divergence, self.chunk_size = divergence, chunk_size
        self.kd_weight, self.task_weight = kd_weight, task_weight
        self.div_args = div_args
        # we normalise by num_items_in_batch ourselves; Trainer must not divide again
        self.model_accepts_loss_kwargs = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        targets = labels[:, 1:]
        mask = targets != -100
        n = num_items_in_batch if num_items_in_batch is not None else mask.sum()
        n = torch.as_tensor(n, device=labels.device)
        if self.chunk_size:
            s_out = model.base_model(**inputs)
            with torch.no_grad():
                t_out = self.teacher.base_model(**inputs)
            h_s = s_out.last_hidden_state[:, :-1][mask]
            h_t = t_out.last_hidden_state[:, :-1][mask]
            vocab = min(
                model.get_output_embeddings().weight.shape[0],
                self.teacher.get_output_embeddings().weight.shape[0],
            )
            w_s = model.get_output_embeddings().weight[:vocab]
            w_t = self.teacher.get_output_embeddings().weight[:vocab]
            kd = chunked_token_divergence(
                h_s,
                w_s,
                h_t,
                w_t,
                divergence=self.divergence,
                num_tokens=n,
                chunk_size=self.chunk_size,
                **self.div_args,
            )
            ce = chunked_cross_entropy(h_s, w_s, targets[mask], self.chunk_size) / n
            outputs = s_out
        else:
            outputs = model(**inputs)
            with torch.no_grad():
                t_logits = self.teacher(**inputs).logits
            vocab = min(outputs.logits.shape[-1], t_logits.shape[-1])
            z_s, z_t = outputs.logits[:, :-1, :vocab], t_logits[:, :-1, :vocab]
            kd = token_kd_loss(
                z_s, z_t, divergence=self.divergence, mask=mask, num_tokens=n, **self.div_args
            )
            ce = F.cross_entropy(z_s.float()[mask], targets[mask], reduction="sum") / n
        loss = self.task_weight * ce + self.kd_weight * kd
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes  # n counted tokens on every device
        return (loss, outputs) if return_outputs else loss
