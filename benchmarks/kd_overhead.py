"""What `distill` costs over hand-written PyTorch, and what a KD step costs over student-only.

MNIST-1D (3,601 training signals), a 34k-parameter 1-D CNN teacher, a 2.9k-parameter CNN
student, batch 100, Adam (lr 3e-3, constant), KD 0.1 CE + 0.9 T^2 KL at T = 4, 2 threads.
Six loops run side by side, alternating, `--rounds` times each; the time of each is its
training epochs only (evaluation and checkpoints, the same once-per-epoch work in every
variant, are left out), and the reported ratios are medians over rounds of the paired
ratios:

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

from distill.build import build
from distill.config import parse_config
from distill.trainer import Trainer

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


def time_distill(kind: str, epochs: int, work: Path, teacher_weights: Path) -> float:
    run_dir = work / f"{kind}-{time.perf_counter_ns()}"
    built = build(parse_config(config(kind, epochs, run_dir, teacher_weights)))
    trainer = Trainer(
        built.scheme, built.data.train, built.data.val, built.cfg.train, run_dir=run_dir
    )
    cache = getattr(built.scheme, "teacher_cache", None)
    if cache is not None:
        cache.ensure()  # built once, before the timed loop (reused across runs)
    spent = [0.0]
    inner = trainer._train_epoch

    def timed_epoch():
        start = time.perf_counter()
        try:
            return inner()
        finally:
            spent[0] += time.perf_counter() - start

    trainer._train_epoch = timed_epoch
    trainer.fit()
    return spent[0]


def time_hand(kind: str, epochs: int, data, student, teacher) -> float:
    """A minimal loop: the same batches' math, nothing else."""
    x_all, y_all = data.train.inputs, data.train.targets
    opt = torch.optim.Adam(student.parameters(), lr=0.003)
    cached = None
    if kind == "hand_cached":
        with torch.no_grad():
            cached = teacher(x_all)
    student.train()
    n, bs = len(x_all), 100
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        for b in range(n // bs):
            idx = order[b * bs : (b + 1) * bs]
            x, y = x_all[idx], y_all[idx]
            z = student(x)
            loss = F.cross_entropy(z, y)
            if kind != "hand_student":
                if cached is not None:
                    zt = cached[idx]
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
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="kd-overhead-"))
    base = parse_config(config("distill_live", 1, work / "base", work / "teacher.safetensors"))
    from distill.build import load_data, load_model
    from distill.checkpoint import save_weights

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
        for kind in kinds if r % 2 == 0 else reversed(kinds):
            if kind.startswith("hand"):
                torch.manual_seed(r)
                student = load_model(base.student, data, "student")
                times[kind].append(time_hand(kind, args.epochs, data, student, teacher))
            else:
                times[kind].append(
                    time_distill(kind, args.epochs, work, work / "teacher.safetensors")
                )
        print(
            f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
            flush=True,
        )

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    result = {
        "benchmark": "kd_overhead",
        "epochs": args.epochs,
        "rounds": args.rounds,
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
