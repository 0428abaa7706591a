"""`distill.DistillationTrainer` side by side with TRL's `GKDTrainer`.

Same teacher and student (a GPT-2 teacher and a Llama student built from configs with
the same vocabulary, seeded), the same batches (one collator, no shuffling), the same
optimizer and schedule, the same divergence (GKD's generalized JSD, beta = 0.5, T = 1,
normalised by the supervised tokens of the step), and no task term (GKD has none):

- **loss agreement** at lmbda = 0: the largest per-step difference of the logged losses;
- **step time**: median seconds per optimizer step after the first two, in fresh
  processes, the trainers interleaved, as a ratio distill / TRL;
- **peak memory of a step**: on CPU, the highest resident memory sampled (every 0.5 ms)
  during steps 3..N over the resident memory at the start of each step, so the weights,
  optimizer state and code pages both trainers hold alike are left out; on CUDA,
  `torch.cuda.max_memory_allocated` over the memory allocated at the start of step 3. Taken
  for distill's chunked path (`chunk_size`) and TRL's full-logit loss.

At lmbda = 0.5 the coin flips differ (TRL draws from the global `random`, distill from its
own seeded generator), so the losses are compared as means, not step by step. Differences
of definition, stated: on a generated batch TRL divides by the original batch's supervised
token count, distill by the generated batch's own.

    python benchmarks/vs_trl.py [--vocab 32000] [--steps 20] [--rounds 3] [--threads N]
        [--device cpu|cuda] [--out DIR]

Needs `trl` (`pip install "torch==2.13.0" trl`). Threads come from `--threads` or, when not
given, torch's default for the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT, COMPLETION = 16, 48


def _tokenizer(vocab: int):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    words = {f"t{i}": i for i in range(vocab)}
    tok = Tokenizer(models.WordLevel(words, unk_token="t1"))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="t0", eos_token="t2", unk_token="t1"
    )


def _models(vocab: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    teacher = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=vocab,
            n_embd=128,
            n_layer=2,
            n_head=4,
            n_positions=128,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            eos_token_id=2,
            pad_token_id=0,
        )
    )
    torch.manual_seed(1)
    student = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            eos_token_id=2,
            pad_token_id=0,
            bos_token_id=1,
        )
    )
    return teacher, student


class _Rows:
    """Prompt + completion token rows (completion supervised), and a collator giving both
    trainers the keys they read (TRL's on-policy step also reads `prompts`)."""

    def __init__(self, vocab: int, n: int, trl_keys: bool):
        import torch

        g = torch.Generator().manual_seed(2)
        self.ids = torch.randint(3, vocab, (n, PROMPT + COMPLETION), generator=g)
        self.trl_keys = trl_keys

    def dataset(self):
        from datasets import Dataset

        return Dataset.from_dict({"input_ids": self.ids.tolist()})

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        ids = torch.tensor([r["input_ids"] for r in rows])
        labels = ids.clone()
        labels[:, :PROMPT] = -100
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        if self.trl_keys:
            batch["prompts"] = ids[:, :PROMPT]
            batch["prompt_attention_mask"] = torch.ones_like(ids[:, :PROMPT])
        return batch


def _resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _StepPeak:
    """The largest rise of memory within a step, over the memory at the step's start."""

    def __init__(self, device: str):
        import threading

        self.device, self.rise, self.base, self.top = device, 0, 0, 0
        self.watching = threading.Event()
        if device == "cpu":
            threading.Thread(target=self._poll, daemon=True).start()

    def _poll(self) -> None:
        while True:
            self.watching.wait()
            self.top = max(self.top, _resident())
            time.sleep(0.0005)

    def begin(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.top = _resident()
            self.watching.set()

    def end(self) -> None:
        import torch

        if self.device == "cuda":
            self.top = torch.cuda.max_memory_allocated()
        else:
            self.watching.clear()
            self.top = max(self.top, _resident())
        self.rise = max(self.rise, self.top - self.base)


def measure(
    trainer_kind: str, vocab: int, steps: int, lmbda: float, chunk: int, device: str, out: str
) -> dict:
    """One training run in this process: per-step losses and times, and peak memory."""
    import torch
    from transformers import TrainerCallback, TrainingArguments

    teacher, student = _models(vocab)
    tok = _tokenizer(vocab)
    rows = _Rows(vocab, steps * 8, trl_keys=trainer_kind == "trl")
    common = dict(
        output_dir=out,
        per_device_train_batch_size=8,
        max_steps=steps,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        seed=0,
        data_seed=0,
        use_cpu=device == "cpu",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    times: list[float] = []
    peak = _StepPeak(device)

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if device == "cuda":
                torch.cuda.synchronize()
            if state.global_step >= 2:
                peak.begin()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t0)
            if state.global_step >= 3:
                peak.end()

    if trainer_kind == "trl":
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        args = GKDConfig(
            **common,
            lmbda=lmbda,
            beta=0.5,
            temperature=1.0,
            max_new_tokens=16,
            max_length=PROMPT + COMPLETION,
            disable_dropout=True,
        )
        trainer = GKDTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=rows.dataset(),
            data_collator=rows,
            processing_class=tok,
            callbacks=[Clock()],
        )
    else:
        from distill import DistillationTrainer

        trainer = DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=TrainingArguments(**common),
            train_dataset=rows.dataset(),
            data_collator=rows,
            processing_class=tok,
            divergence="jsd",
            beta=0.5,
            temperature=1.0,
            kd_weight=1.0,
            task_weight=0.0,
            chunk_size=chunk,
            lmbda=lmbda,
            max_new_tokens=16,
            callbacks=[Clock()],
        )
    trainer._get_train_sampler = lambda *a, **k: None  # same order for both: no shuffling
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "trainer": trainer_kind,
        "chunk": chunk,
        "lmbda": lmbda,
        "losses": losses,
        "step_s": statistics.median(times[2:]) if len(times) > 2 else statistics.median(times),
        "peak_mib": peak.rise / 2**20,
    }


