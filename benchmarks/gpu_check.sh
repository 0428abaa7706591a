#!/usr/bin/env bash
# The GPU checks in one short script, for a session lent a GPU (about 8 minutes on one
# H200-class card). Each writes its JSON under $OUT (default gpu_results/):
#   1. bf16 KD throughput on an image folder, distill vs a hand-written loop;
#   2. DistillationTrainer vs TRL's GKDTrainer: loss agreement, step time, peak memory
#      (needs trl: pip install "torch==2.13.0" trl);
#   3. the chunked LLM loss against full logits: peak memory and time at a 32k vocabulary;
#   4. DistillationTrainer with the teacher sharded alongside the student under FSDP;
#   5. the same under DeepSpeed ZeRO-3, when deepspeed is installed.
# Usage: OUT=gpu_results bash benchmarks/gpu_check.sh
set -euo pipefail
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" || true
python benchmarks/data_scale.py throughput --device cuda --precision bf16 --images 20000 \
  --rounds 3 --workers 8 --out "$OUT/data" > "$OUT/image_folder_bf16.json"
python benchmarks/vs_trl.py --device cuda --steps 20 --rounds 3 --out "$OUT/trl" \
  > "$OUT/vs_trl.jsonl" || echo "vs_trl failed (is trl installed?)" >&2
python benchmarks/llm_chunked_memory.py --device cuda --tokens 16384 > "$OUT/chunked.json"
# 4. DistillationTrainer with the teacher sharded alongside the student under Accelerate's
#    FSDP (one process on one GPU: the code path, not the scaling); the two-process CPU
#    version is tests/llm/test_sharded_trainer.py.
mkdir -p "$OUT/fsdp_teacher"
ACCELERATE_USE_FSDP=true FSDP_VERSION=2 DEVICE=cuda OUT="$OUT/fsdp_teacher" \
  torchrun --standalone --nproc_per_node 1 tests/llm/trainer_worker.py \
  > "$OUT/fsdp_teacher.txt" 2>&1 || echo "FSDP teacher check failed (see fsdp_teacher.txt)" >&2
# 5. The same under DeepSpeed ZeRO-3 (the teacher through deepspeed.initialize), when the
#    deepspeed package is installed (the lent GPU machine has none and cannot download it).
if python -c "import deepspeed" 2>/dev/null; then
  mkdir -p "$OUT/zero3_teacher"
  DEVICE=cuda OUT="$OUT/zero3_teacher" accelerate launch --num_processes 1 --use_deepspeed \
    --zero_stage 3 tests/llm/trainer_worker.py > "$OUT/zero3_teacher.txt" 2>&1 \
    || echo "ZeRO-3 teacher check failed (see zero3_teacher.txt)" >&2
else
  echo "deepspeed is not installed: ZeRO-3 check skipped" > "$OUT/zero3_teacher.txt"
fi
