"""`DistillationTrainer` on two CPU processes (gloo, torchrun): the teacher sharded with
FSDP2 (each process holds half of it) and the student trained to the same weights as one
process on the same global batch. FSDP through Accelerate needs GPUs; the GPU check script
(benchmarks/gpu_check.sh) runs the FSDP and DeepSpeed versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not built"
)

WORKER = Path(__file__).with_name("trainer_worker.py")


def _run(out: Path, nproc: int, **env: str) -> dict:
    out.mkdir()
    if nproc > 1:
        launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    else:
        launch = []
    full = {**os.environ, "OMP_NUM_THREADS": "1", "OUT": str(out), **env}
    done = subprocess.run([sys.executable, *launch, str(WORKER)], capture_output=True,
                          text=True, timeout=300, env=full)  # fmt: skip
    line = [x for x in done.stdout.splitlines() if x.startswith("TRAINER-WORKER ")]
    assert done.returncode == 0 and line, done.stderr[-3000:]
    from safetensors.torch import load_file

    return {
        **json.loads(line[0].split(" ", 1)[1]),
        "weights": load_file(out / "student.safetensors"),
    }


@pytest.mark.parametrize("chunk", [pytest.param("0", marks=pytest.mark.slow), "5"])
def test_a_sharded_teacher_trains_the_one_process_student(tmp_path, chunk):
    one = _run(tmp_path / "one", 1, CHUNK=chunk)
    two = _run(tmp_path / "two", 2, CHUNK=chunk, SHARD_TEACHER="1")
    assert not one["sharded"] and one["held"] == one["whole"]
    assert two["sharded"] and two["held"] <= 0.5 * two["whole"] + 64 * 32  # about half each
    a, b = one["weights"], two["weights"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)


def test_the_deepspeed_teacher_config_keeps_zero3_and_drops_the_optimizer():
    """DeepSpeed is not installed here (nor on the GPU machine); the config the teacher's
    engine gets is checked as a function."""
    from distill.llm.sharded import deepspeed_inference_config

    run = {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"},
                                 "stage3_param_persistence_threshold": 10},
           "optimizer": {"type": "AdamW"}, "scheduler": {"type": "WarmupLR"},
           "bf16": {"enabled": True}, "train_micro_batch_size_per_gpu": 4}  # fmt: skip
    out = deepspeed_inference_config(run)
    assert "optimizer" not in out and "scheduler" not in out and out["bf16"]["enabled"]
    assert out["zero_optimization"] == {"stage": 3, "stage3_param_persistence_threshold": 10}
    assert run["optimizer"] == {"type": "AdamW"}  # the run's own config is left alone
    stage2 = deepspeed_inference_config({"zero_optimization": {"stage": 2}})
    assert stage2["zero_optimization"]["stage"] == 0  # nothing of a frozen model to partition
