"""Peak memory of language-model KD from a teacher cache against student-only training.

Training from a `distill lm-cache` cache never loads the teacher, so its peak memory should
be the student's own. Three runs of the same student, data and steps, each in a fresh
process (peak resident memory, `ru_maxrss`, as the process ends):

- scratch: the student on its data alone (`scheme: supervised`);
- cache: `lm_kd` reading the teacher's top-k log-probabilities from the cache, no teacher
  section;
- live: `lm_kd` with the teacher loaded and run on every batch.

The teacher is a GPT-2 about 40x the student (random weights: memory does not depend on
them), so a teacher held in memory shows plainly. The runs alternate over `--repeats`
rounds, and the medians are compared within this one run.

    python benchmarks/llm_cache_memory.py [--repeats 3] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

TEACHER = {"name": "hf_causal_lm", "args": {"arch": "gpt2", "n_embd": 512, "n_layer": 8,
                                            "n_head": 8}}  # fmt: skip
RUN = """
import json, resource, sys, yaml
from distill.app.run import run_experiment
from distill.core.config import parse_config
result = run_experiment(parse_config(yaml.safe_load(open(sys.argv[1]))))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"peak_mib": peak / 2**20, "complete": result["complete"]}))
"""


def configs(root: Path, steps: int) -> dict[str, dict]:
    from distill.llm.demo import DATA, STUDENT

    train = {"epochs": 1, "max_steps": steps, "batch_size": 16, "progress": False}
    base = {"data": DATA, "student": STUDENT, "train": train}
    live = {
        **base,
        "name": "live",
        "run_dir": str(root / "live"),
        "scheme": {"name": "lm_kd", "args": {"divergence": "forward_kl"}},
        "teacher": {**TEACHER, "weights": str(root / "teacher.safetensors")},
    }
    cache = {
        **base,
        "name": "cache",
        "run_dir": str(root / "cache-run"),
        "scheme": {"name": "lm_kd", "args": {"teacher_cache": str(root / "cache")}},
    }
    scratch = {**base, "name": "scratch", "run_dir": str(root / "scratch"), "scheme": "supervised"}
    return {"scratch": scratch, "cache": cache, "live": live}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="distill-cache-memory-"))
    from distill.app.build import load_data
    from distill.core.checkpoint import save_weights
    from distill.core.config import parse_config
    from distill.llm.demo import DATA, STUDENT
    from distill.models import build_model

    data = load_data(parse_config({"scheme": "supervised", "data": DATA, "student": STUDENT}).data)
    teacher = build_model(TEACHER["name"], data.input_shape, data.num_classes, TEACHER["args"])
    save_weights(root / "teacher.safetensors", teacher)
    n_teacher = sum(p.numel() for p in teacher.parameters())
    del teacher
    cfgs = configs(root, args.steps)
    for name, cfg in cfgs.items():
        (root / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    subprocess.run(
        [sys.executable, "-m", "distill", "lm-cache", str(root / "live.yaml"),
         "--out", str(root / "cache"), "--k", "32"],
        check=True, capture_output=True,
    )  # fmt: skip
    peaks: dict[str, list[float]] = {name: [] for name in cfgs}
    for r in range(args.repeats):
        for name in cfgs:
            cfg = dict(cfgs[name], run_dir=str(root / f"{name}-{r}"))
            (root / f"{name}-{r}.yaml").write_text(yaml.safe_dump(cfg))
            done = subprocess.run(
                [sys.executable, "-c", RUN, str(root / f"{name}-{r}.yaml")],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            peaks[name].append(json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"])
    median = {name: statistics.median(v) for name, v in peaks.items()}
    print(f"teacher {n_teacher:,} parameters ({4 * n_teacher / 2**20:.0f} MiB in float32)")
    print(f"{'run':8s} {'peak MiB (median)':>18s}  all")
    for name, values in peaks.items():
        print(f"{name:8s} {median[name]:18.0f}  {', '.join(f'{v:.0f}' for v in values)}")
    print(f"cache / scratch: {median['cache'] / median['scratch']:.3f}; "
          f"live / scratch: {median['live'] / median['scratch']:.3f}")  # fmt: skip
    print(json.dumps({"peaks_mib": peaks, "teacher_params": n_teacher}))


if __name__ == "__main__":
    main()
