"""`DistillationTrainer`: token-level KD inside a Hugging Face `transformers.Trainer`.

For people who already train with `Trainer` (and launch it with `accelerate launch` or
`torchrun` for several GPUs, which `Trainer` handles through Accelerate): pass a frozen
`teacher_model` and pick a divergence; everything else — datasets, collators, arguments,
callbacks, checkpoints — stays as it was. Labels follow the Hugging Face convention
(`labels` = input ids, -100 where not supervised; shifted inside).

The loss is normalised by the supervised tokens of the whole optimizer step
(`num_items_in_batch`, which `Trainer` counts over every accumulated micro-batch), so
gradient accumulation does not change it.

Text data: with `processing_class=tokenizer`, datasets of `text`, `prompt` + `completion`,
chat `messages`, or `prompt` alone (a string or a conversation, completed on-policy with
`lmbda=1.0` or by the teacher with `seq_kd=True`, as TRL's trainers take it) are tokenised
here (the loss on completion / assistant / generated tokens only; see `distill.llm.chat`),
and padded by a collator when none is given. A dataset with other columns is passed as it
is to a `data_collator` of yours.

PEFT: `peft_config=LoraConfig(...)` wraps the student with `peft.get_peft_model` (only the
adapter trains; `save_model` writes only the adapter, as `Trainer` does for PEFT models);
`save_merged(path)` writes the student with the adapter merged into its weights, as a
plain `from_pretrained` folder. A student or teacher already wrapped by `peft` works as
it is. The memory-efficient path (`chunk_size`) finds the final hidden states and the
output head through the model's own accessors (`get_base_model`, `get_decoder`,
`get_output_embeddings`), so it works on wrapped models too.

A served teacher: `teacher_server={"url": ..., "top_k": 20}` (the options of
`distill.llm.served.ServedTeacherArgs`) in place of `teacher_model` keeps the teacher out of
this process: each batch's top-k log-probabilities come from a vLLM-style server (on-policy
batches too), and the KD is the forward KL over those k tokens and the tail.
"""

from __future__ import annotations

import random
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from torch import Tensor

from distill.llm.chunked import decoder_and_head
from distill.llm.cross_trainer import vocabulary_map
from distill.llm.lm_loss import lm_losses_from_hidden, lm_losses_from_logits
from distill.llm.trainer_data import prepare_rows
from distill.llm.trainer_options import check_teacher, trainer_options, with_peft
from distill.llm.trainer_routing import ROUTE, TrainerRouter
from distill.losses.divergences import divergence_args


