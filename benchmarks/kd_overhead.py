"""What `distill` costs over hand-written PyTorch, and what a KD step costs over student-only.

MNIST-1D (3,601 training signals), a 34k-parameter 1-D CNN teacher, a 2.9k-parameter CNN
student, batch 100, Adam (lr 3e-3, constant), KD 0.1 CE + 0.9 T^2 KL at T = 4, 2 threads.
Six loops run side by side, interleaved epoch by epoch (the order alternating), so that
the machine's drift hits them alike; the time of each is its training epochs only
(evaluation and checkpoints, the same once-per-epoch work in every variant, are left out).
Each of `--rounds` rounds starts all six afresh from one seed; the reported ratios are
medians over rounds of the paired ratios:

1. framework overhead: `distill` live-teacher KD vs a hand-written loop doing the same math
   (target <= 1.02);
2. cached-teacher KD vs student-only training, both in `distill` (target <= 1.05), with
   the live-teacher ratio next to it; the hand-written pair for reference.

    python benchmarks/kd_overhead.py [--epochs 25] [--rounds 5]

The last line printed is one JSON object with every ratio and time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import add_threads, apply_threads  # noqa: E402  (benchmarks/common.py)
from paired import EpochRunner, median_ratio

from distill.core.config import parse_config

TEACHER = {"name": "convnet", "args": {"channels": [32, 64, 64]}}
STUDENT = {"name": "convnet", "args": {"channels": [8, 16, 16]}}
T = 4.0


def config(kind: str, epochs: int, run_dir: Path, teacher_weights: Path | None) -> dict:
    cfg = {
        "name": kind,
        "run_dir": str(run_dir),
        "data": {"name": "mnist1d"},
        "student": STUDENT,
        "train": {
            "epochs": epochs,
            "batch_size": 100,
            "progress": False,
            "device": "cpu",
            "optimizer": {"name": "adam", "lr": 0.003},
            "schedule": {"name": "constant"},
            "cache": {
                "mode": "on" if kind == "distill_cached" else "off",
                "dir": str(run_dir.parent / "cache"),
            },
        },
    }
    if kind == "distill_student":
        cfg["scheme"] = "supervised"
        return cfg
    cfg["scheme"] = "offline"
    cfg["teacher"] = {**TEACHER, "weights": str(teacher_weights)}
    cfg["objective"] = {
        "task_weight": 0.1,
        "terms": [{"loss": "kd", "weight": 0.9, "args": {"temperature": T}}],
    }
    return cfg


class DistillRunner(EpochRunner):
    """One `distill` run of the given kind."""

    def __init__(self, kind: str, epochs: int, work: Path, teacher_weights: Path, seed: int):
        cfg = config(kind, epochs, work / f"{kind}-{time.perf_counter_ns()}", teacher_weights)
        cfg["train"]["seed"] = seed
        super().__init__(cfg)


class HandRunner:
    """A minimal loop: the same batches' math, nothing else."""

    def __init__(self, kind: str, data, student, teacher, seed: int, fused: bool):
        self.kind, self.student, self.teacher = kind, student, teacher
        self.x, self.y = data.train.inputs, data.train.targets
        # fused: the kernel distill picks by default (the same math); else PyTorch's default
        self.opt = torch.optim.Adam(student.parameters(), lr=0.003, fused=fused or None)
        self.cached = None
        if kind == "hand_cached":
            with torch.no_grad():
                self.cached = teacher(self.x)
        self.seed, self.epochs_done = seed, 0

    def epoch(self) -> float:
        student, teacher, opt, bs = self.student, self.teacher, self.opt, 100
        student.train()
        n = len(self.x)
        gen = torch.Generator().manual_seed(self.seed * 1000 + self.epochs_done)
        start = time.perf_counter()
        order = torch.randperm(n, generator=gen)
        for b in range(n // bs):
            idx = order[b * bs : (b + 1) * bs]
            x, y = self.x[idx], self.y[idx]
            z = student(x)
            loss = F.cross_entropy(z, y)
            if self.kind != "hand_student":
                if self.cached is not None:
                    zt = self.cached[idx]
                else:
                    with torch.no_grad():
                        zt = teacher(x)
                log_p = F.log_softmax(z / T, -1)
                log_q = F.log_softmax(zt / T, -1)
                kd = (log_q.exp() * (log_q - log_p)).sum(-1).mean() * T * T
                loss = 0.1 * loss + 0.9 * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        self.epochs_done += 1
        return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--hand-optimizer",
        choices=["fused", "default"],
        default="fused",
        help="Adam kernel of the hand-written loops: fused (what distill uses, the same math) "
        "or PyTorch's default for the device (a per-tensor loop on CPU)",
    )
    add_threads(ap)
    args = ap.parse_args()
    apply_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="kd-overhead-"))
    base = parse_config(config("distill_live", 1, work / "base", work / "teacher.safetensors"))
    from distill.app.build import load_data, load_model
    from distill.core.checkpoint import save_weights

    data = load_data(base.data)
    torch.manual_seed(0)
    teacher = load_model(base.teacher.model_copy(update={"weights": None}), data, "teacher")
    save_weights(work / "teacher.safetensors", teacher)  # random init: speed does not care
    teacher.eval()
    kinds = [
        "hand_student",
        "hand_live",
        "hand_cached",
        "distill_student",
        "distill_live",
        "distill_cached",
    ]
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        runners = {}
        for kind in kinds:
            if kind.startswith("hand"):
                torch.manual_seed(r)
                student = load_model(base.student, data, "student")
                fused = args.hand_optimizer == "fused"
                runners[kind] = HandRunner(kind, data, student, teacher, r, fused)
            else:
                runners[kind] = DistillRunner(
                    kind, args.epochs, work, work / "teacher.safetensors", r
                )
        spent = dict.fromkeys(kinds, 0.0)
        for epoch in range(args.epochs):  # interleaved epoch by epoch, the order alternating
            for kind in kinds if epoch % 2 == 0 else reversed(kinds):
                spent[kind] += runners[kind].epoch()
        for kind in kinds:
            times[kind].append(spent[kind])
        print(
            f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
            flush=True,
        )

    def ratio(a: str, b: str) -> float:
        return median_ratio(times, a, b)

    result = {
        "benchmark": "kd_overhead",
        "epochs": args.epochs,
        "rounds": args.rounds,
        "hand_optimizer": args.hand_optimizer,
        "framework_overhead_live_kd": ratio("distill_live", "hand_live"),
        "framework_overhead_student_only": ratio("distill_student", "hand_student"),
        "cached_kd_vs_student_only": ratio("distill_cached", "distill_student"),
        "live_kd_vs_student_only": ratio("distill_live", "distill_student"),
        "hand_cached_vs_student_only": ratio("hand_cached", "hand_student"),
        "hand_live_vs_student_only": ratio("hand_live", "hand_student"),
        "median_seconds": {k: statistics.median(v) for k, v in times.items()},
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "student_params": sum(p.numel() for p in load_model(base.student, data, "s").parameters()),
    }
    print(
        f"framework overhead (live KD, distill / hand): {result['framework_overhead_live_kd']:.3f}"
    )
    print(
        f"cached KD / student-only (distill): {result['cached_kd_vs_student_only']:.3f}; "
        f"live KD / student-only: {result['live_kd_vs_student_only']:.3f}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
