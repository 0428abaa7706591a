"""Data read from disk: throughput against a hand-written DataLoader loop, and memory that
does not grow with the number of files.

    python benchmarks/data_scale.py throughput [--images 20000] [--rounds 5] [--out DIR]
    python benchmarks/data_scale.py memory [--small 20000] [--large 200000] [--out DIR]

throughput: an image folder of 32x32 RGB PNGs (the bundled digits, upscaled); one epoch of
KD (a 2-conv teacher, live, and a smaller 2-conv student; batch 256; 2 DataLoader workers;
random crop with padding 4, horizontal flip, normalisation) plus a validation pass, in
distill (`Trainer.fit`) and in a hand-written loop doing the same decode, transforms, math
and validation. After one discarded warm-up pair, the two alternate, `--rounds` pairs; the
ratio reported is the median of the paired samples/s ratios (distill / hand-written;
target >= 0.95).

memory: peak RSS of a process (and, separately, of its DataLoader workers) that trains one
epoch over `--small` and over `--large` on-disk 8x8 PNGs, with the teacher cache on and off
(target: large <= small + 100 MB in each setting).

Files are written under --out (default: ./bench_data); the thread count is the torch
default unless --threads is given. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

TEACHER = {"name": "convnet", "args": {"channels": [32, 64]}}
STUDENT = {"name": "convnet", "args": {"channels": [8, 16]}}


def write_folder(root: Path, n: int, size: int, rgb: bool) -> Path:
    """`n` PNGs under root/train/<digit>/ (digits cycled, with per-file noise), once."""
    from PIL import Image
    from sklearn.datasets import load_digits

    done = root / f".done-{n}-{size}-{rgb}"
    if done.is_file():
        return root
    d = load_digits()
    rng = np.random.default_rng(0)
    for i in range(n):
        k = i % len(d.target)
        img = np.kron(d.images[k] / 16, np.ones((size // 8, size // 8)))
        img = np.clip(img + 0.05 * rng.standard_normal(img.shape), 0, 1)
        arr = (img * 255).astype(np.uint8)
        if rgb:
            arr = np.stack([arr, arr[::-1], arr[:, ::-1]], axis=-1)
        path = root / "train" / str(d.target[k]) / f"{i:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path)
    done.write_text("")
    return root


# ---------------------------------------------------------------- throughput
def distill_epoch(
    root: Path,
    run_dir: Path,
    teacher_file: Path,
    workers: int,
    device: str = "cpu",
    precision: str = "fp32",
) -> tuple[float, int]:
    from distill.app.build import build
    from distill.core.config import parse_config
    from distill.loop.trainer import Trainer

    cfg = parse_config(
        {
            "name": "tp",
            "run_dir": str(run_dir),
            "scheme": "offline",
            "data": {
                "name": "image_folder",
                "options": {
                    "train": str(root / "train"),
                    "test_fraction": 0.05,
                    "train_transforms": [
                        {"random_crop": {"size": 32, "padding": 4}},
                        "hflip",
                        {"normalize": {"mean": "half"}},
                    ],
                    "eval_transforms": [{"normalize": {"mean": "half"}}],
                },
                "val_fraction": 0.05,
            },
            "teacher": {**TEACHER, "weights": str(teacher_file)},
            "student": STUDENT,
            "objective": {"task_weight": 0.1, "terms": [{"loss": "kd", "weight": 0.9}]},
            "train": {
                "epochs": 1,
                "batch_size": 256,
                "workers": workers,
                "eval_batch_size": 256,
                "progress": False,
                "cache": {"mode": "off"},
                "optimizer": {"name": "adamw", "lr": 0.003},
                "schedule": {"name": "constant"},
                "device": device,
                "precision": precision,
            },
        }
    )
    built = build(cfg)
    trainer = Trainer(built.scheme, built.data.train, built.data.val, cfg.train, run_dir=run_dir)
    start = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - start, trainer.batches_per_epoch * 256


class HandFolder(torch.utils.data.Dataset):
    """The hand-written side: the same files, PIL decode, crop, flip and normalisation."""

    def __init__(self, files: list[tuple[str, int]], train: bool, seed: int = 0):
        self.files, self.train, self.seed = files, train, seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.files[i]
        with Image.open(path) as img:
            img = img.convert("RGB")
        if self.train:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
            left, top = (int(torch.randint(9, (), generator=g)) - 4 for _ in range(2))
            img = img.crop((left, top, left + 32, top + 32))
            if float(torch.rand((), generator=g)) < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.asarray(img).transpose(2, 0, 1).copy()).float() / 255
        return (x - 0.5) / 0.5, label


def hand_epoch(
    root: Path, teacher_file: Path, workers: int, device: str = "cpu", precision: str = "fp32"
) -> tuple[float, int]:
    from safetensors.torch import load_file

    from distill.data.core import split_indices
    from distill.models import build_model

    files = sorted((str(p), int(p.parent.name)) for p in (root / "train").rglob("*.png"))
    labels = np.array([y for _, y in files])
    keep, _test = split_indices(labels, 0.05, 12345)
    fit, val = split_indices(labels[keep], 0.05, 0)
    train_files = [files[keep[i]] for i in fit]
    val_files = [files[keep[i]] for i in val]
    teacher = build_model(TEACHER["name"], (3, 32, 32), 10, TEACHER["args"])
    teacher.load_state_dict(load_file(teacher_file))
    dev = torch.device(device)
    teacher.eval().to(dev)
    student = build_model(STUDENT["name"], (3, 32, 32), 10, STUDENT["args"]).to(dev)
    opt = torch.optim.AdamW(student.parameters(), lr=0.003)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = lambda: torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None)  # noqa: E731
    loader = torch.utils.data.DataLoader(
        HandFolder(train_files, True),
        batch_size=256,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=dev.type == "cuda",
    )
    val_loader = torch.utils.data.DataLoader(
        HandFolder(val_files, False), batch_size=256, num_workers=workers
    )
    start = time.perf_counter()
    seen = 0
    student.train()
    for x, y in loader:
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        with torch.no_grad(), autocast():
            t = teacher(x).float()
        with autocast():
            s = student(x).float()
        kd = (
            F.kl_div(
                F.log_softmax(s / 4, -1),
                F.log_softmax(t / 4, -1),
                log_target=True,
                reduction="batchmean",
            )
            * 16
        )
        loss = 0.1 * F.cross_entropy(s, y) + 0.9 * kd
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
    student.eval()
    with torch.no_grad():
        correct = sum(int((student(x.to(dev)).argmax(-1).cpu() == y).sum()) for x, y in val_loader)
    _ = correct
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, seen


def throughput(args: argparse.Namespace) -> dict:
    from safetensors.torch import save_file

    from distill.models import build_model

    root = write_folder(Path(args.out) / f"rgb32-{args.images}", args.images, 32, True)
    teacher_file = Path(args.out) / "teacher32.safetensors"
    torch.manual_seed(0)
    save_file(
        build_model(TEACHER["name"], (3, 32, 32), 10, TEACHER["args"]).state_dict(), teacher_file
    )
    ratios, rows = [], []
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        # one discarded pair first: the first run in a process pays one-off costs (lazy
        # imports, the page cache filling with the images) that neither side should carry
        on = (args.device, args.precision)
        distill_epoch(root, Path(tmp) / "warm", teacher_file, args.workers, *on)
        hand_epoch(root, teacher_file, args.workers, *on)
        for r in range(args.rounds):
            order = ("distill", "hand") if r % 2 == 0 else ("hand", "distill")
            rate = {}
            for kind in order:
                if kind == "distill":
                    secs, n = distill_epoch(
                        root, Path(tmp) / f"d{r}", teacher_file, args.workers, *on
                    )
                else:
                    secs, n = hand_epoch(root, teacher_file, args.workers, *on)
                rate[kind] = n / secs
            ratios.append(rate["distill"] / rate["hand"])
            rows.append(rate)
            print(
                f"round {r + 1}: distill {rate['distill']:.0f} samples/s, hand-written {rate['hand']:.0f}, ratio {ratios[-1]:.3f}",
                file=sys.stderr,
            )
    return {
        "images": args.images,
        "workers": args.workers,
        "device": args.device,
        "precision": args.precision,
        "threads": torch.get_num_threads(),
        "median_ratio": statistics.median(ratios),
        "ratios": ratios,
        "samples_per_s": rows,
    }


# ---------------------------------------------------------------- memory
CHILD = r"""
import json, resource, sys
from distill.core.config import parse_config
from distill.app.run import run_experiment
cfg = json.loads(sys.argv[1])
run_experiment(parse_config(cfg))
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"peak_rss_mb": own, "worker_peak_rss_mb": workers}))
"""


def peak_rss(root: Path, run_dir: Path, teacher_file: Path, cache: str, cache_dir: Path) -> dict:
    cfg = {
        "name": "mem",
        "run_dir": str(run_dir),
        "scheme": "offline",
        "data": {
            "name": "image_folder",
            "options": {
                "train": str(root / "train"),
                "mode": "L",
                "test_fraction": 0.02,
                "train_transforms": ["hflip"],
            },
            "val_fraction": 0.02,
        },
        "teacher": {**TEACHER, "weights": str(teacher_file)},
        "student": STUDENT,
        "objective": {"task_weight": 0.1, "terms": [{"loss": "kd", "weight": 0.9}]},
        "train": {
            "epochs": 1,
            "batch_size": 256,
            "workers": 2,
            "progress": False,
            "cache": {"mode": cache, "dir": str(cache_dir)},
        },
    }
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(args: argparse.Namespace) -> dict:
    from safetensors.torch import save_file

    from distill.models import build_model

    teacher_file = Path(args.out) / "teacher8.safetensors"
    torch.manual_seed(0)
    save_file(
        build_model(TEACHER["name"], (1, 8, 8), 10, TEACHER["args"]).state_dict(), teacher_file
    )
    result = {}
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        for n in (args.small, args.large):
            root = write_folder(Path(args.out) / f"grey8-{n}", n, 8, False)
            for cache in ("off", "on"):
                t = time.perf_counter()
                rss = peak_rss(
                    root, Path(tmp) / f"r{n}{cache}", teacher_file, cache, Path(tmp) / "cache"
                )
                rss["seconds"] = time.perf_counter() - t
                result[f"{n}_cache_{cache}"] = rss
                print(f"{n} images, cache {cache}: {rss}", file=sys.stderr)
    for cache in ("off", "on"):
        small, large = result[f"{args.small}_cache_{cache}"], result[f"{args.large}_cache_{cache}"]
        result[f"growth_mb_cache_{cache}"] = large["peak_rss_mb"] - small["peak_rss_mb"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["throughput", "memory"])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--small", type=int, default=20000)
    parser.add_argument("--large", type=int, default=200000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="bench_data")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    result = throughput(args) if args.what == "throughput" else memory(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
