"""Run under torchrun (or alone): `DistillationTrainer` on a fixed global batch, the teacher
sharded over the processes when SHARD_TEACHER=1; rank 0 saves the student's weights to
$OUT/student.safetensors and says how much of the teacher each process held. The GPU check
(benchmarks/gpu_check.sh) runs it with DEVICE=cuda under Accelerate's FSDP."""

from __future__ import annotations

import json
import os
import sys

import torch

from distill import DistillationTrainer
from distill.core.distributed import is_dtensor, local
from distill.models import build_model

LLAMA = {"arch": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
         "num_attention_heads": 2, "num_key_value_heads": 1}  # fmt: skip
GPT2 = {"arch": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2}


def main() -> None:
    from transformers import TrainingArguments

    out, world = os.environ["OUT"], int(os.environ.get("WORLD_SIZE", "1"))
    torch.manual_seed(0)
    teacher = build_model("hf_causal_lm", (16,), 64, GPT2)
    student = build_model("hf_causal_lm", (16,), 64, LLAMA)
    ids = torch.randint(0, 64, (32, 16), generator=torch.Generator().manual_seed(0))
    rows = []
    for i, r in enumerate(ids):
        labels = r.clone()
        labels[: 2 + i % 5] = -100  # prompts of unequal length: unequal tokens per process
        rows.append({"input_ids": r, "attention_mask": torch.ones(16, dtype=torch.long),
                     "labels": labels})  # fmt: skip
    args = TrainingArguments(
        output_dir=out, max_steps=3, per_device_train_batch_size=8 // world,
        gradient_accumulation_steps=2, report_to=[], save_strategy="no",
        use_cpu=os.environ.get("DEVICE", "cpu") == "cpu",  # DEVICE=cuda: the GPU check
        learning_rate=1e-2, seed=0, dataloader_drop_last=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=rows, teacher_model=teacher, divergence="jsd",
        chunk_size=int(os.environ.get("CHUNK", "0")),
        shard_teacher=os.environ.get("SHARD_TEACHER") == "1",
    )  # fmt: skip
    held = sum(local(p).numel() for p in trainer.teacher.parameters())
    whole = sum(p.numel() for p in build_model("hf_causal_lm", (16,), 64, GPT2).parameters())
    sharded = all(is_dtensor(p) for p in trainer.teacher.parameters())
    trainer.train()
    if trainer.args.process_index == 0:
        from safetensors.torch import save_file

        state = {k: v.contiguous() for k, v in trainer.model.state_dict().items()}
        save_file(state, os.path.join(out, "student.safetensors"))
        print("TRAINER-WORKER " + json.dumps({"held": held, "whole": whole, "sharded": sharded}))
    sys.stdout.flush()
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        # gloo's threads can still abort the interpreter's own teardown ("terminate called
        # without an active exception") after everything is saved: end the rank here
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