def _fresh(args: argparse.Namespace, kind: str, lmbda: float, chunk: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--one",
        kind,
        "--lmbda",
        str(lmbda),
        "--chunk",
        str(chunk),
        "--vocab",
        str(args.vocab),
        "--steps",
        str(args.steps),
        "--device",
        args.device,
        "--out",
        args.out,
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="runs/vs_trl")
    ap.add_argument("--one", default="")
    ap.add_argument("--lmbda", type=float, default=0.0)
    ap.add_argument("--chunk", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.one:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        print(
            json.dumps(
                measure(
                    args.one, args.vocab, args.steps, args.lmbda, args.chunk, args.device, args.out
                )
            )
        )
        return
    report = []
    for lmbda in (0.0, 0.5):
        runs: dict[str, list[dict]] = {"trl": [], "distill": [], "distill_chunked": []}
        for _ in range(args.rounds):  # interleaved, each run in a fresh process
            runs["trl"].append(_fresh(args, "trl", lmbda, 0))
            runs["distill"].append(_fresh(args, "distill", lmbda, 0))
            runs["distill_chunked"].append(_fresh(args, "distill", lmbda, args.chunk_size))
        trl, ours, chunked = runs["trl"][0], runs["distill"][0], runs["distill_chunked"][0]
        row = {
            "lmbda": lmbda,
            "mean_loss": {k: statistics.mean(v[0]["losses"]) for k, v in runs.items()},
            "step_ratio": statistics.median(
                d["step_s"] / t["step_s"] for d, t in zip(runs["distill"], runs["trl"])
            ),
            "step_ratio_chunked": statistics.median(
                d["step_s"] / t["step_s"] for d, t in zip(runs["distill_chunked"], runs["trl"])
            ),
            "trl_step_s": statistics.median(r["step_s"] for r in runs["trl"]),
            "peak_mib": {k: statistics.median(r["peak_mib"] for r in v) for k, v in runs.items()},
        }
        row["peak_ratio_chunked"] = row["peak_mib"]["distill_chunked"] / row["peak_mib"]["trl"]
        if lmbda == 0.0:
            row["max_abs_dloss"] = max(abs(a - b) for a, b in zip(ours["losses"], trl["losses"]))
            row["max_abs_dloss_chunked"] = max(
                abs(a - b) for a, b in zip(chunked["losses"], trl["losses"])
            )
        report.append(row)
        print(json.dumps(row), flush=True)
    (Path(args.out) / "vs_trl.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
