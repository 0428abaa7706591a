"""The whole cost of `distill` against a hand-written loop: the process, `fit()`, and the
share of the loop spent at the end of each epoch.

One KD job (MNIST-1D, the 34k-parameter CNN teacher, the 2.9k-parameter CNN student, batch
100, Adam at 3e-3, 0.1 CE + 0.9 T^2 KL at T = 4, 25 epochs) runs two ways, each in a fresh
process, the pairs interleaved (the order alternating) so drift hits both alike:

- `distill run CONFIG` through the command line's entry point (`distill.app.cli.main`, in
  the child process, so its calls can be timed): config checks, the run dir and its lock,
  validation every epoch, the best weights and the resume checkpoint written atomically,
  the metrics log, the test of the best weights, results.json;
- a hand-written loop doing the same math on the same batches (the same seeded order, the
  same models and kernels): a validation pass every epoch keeping the best weights in
  memory, then one `torch.save` and a test at the end: what a careful script does.

Reported, as medians over the pairs of the paired ratios distill / hand:
- `whole_process`: wall time of the process from start to exit (imports included);
- `whole_process_cpu`: the CPU time (user + system, all threads) the process used: on a
  shared machine whose hypervisor takes cycles away (steal time) it moves less than the
  wall time does (`steal_share`, read from `/proc/stat`, says how much was taken);
- `whole_fit`: the training call (`Trainer.fit` / the hand loop, validation included);
- `end_of_epoch_share`: distill's time outside the training batches (validation, logs,
  checkpoints) over its whole `fit`, and the same share for the hand loop.

`distill run` starts with its imports settled (`distill.app.startup`: no garbage collection
over the import heap); `--hand-startup settled` gives the hand-written script the same.

    python benchmarks/whole_run_overhead.py [--epochs 25] [--pairs 5] [--threads N]
        [--eval-every 1] [--checkpoint-every 1] [--hand-startup plain|settled]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import add_threads, fresh_dir

TEACHER = {"name": "convnet", "args": {"channels": [32, 64, 64]}}
STUDENT = {"name": "convnet", "args": {"channels": [8, 16, 16]}}
T = 4.0


def _config(work: Path, epochs: int, eval_every: int, checkpoint_every: int) -> dict:
    return {
        "name": "overhead",
        "run_dir": str(work / "run"),
        "scheme": "offline",
        "data": {"name": "mnist1d"},
        "teacher": {**TEACHER, "weights": str(work.parent / "teacher.safetensors")},
        "student": STUDENT,
        "objective": {
            "task_weight": 0.1,
            "terms": [{"loss": "kd", "weight": 0.9, "args": {"temperature": T}}],
        },
        "train": {
            "epochs": epochs,
            "batch_size": 100,
            "progress": False,
            "device": "cpu",
            "optimizer": {"name": "adam", "lr": 0.003},
            "schedule": {"name": "constant"},
            "cache": {"mode": "off"},
            "eval_every": eval_every,
            "checkpoint_every": checkpoint_every,
        },
    }


def trainer_for(work: Path, epochs: int, eval_every: int, checkpoint_every: int):
    """The `Trainer` `distill run` builds for this job (run dir `work/run`), not yet fitted."""
    from distill.app.build import build
    from distill.core.config import parse_config
    from distill.loop.trainer import Trainer

    cfg = parse_config(_config(work, epochs, eval_every, checkpoint_every))
    built = build(cfg)
    return Trainer(
        built.scheme,
        built.data.train,
        built.data.val,
        cfg.train,
        run_dir=work / "run",
        augment=built.augment,
    )


def child_distill(work: Path, args: argparse.Namespace) -> dict:
    """`distill run CONFIG` in this process, through the command line's own entry point
    (`distill.app.cli.main`), with the loop's calls timed."""
    import yaml

    from distill.app.cli import main as distill_main
    from distill.loop.trainer import Trainer

    spent = {"train": 0.0, "fit": 0.0}
    train_epoch, fit = Trainer._train_epoch, Trainer.fit

    def timed_epoch(self):
        t0 = time.perf_counter()
        try:
            return train_epoch(self)
        finally:
            spent["train"] += time.perf_counter() - t0

    def timed_fit(self, *a, **k):
        t0 = time.perf_counter()
        try:
            return fit(self, *a, **k)
        finally:
            spent["fit"] += time.perf_counter() - t0

    Trainer._train_epoch, Trainer.fit = timed_epoch, timed_fit
    config = work / "config.yaml"
    config.write_text(
        yaml.safe_dump(_config(work, args.epochs, args.eval_every, args.checkpoint_every))
    )
    with contextlib.redirect_stdout(sys.stderr):  # (the results JSON it prints)
        code = distill_main(["run", str(config)])
    if code:
        raise SystemExit(f"distill run exited with {code}")
    result = json.loads((work / "run" / "results.json").read_text())
    return {**spent, "test_acc": result["test_acc"]}


