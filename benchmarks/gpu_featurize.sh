#!/usr/bin/env bash
# The GPU featurize run, as sent to a lent GPU machine (see BENCHMARKS.md): both sizes, one JSON each.
# Usage: OUT=dir bash benchmarks/gpu_featurize.sh [N_IMAGES] [REPS] [SIZES]
set -u
N=${1:-64}; REPS=${2:-2}; SIZES=${3:-"small default"}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/item-bench-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
for s in $SIZES; do
  timeout "${PER_SIZE_TIMEOUT:-200}" python3 benchmarks/featurize.py --size "$s" --device cuda \
    --n-images "$N" --reps "$REPS" --out "$OUT/featurize_cuda_$s.json" 2>&1 | tee "$OUT/log_cuda_$s.txt"
done
