"""The same KD job in `distill` and in torchdistill, timed side by side in one process.

Job: MNIST-1D (the 3,601 / 400 / 1,000 train / val / test split `distill` makes), a trained
34k-parameter 1-D CNN teacher, a 2.9k-parameter CNN student (same architecture code and the
same initial weights in both frameworks), batch 100, Adam lr 3e-3 constant, loss
0.1 CE + 0.9 T^2 KL at T = 4, `--epochs` epochs, validation accuracy after every epoch, the
best student kept, its test accuracy at the end. 2 threads.

Variants, alternated in order each round (`--rounds`), each timed from building the job to
its test accuracy (imports and the shared teacher training are outside the clock):

- ``distill``: `distill`'s public `run_experiment` with its defaults, so the teacher-output
  cache is on (it is exact here: no augmentation) and is built inside the clock, from an
  empty cache folder, every round;
- ``distill_live``: the same with ``train.cache.mode: off`` (a teacher forward every step);
- ``torchdistill``: torchdistill's `DistillationBox` with its `KDLoss` (the same loss
  weights), its DataLoader path, and the epoch loop of its image-classification example
  (validate every epoch, keep the best student, test it).

Targets (issue 8): distill / torchdistill <= 0.75 at equal accuracy; distill_live /
torchdistill <= 1.0.

torchdistill needs torchvision, so this runs in its own environment, never the project's:

    python -m venv .venv-td
    .venv-td/bin/pip install torch==2.14.1 torchvision==0.29.1
    .venv-td/bin/pip install torchdistill
    .venv-td/bin/pip install torch==2.14.1 -e .
    .venv-td/bin/python benchmarks/vs_torchdistill.py [--epochs 25] [--rounds 5]

The last line printed is one JSON object with the ratios, times and accuracies.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import add_threads, apply_threads  # noqa: E402  (benchmarks/common.py)
from paired import median_ratio
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from distill.app.build import build, load_model, weights_path
from distill.app.run import run_experiment
from distill.core.config import parse_config

TEACHER = {"name": "convnet", "args": {"channels": [32, 64, 64]}}
STUDENT = {"name": "convnet", "args": {"channels": [8, 16, 16]}}
T, ALPHA, BETA, LR, BATCH = 4.0, 0.1, 0.9, 0.003, 100


def train_settings(epochs: int, seed: int, cache: str, cache_dir: Path | None = None) -> dict:
    return {
        "epochs": epochs,
        "batch_size": BATCH,
        "seed": seed,
        "progress": False,
        "device": "cpu",
        "optimizer": {"name": "adam", "lr": LR},
        "schedule": {"name": "constant"},
        "cache": {"mode": cache, "dir": str(cache_dir) if cache_dir else None},
    }


def kd_config(
    run_dir: Path, teacher: Path, epochs: int, seed: int, cache: str, cache_dir: Path | None = None
) -> dict:
    return {
        "name": run_dir.name,
        "run_dir": str(run_dir),
        "data": {"name": "mnist1d"},
        "student": STUDENT,
        "teacher": {**TEACHER, "weights": str(teacher)},
        "scheme": "offline",
        "objective": {
            "task_weight": ALPHA,
            "terms": [{"loss": "kd", "weight": BETA, "args": {"temperature": T}}],
        },
        "train": train_settings(epochs, seed, cache, cache_dir),
    }


def train_teacher(work: Path, epochs: int) -> Path:
    cfg = {
        "name": "teacher",
        "run_dir": str(work / "teacher"),
        "data": {"name": "mnist1d"},
        "student": TEACHER,
        "scheme": "supervised",
        "train": train_settings(epochs, 0, "off"),
    }
    result = run_experiment(parse_config(cfg))
    print(f"teacher: test acc {result['test_acc']:.4f}", flush=True)
    return weights_path(str(work / "teacher"))


def run_distill(
    work: Path, teacher: Path, epochs: int, seed: int, cache: str, cache_dir: Path
) -> float:
    run_dir = work / f"distill-{cache}-{time.perf_counter_ns()}"
    cfg = parse_config(kd_config(run_dir, teacher, epochs, seed, cache, cache_dir))
    return run_experiment(cfg)["test_acc"]


class TorchdistillJob:
    """torchdistill's KD, set up as its examples do; data and models come from the same
    `distill` builders (same split, same architecture code, same initial weights)."""

    def __init__(self, work: Path, teacher: Path, epochs: int):
        cfg = parse_config(kd_config(work / "td-probe", teacher, epochs, 0, "off"))
        self.cfg, self.epochs, self.work = cfg, epochs, work
        self.data = build(cfg).data

    def student(self, seed: int) -> torch.nn.Module:
        # distill seeds the global RNG with train.seed before it builds the student
        torch.manual_seed(seed)
        return load_model(self.cfg.student, self.data, "student")

    @staticmethod
    def _tensors(split) -> TensorDataset:
        return TensorDataset(split.inputs, split.targets)

    def __call__(self, seed: int) -> float:
        from torchdistill.core.distillation import get_distillation_box

        student = self.student(seed)
        teacher = load_model(self.cfg.teacher, self.data, "teacher").eval()
        datasets = {"train": self._tensors(self.data.train)}
        kd = {
            "student_module_path": ".",
            "student_module_io": "output",
            "teacher_module_path": ".",
            "teacher_module_io": "output",
            "temperature": T,
            "alpha": ALPHA,
            "beta": BETA,
        }
        train_config = {
            "num_epochs": self.epochs,
            "train_data_loader": {
                "dataset_id": "train",
                "sampler": {"class_or_func": RandomSampler, "kwargs": {}},
                # distill drops the last partial batch (3601 -> 36 batches of 100)
                "kwargs": {"batch_size": BATCH, "num_workers": 0, "drop_last": True},
            },
            "teacher": {"requires_grad": False, "forward_proc": "forward_batch_only"},
            "student": {"requires_grad": True, "forward_proc": "forward_batch_only"},
            "optimizer": {"key": "Adam", "kwargs": {"lr": LR}},
            "criterion": {
                "key": "WeightedSumLoss",
                "kwargs": {
                    "sub_terms": {
                        "kd": {"criterion": {"key": "KDLoss", "kwargs": kd}, "weight": 1.0}
                    }
                },
            },
        }
        device = torch.device("cpu")
        box = get_distillation_box(
            teacher, student, datasets, train_config, device, None, False, 1.0
        )
        val = DataLoader(self._tensors(self.data.val), batch_size=1024)
        test = DataLoader(self._tensors(self.data.test), batch_size=1024)
        best_acc, best_path = -1.0, self.work / f"td-best-{time.perf_counter_ns()}.pt"
        for epoch in range(self.epochs):
            box.pre_epoch_process(epoch=epoch)
            for sample_batch, targets, supp_dict in box.train_data_loader:
                sample_batch, targets = sample_batch.to(device), targets.to(device)
                loss = box.forward_process(sample_batch, targets, supp_dict)
                box.post_forward_process(loss=loss)
            box.post_epoch_process()
            acc = accuracy(box.student_model, val)
            if acc > best_acc:
                best_acc = acc
                torch.save(box.student_model.state_dict(), best_path)
        final = copy.deepcopy(student)
        final.load_state_dict(torch.load(best_path, weights_only=True))
        return accuracy(final, test)


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader: DataLoader) -> float:
    model.eval()
    hits = total = 0
    for x, y in loader:
        hits += int((model(x).argmax(-1) == y).sum())
        total += len(y)
    return hits / total


def check_same_start(job: TorchdistillJob, work: Path, teacher: Path) -> None:
    """Both frameworks start from identical student weights for a given seed."""
    cfg = parse_config(kd_config(work / "probe", teacher, 1, 3, "off"))
    ours = build(cfg).student
    theirs = job.student(3)
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        if not torch.equal(a, b):
            raise SystemExit(f"the two frameworks build different initial students ({name})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--teacher-epochs", type=int, default=30)
    add_threads(ap)
    args = ap.parse_args()
    apply_threads(args.threads)
    import torchdistill

    work = Path(tempfile.mkdtemp(prefix="vs-torchdistill-"))
    teacher = train_teacher(work, args.teacher_epochs)
    job = TorchdistillJob(work, teacher, args.epochs)
    check_same_start(job, work, teacher)
    kinds = ["distill", "distill_live", "torchdistill"]
    times: dict[str, list[float]] = {k: [] for k in kinds}
    accs: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind in kinds if r % 2 == 0 else list(reversed(kinds)):
            cache_dir = work / f"cache-{r}-{kind}"  # an empty cache: its build is timed
            start = time.perf_counter()
            if kind == "torchdistill":
                acc = job(seed=r)
            else:
                mode = "auto" if kind == "distill" else "off"
                acc = run_distill(work, teacher, args.epochs, r, mode, cache_dir)
            times[kind].append(time.perf_counter() - start)
            accs[kind].append(acc)
        print(
            f"round {r + 1}: "
            + ", ".join(f"{k} {times[k][-1]:.2f}s acc {accs[k][-1]:.3f}" for k in kinds),
            flush=True,
        )

    def ratio(a: str, b: str) -> float:
        return median_ratio(times, a, b)

    result = {
        "benchmark": "vs_torchdistill",
        "torch": torch.__version__,
        "torchdistill": torchdistill.__version__,
        "epochs": args.epochs,
        "rounds": args.rounds,
        "distill_vs_torchdistill": ratio("distill", "torchdistill"),
        "distill_live_vs_torchdistill": ratio("distill_live", "torchdistill"),
        "median_seconds": {k: statistics.median(v) for k, v in times.items()},
        "test_acc_mean": {k: statistics.mean(v) for k, v in accs.items()},
        "test_acc_std": {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in accs.items()},
    }
    print(
        f"distill (defaults, cache built in the clock) / torchdistill: "
        f"{result['distill_vs_torchdistill']:.3f}"
    )
    print(f"distill (cache off) / torchdistill: {result['distill_live_vs_torchdistill']:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