def hand_epoch(student, teacher, opt, x, y):
    """The hand-written KD epoch: batches of 100 in a seeded order per epoch, 0.1 CE +
    0.9 T^2 KL(teacher || student) at T = 4, one optimizer step per batch."""
    import torch
    import torch.nn.functional as F

    n, bs = len(x), 100

    def epoch(e: int) -> None:
        student.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(e))
        for b in range(n // bs):
            idx = order[b * bs : (b + 1) * bs]
            z = student(x[idx])
            with torch.no_grad():
                zt = teacher(x[idx])
            log_p, log_q = F.log_softmax(z / T, -1), F.log_softmax(zt / T, -1)
            kd = (log_q.exp() * (log_q - log_p)).sum(-1).mean() * T * T
            loss = 0.1 * F.cross_entropy(z, y[idx]) + 0.9 * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return epoch


def child_hand(work: Path, args: argparse.Namespace) -> dict:
    if getattr(args, "hand_startup", "plain") == "settled":
        settle_like_distill()
    import torch
    from safetensors.torch import load_file

    from distill.data import load_dataset
    from distill.models import build_model

    torch.manual_seed(args.seed)  # as distill seeds: then the data, the student, the teacher
    data = load_dataset("mnist1d")
    student = build_model(STUDENT["name"], data.input_shape, data.num_classes, STUDENT["args"])
    teacher = build_model(TEACHER["name"], data.input_shape, data.num_classes, TEACHER["args"])
    teacher.load_state_dict(load_file(work.parent / "teacher.safetensors"))
    teacher.eval().requires_grad_(False)
    opt = torch.optim.Adam(student.parameters(), lr=0.003, fused=True)
    xv, yv = data.val.inputs, data.val.targets
    train_epoch = hand_epoch(student, teacher, opt, data.train.inputs, data.train.targets)
    spent = {"train": 0.0, "fit": 0.0}
    best, best_state = -1.0, None
    t_fit = time.perf_counter()
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        train_epoch(epoch)
        spent["train"] += time.perf_counter() - t0
        student.eval()
        with torch.no_grad():
            acc = float((student(xv).argmax(-1) == yv).float().mean())
        if acc > best:
            best, best_state = acc, {k: v.clone() for k, v in student.state_dict().items()}
    spent["fit"] = time.perf_counter() - t_fit
    torch.save(best_state, work / "best.pt")
    student.load_state_dict(best_state)
    with torch.no_grad():
        xt, yt = data.test.inputs, data.test.targets
        spent["test_acc"] = float((student(xt).argmax(-1) == yt).float().mean())
    return spent


def settle_like_distill() -> None:
    """`--hand-startup settled`: the hand-written script given the start-up `distill run`
    has (`distill.app.startup`: imports with the garbage collector off, then frozen)."""
    import gc

    gc.disable()
    import torch._dynamo  # noqa: F401

    gc.freeze()
    gc.enable()


def _children_cpu() -> float:
    """User + system CPU seconds of this process's waited-for children (`os.times`, which
    covers every thread of each child), the child's CPU time being the difference."""
    t = os.times()
    return t.children_user + t.children_system


def _cpu_jiffies() -> tuple[int, int] | None:
    """(steal, total) jiffies of the machine from `/proc/stat`, or None where it is absent:
    how much of the run the hypervisor took away, reported beside the ratios."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (fields[7] if len(fields) > 7 else 0), sum(fields)


def _steal_share(start: tuple[int, int] | None, end: tuple[int, int] | None) -> float | None:
    """The share of the machine's CPU time stolen between two `_cpu_jiffies` readings."""
    if start is None or end is None or end[1] == start[1]:
        return None
    return (end[0] - start[0]) / (end[1] - start[1])


def _run_child(kind: str, work: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--work", str(work)]
    cmd += ["--epochs", str(args.epochs), "--seed", str(args.seed)]
    cmd += ["--eval-every", str(args.eval_every), "--checkpoint-every", str(args.checkpoint_every)]
    cmd += ["--hand-startup", args.hand_startup]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    before = _children_cpu()
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    cpu = _children_cpu() - before
    if done.returncode:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-3000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process": wall, "cpu": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=1)
    ap.add_argument("--checkpoint-every", type=int, default=1)
    ap.add_argument(
        "--hand-startup",
        choices=["plain", "settled"],
        default="plain",
        help="settled: give the hand-written script distill's start-up (see settle_like_distill)",
    )
    ap.add_argument("--child", choices=["distill", "hand"])
    ap.add_argument("--work", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    add_threads(ap)
    args = ap.parse_args()
    if args.child:
        if args.child == "distill":  # as `distill run` starts: its start-up first
            from distill.app.startup import settle_startup

            settle_startup()
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        args.work.mkdir(parents=True, exist_ok=True)
        fn = child_distill if args.child == "distill" else child_hand
        print(json.dumps(fn(args.work, args)))
        return
    root = fresh_dir(args.out, "whole-run-")
    import torch

    from distill.core.checkpoint import save_weights
    from distill.data import load_dataset
    from distill.models import build_model

    data = load_dataset("mnist1d")
    torch.manual_seed(0)
    teacher = build_model(TEACHER["name"], data.input_shape, data.num_classes, TEACHER["args"])
    save_weights(root / "teacher.safetensors", teacher)  # speed does not care
    rows, jiffies = [], None
    for p in range(args.pairs + 1):  # the first pair warms the page cache and is dropped
        if p == 1:
            jiffies = _cpu_jiffies()
        order = ("distill", "hand") if p % 2 == 0 else ("hand", "distill")
        pair = {kind: _run_child(kind, root / f"{kind}-{p}", args) for kind in order}
        if p == 0:
            continue
        rows.append(pair)
        d, h = pair["distill"], pair["hand"]
        print(
            f"pair {p}: process {d['process']:.2f} / {h['process']:.2f} s "
            f"(CPU {d['cpu']:.2f} / {h['cpu']:.2f} s), fit {d['fit']:.2f} / "
            f"{h['fit']:.2f} s, end of epoch {1 - d['train'] / d['fit']:.1%} / "
            f"{1 - h['train'] / h['fit']:.1%}",
            file=sys.stderr,
        )

    def med(fn) -> float:
        return statistics.median(fn(r["distill"], r["hand"]) for r in rows)

    result = {
        "benchmark": "whole_run_overhead",
        "epochs": args.epochs,
        "pairs": args.pairs,
        "threads": torch.get_num_threads(),
        "eval_every": args.eval_every,
        "checkpoint_every": args.checkpoint_every,
        "hand_startup": args.hand_startup,
        "whole_process": med(lambda d, h: d["process"] / h["process"]),
        "whole_process_cpu": (  # (None where the system reports no children's CPU time)
            med(lambda d, h: d["cpu"] / h["cpu"]) if all(r["hand"]["cpu"] for r in rows) else None
        ),
        "whole_fit": med(lambda d, h: d["fit"] / h["fit"]),
        "train_epochs_only": med(lambda d, h: d["train"] / h["train"]),
        "end_of_epoch_share_distill": med(lambda d, h: 1 - d["train"] / d["fit"]),
        "end_of_epoch_share_hand": med(lambda d, h: 1 - h["train"] / h["fit"]),
        "median_seconds": {
            k: {
                m: statistics.median(r[k][m] for r in rows)
                for m in ("process", "cpu", "fit", "train")
            }
            for k in ("distill", "hand")
        },
        "test_acc": {k: [r[k]["test_acc"] for r in rows] for k in ("distill", "hand")},
        "steal_share": _steal_share(jiffies, _cpu_jiffies()),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