class DistillationTrainer(transformers.Trainer):
    """`transformers.Trainer` whose loss is task_weight * CE + kd_weight * divergence.

    Args beyond Trainer's: `teacher_model` (frozen here, moved to the training device) or
    `teacher_server` (a served teacher, see the module docstring) or `teacher_cache` (a
    folder: the teacher's top-`cache_k` outputs on the training rows, built there first from
    `teacher_model` when missing; `distill.llm.trainer_cache`), `cross_tokenizer`
    ("uld" or "spans", with `teacher_processing_class`: a teacher of another tokenizer, see
    `distill.llm.cross_trainer`),
    `lmbda` / `seq_kd` / `max_new_tokens` / `generation_temperature` (on-policy and
    sequence-level KD, see `training_step`), `peft_config`, `max_length` (text data),
    `divergence` (see `distill.llm.TOKEN_DIVERGENCES`), `temperature`, `kd_weight`,
    `task_weight`, `beta` (jsd), `alpha` (skew KL), `chunk_size` (> 0: the memory-efficient
    path from hidden states, never holding full logits). Defaults: forward KL, T = 1,
    kd_weight = task_weight = 0.5, lmbda = 0; with a `trl.DistillationConfig` as `args`, that
    config's meaning instead (`distill.llm.trl_compat`). `model` and `teacher_model` may be
    paths of local model folders.
    """

    def __init__(
        self,
        *args: Any,
        teacher_model: torch.nn.Module | None = None,
        teacher_server: Any = None,
        teacher_cache: str | None = None,
        cache_k: int = 32,
        teachers: dict[str, Any] | None = None,
        teacher_weights: dict[str, float] | None = None,
        route_column: str | None = None,
        divergence: str | None = None,
        temperature: float | None = None,
        kd_weight: float | None = None,
        task_weight: float | None = None,
        beta: float | None = None,
        alpha: float = 0.1,
        chunk_size: int = 0,
        peft_config: Any = None,
        shard_teacher: bool | None = None,
        teacher_processing_class: Any = None,
        cross_tokenizer: str | None = None,
        max_length: int = 1024,
        lmbda: float | None = None,
        seq_kd: bool = False,
        max_new_tokens: int | None = None,
        generation_temperature: float | None = None,
        **kwargs: Any,
    ):
        o = trainer_options(locals(), args, kwargs)  # distill's defaults, or a TRL config's meaning
        lmbda, args = o["lmbda"], o["args"]
        div_args = divergence_args(o["divergence"], o["temperature"], o["beta"], alpha)
        sources = (o["teacher_model"], teacher_server, teacher_cache)
        routes = (teachers, teacher_weights, route_column, chunk_size, cross_tokenizer)
        check_teacher(sources, o["divergence"], o["temperature"], lmbda, seq_kd, routes)
        cross = (cross_tokenizer, teacher_processing_class, teacher_server, lmbda, seq_kd)
        rows = prepare_rows(kwargs, max_length, cross, teachers, route_column, teacher_cache)
        if peft_config is not None:
            args = with_peft(args, kwargs, peft_config)
        super().__init__(*args, **kwargs)
        self.shard_teacher = shard_teacher
        self._set_teacher(o["teacher_model"], teacher_server, (teacher_cache, rows, cache_k))
        self.router = None
        if teachers is not None:
            self.router = TrainerRouter(self, teachers, teacher_weights, rows, cache_k)
        self.divergence, self.chunk_size = o["divergence"], chunk_size
        self.kd_weight, self.task_weight = o["kd_weight"], o["task_weight"]
        self.div_args = div_args
        # we normalise by num_items_in_batch ourselves; Trainer must not divide again
        self.model_accepts_loss_kwargs = True
        self.lmbda, self.seq_kd = lmbda, seq_kd
        self.cross_tokenizer, self.vocab_map, self.dskd = cross_tokenizer, None, None
        if cross_tokenizer == "spans":
            self.vocab_map = vocabulary_map(self.processing_class, teacher_processing_class)
        if cross_tokenizer == "dskd":
            self.dskd = self._dskd_bridge()
        self.max_new_tokens = o["max_new_tokens"]
        self.generation_temperature = o["generation_temperature"]
        self._coin = random.Random(self.args.seed)  # on-policy draws, reproducible

    def training_step(self, model, inputs, num_items_in_batch=None):
        """GKD (Agarwal et al. 2024): with `seq_kd` the batch's completions are first
        replaced by the teacher's generations (sequence-level KD, Kim & Rush 2016); then,
        with probability `lmbda`, by the student's own (on-policy). A generated batch is
        normalised by its own supervised tokens."""
        generated = False
        if self.seq_kd:
            inputs, generated = self.generate_completions(self.teacher, inputs), True
        if self.lmbda and self._coin.random() < self.lmbda:
            inputs, generated = self.generate_completions(model, inputs), True
        loss = super().training_step(model, inputs, None if generated else num_items_in_batch)
        if self.dskd is not None:
            from distill.llm.cross_dskd import reduce_grads

            reduce_grads(self)
        return loss

    @torch.no_grad()
    def generate_completions(self, generator: torch.nn.Module, inputs: dict) -> dict:
        """Each row's prompt (its tokens before the first supervised label) continued by
        `generator` for up to `max_new_tokens`, batched with left padding; returned
        right-padded with labels on the generated tokens only (through the first EOS)."""
        labels, ids = inputs["labels"], inputs["input_ids"]
        mask = inputs.get("attention_mask", torch.ones_like(ids))
        supervised = labels != -100
        starts = torch.where(supervised.any(1), supervised.float().argmax(1), mask.sum(1))
        prompts = [
            ids[i, : int(starts[i])][mask[i, : int(starts[i])].bool()] for i in range(len(ids))
        ]
        pad, eos = self._pad_and_eos(generator)
        width = max(len(p) for p in prompts)
        left = torch.full((len(ids), width), pad, dtype=ids.dtype, device=ids.device)
        left_mask = torch.zeros_like(left)
        for i, p in enumerate(prompts):
            left[i, width - len(p) :], left_mask[i, width - len(p) :] = p, 1
        unwrapped = self.accelerator.unwrap_model(generator)
        was = unwrapped.training
        unwrapped.eval()
        sample = self.generation_temperature > 0
        out = unwrapped.generate(
            input_ids=left,
            attention_mask=left_mask,
            max_new_tokens=self.max_new_tokens,
            do_sample=sample,
            temperature=self.generation_temperature if sample else None,
            top_k=0 if sample else None,
            pad_token_id=pad,
            eos_token_id=eos,
            # sharded models gather their weights in every forward: all processes must run
            # the same number of generation steps, even those whose rows have ended
            synced_gpus=self._sharded(),
        )[:, width:]
        unwrapped.train(was)
        rows = []
        for p, new in zip(prompts, out):
            if eos is not None and (new == eos).any():
                new = new[: int((new == eos).float().argmax()) + 1]
            rows.append((p, new))
        length = max(len(p) + len(n) for p, n in rows)
        batch = {
            "input_ids": torch.full((len(rows), length), pad, dtype=ids.dtype),
            "attention_mask": torch.zeros((len(rows), length), dtype=ids.dtype),
            "labels": torch.full((len(rows), length), -100, dtype=ids.dtype),
        }
        for i, (p, new) in enumerate(rows):
            seq = torch.cat([p, new])
            batch["input_ids"][i, : len(seq)] = seq
            batch["attention_mask"][i, : len(seq)] = 1
            batch["labels"][i, len(p) : len(seq)] = new
        return {k: v.to(ids.device) for k, v in batch.items()}

    def _sparse_losses(self, model: Any, inputs: dict, targets: Tensor, mask: Tensor, n: Any):
        """(kd, ce) against a server's or a cache's top-k (`distill.llm.cache`); a batch
        without cached rows (evaluation) gets the task loss alone."""
        from distill.llm.cache import cached_kd_losses
        from distill.llm.trainer_cache import ROW

        index = inputs.pop(ROW, None)
        ids = inputs["input_ids"]
        am = inputs.get("attention_mask", torch.ones_like(ids))
        batch = {"input": ids[:, :-1], "attention_mask": am[:, :-1],
                 "target": torch.where(mask, targets, -1), "index": index}  # fmt: skip
        source = self.served if self.served is not None else self.cached
        vocab = int(self.accelerator.unwrap_model(model).get_output_embeddings().weight.shape[0])
        if source is self.cached and index is None:
            logits = model(**inputs).logits[:, :-1, :vocab].float()
            ce = torch.nn.functional.cross_entropy(logits[mask], targets[mask], reduction="sum")
            return ce.new_zeros(()), ce / n
        return cached_kd_losses(model, batch, source, mask, n, vocab, self.chunk_size)

    def _final_hidden(self, model: torch.nn.Module, inputs: dict) -> tuple[torch.Tensor, Any]:
        """The student's final hidden states and its output head, without full logits. A
        model wrapped for several processes (DDP, FSDP) must run through its wrapper, or
        its gradients are never reduced: the whole model then runs with `logits_to_keep=1`
        (the head on one position) and a hook on its decoder keeps the hidden states."""
        decoder, head = decoder_and_head(model)
        if model is self.accelerator.unwrap_model(model):
            return decoder(**inputs).last_hidden_state, head
        seen: dict[str, torch.Tensor] = {}

        def keep(module: Any, args: Any, out: Any) -> None:
            seen["h"] = out[0] if isinstance(out, tuple) else out.last_hidden_state

        handle = decoder.register_forward_hook(keep)
        try:
            try:
                model(**inputs, logits_to_keep=1)
            except TypeError:  # a model without logits_to_keep: its full logits, then
                model(**inputs)
        finally:
            handle.remove()
        return seen["h"], head

    def _sharded(self) -> bool:
        from distill.core.distributed import is_sharded

        teacher = self.teacher is not None and is_sharded(self.teacher)
        zero3 = (
            self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3
        )
        return bool(
            self.accelerator.num_processes > 1 and (self.is_fsdp_enabled or zero3 or teacher)
        )

    def _pad_and_eos(self, model: torch.nn.Module) -> tuple[int, int | None]:
        tok = self.processing_class
        config = getattr(self.accelerator.unwrap_model(model), "config", None)
        eos = getattr(tok, "eos_token_id", None) if tok is not None else None
        eos = eos if eos is not None else getattr(config, "eos_token_id", None)
        pad = getattr(tok, "pad_token_id", None) if tok is not None else None
        pad = pad if pad is not None else getattr(config, "pad_token_id", None)
        return (pad if pad is not None else (eos if eos is not None else 0)), eos

    def prepare_teacher(self, teacher: torch.nn.Module) -> torch.nn.Module:
        """The frozen teacher placed as the student is: under DeepSpeed ZeRO-3 through the
        engine's inference path (its weights partitioned, no optimizer); sharded with FSDP2
        over all processes when the student is (FSDP) or `shard_teacher=True`, so no process
        holds all of it; else a replica on each device. See `distill.llm.sharded`."""
        from distill.llm.sharded import prepare_teacher

        teacher.eval().requires_grad_(False)
        shard = self.shard_teacher if self.shard_teacher is not None else self.is_fsdp_enabled
        return prepare_teacher(teacher, self.accelerator, self.args.device, shard)

    # ---------------------------------------------------------------- DSKD's own parameters
    def _dskd_bridge(self) -> Any:
        from distill.llm.cross_dskd import bridge

        if self.chunk_size:
            raise ValueError("cross_tokenizer='dskd' reads whole hidden states: set chunk_size=0")
        student = self.accelerator.unwrap_model(self.model)
        return bridge(student, self.teacher).to(self.args.device)

    def create_optimizer(self, *args: Any, **kwargs: Any) -> Any:
        """Trainer's optimizer, with DSKD's attention and projections in a group of their own."""
        optimizer = super().create_optimizer(*args, **kwargs)
        if getattr(self, "dskd", None) is not None and not any(
            p is q
            for g in optimizer.param_groups
            for p in g["params"]
            for q in self.dskd.parameters()
        ):
            optimizer.add_param_group({"params": list(self.dskd.parameters()), "weight_decay": 0.0})
        return optimizer

    def _save_checkpoint(self, model: Any, trial: Any, *args: Any, **kwargs: Any) -> None:
        super()._save_checkpoint(model, trial, *args, **kwargs)
        if self.dskd is not None:
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            from distill.llm.cross_dskd import save

            run_dir = self._get_output_dir(trial=trial)
            save(self, f"{run_dir}/{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, *args, **kwargs)
        if self.dskd is not None:
            from distill.llm.cross_dskd import load

            load(self, resume_from_checkpoint)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Trainer's log, with each routed teacher's KD (`kd_<name>`) beside the loss."""
        if self.router is not None and "loss" in logs:
            logs = {**logs, **self.router.take_logs()}
        super().log(logs, *args, **kwargs)

    def _set_signature_columns_if_needed(self) -> None:
        """The teacher's columns (cross-tokenizer data) are kept with the model's own."""
        super()._set_signature_columns_if_needed()
        from distill.llm.cross_trainer import TEACHER_COLUMNS
        from distill.llm.trainer_cache import ROW

        self._signature_columns = [*self._signature_columns, *TEACHER_COLUMNS, ROW, ROUTE]

    def _set_teacher(self, model: Any, server: Any, cache: tuple) -> None:
        """`teacher` (a model placed for training, or None), `served` and `cached`."""
        self.served = self.cached = None
        if server is not None:
            self.served, self.teacher = self._served(server), None
        elif cache[0] is not None:
            self.cached = self._cache(cache[0], model, cache[1], cache[2])
            self.teacher = None  # built or not, the cache stands in for it from here
        else:  # one model, or none when `teachers=` names several
            self.teacher = None if model is None else self.prepare_teacher(model)

    def _cache(self, path: str, teacher: Any, rows: Any, k: int) -> Any:
        from distill.llm.trainer_cache import BatchRows, open_or_build

        vocab = int(
            self.accelerator.unwrap_model(self.model).get_output_embeddings().weight.shape[0]
        )
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        cache = open_or_build(path, teacher, rows, self.processing_class, vocab, k, self.args.seed)
        return BatchRows(cache)

    def _served(self, options: Any) -> Any:
        from distill.llm.served import ServedTeacher, ServedTeacherArgs

        if not isinstance(options, ServedTeacherArgs):
            options = ServedTeacherArgs(**options)
        unwrapped = self.accelerator.unwrap_model(self.model)
        vocab = int(unwrapped.get_output_embeddings().weight.shape[0])
        return ServedTeacher(options, vocab, self.processing_class)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        targets = labels[:, 1:]
        mask = targets != -100
        n = num_items_in_batch if num_items_in_batch is not None else mask.sum()
        n = torch.as_tensor(n, device=labels.device)
        if self.router is not None:
            own = {k: v for k, v in inputs.items() if k not in (ROUTE, "cache_row")}
            outputs = model(**own)
            logits = outputs.logits[:, :-1]
            kd = self.router.kd(self, logits, inputs, targets, n)
            ce = F.cross_entropy(logits.float()[mask], targets[mask], reduction="sum") / n
        elif self.cross_tokenizer is not None:
            from distill.llm.cross_trainer import cross_losses

            kd, ce, outputs, extra = cross_losses(self, model, inputs, targets, mask, n)
            if return_outputs and outputs is None:
                outputs = model(**inputs)
        elif self.served is not None or self.cached is not None:
            kd, ce = self._sparse_losses(model, inputs, targets, mask, n)
            outputs = model(**inputs) if return_outputs else None  # evaluation reads logits
        elif self.chunk_size:
            s_hidden, s_head = self._final_hidden(model, inputs)
            t_decoder, t_head = decoder_and_head(self.teacher)
            with torch.no_grad():
                t_out = t_decoder(**inputs)
            kd, ce = lm_losses_from_hidden(
                s_hidden[:, :-1][mask],
                _full(s_head.weight),
                t_out.last_hidden_state[:, :-1][mask],
                _full(t_head.weight),
                targets[mask],
                divergence=self.divergence,
                num_tokens=n,
                chunk_size=self.chunk_size,
                **self.div_args,
            )
            outputs = None if not return_outputs else model(**inputs)
        else:
            outputs = model(**inputs)
            with torch.no_grad():
                t_logits = self.teacher(**inputs).logits
            kd, ce = lm_losses_from_logits(
                outputs.logits[:, :-1],
                t_logits[:, :-1],
                targets,
                divergence=self.divergence,
                num_tokens=n,
                **self.div_args,
            )
        loss = self.task_weight * ce + self.kd_weight * kd
        if self.cross_tokenizer is not None:
            loss = loss + extra  # DSKD's alignment cross-entropy, else 0
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes  # n counted tokens on every device
        return (loss, outputs) if return_outputs else loss

    def save_merged(self, path: str) -> None:
        """The student with its PEFT adapter merged into the base weights, saved as a plain
        `from_pretrained` folder (with the tokenizer when the trainer has one)."""
        model = self.accelerator.unwrap_model(self.model)
        if not hasattr(model, "merge_and_unload"):
            raise ValueError("save_merged: the student has no PEFT adapter; use save_model")
        import copy

        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(path, safe_serialization=True)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(path)


def _full(weight: torch.Tensor) -> torch.Tensor:
    """An output head's whole weight, gathered when it is sharded (FSDP2's DTensor; the
    gather is differentiable, so the student's gradient reaches its shard)."""
    from distill.core.distributed import is_dtensor

    return weight.full_tensor() if is_dtensor(weight) else weight
