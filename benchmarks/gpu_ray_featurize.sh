#!/usr/bin/env bash
# Single process against Ray on one GPU machine (for the integrator's lent GPU): small-random, given captions.
# Needs the ray extra on that machine (pip install -e ".[ray]"). Usage:
#   OUT=dir bash benchmarks/gpu_ray_featurize.sh [N_IMAGES] [REPS] [ACTORS] [GPUS_PER_ACTOR]
# Prints one table; writes $OUT/ray_featurize_cuda.json. Random weights: speeds only.
set -u
N=${1:-256}; REPS=${2:-2}; ACTORS=${3:-2}; GPA=${4:-0.5}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_AUTH_MODE=disabled
OUT=${OUT:-/tmp/item-bench-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
timeout "${TIMEOUT:-540}" python3 benchmarks/ray_featurize.py --models small-random --device cuda \
  --n-images "$N" --reps "$REPS" --actors "$ACTORS" --gpus-per-actor "$GPA" --cpus-per-actor 1 \
  --batch-size 16 --shard-size 64 --out "$OUT/ray_featurize_cuda.json" 2>&1 | tee "$OUT/log_ray_cuda.txt"
