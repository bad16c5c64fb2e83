#!/usr/bin/env bash
# Every GPU measurement of issue 14 in one call: about 5-6 minutes on one H100, at most ~7.5 (each part has
# its own timeout, and each featurize JSON is rewritten after every step, so a part cut short still
# leaves what it measured). RANDOM WEIGHTS of the real architectures throughout (speed only).
#
# Writes to $OUT (5 files):
#   env.txt                  GPU, driver, python / torch / transformers / faiss versions
#   log.txt                  everything the parts print, with start times and exit codes
#   featurize_small.json     benchmarks/featurize.py --size small: baseline vs pipeline, per stage, forward
#                            bound, GPU busy (NVML samples and torch.profiler kernel time), overlap on/off
#   featurize_default.json   the same at --size default, plus --ground-size 512 and 640, OWLv2
#                            (owlv2-random) as the grounder, and fp16 / bf16 against fp32 on 16 images
#   lookup_gpu.json          benchmarks/lookup_gpu.py at 1M x 768: FAISS CPU (all cores) build and
#                            batch QPS of flat and of `--kind auto`'s index; FAISS GPU when faiss has GPU
#                            support; torch exact search and k-means on the GPU as the hardware reference
#
# Wheels the lent machine lacks (it has torch, transformers, h5py, typer, safetensors, timm), prepared
# here in the repository root (.whl/ is ignored through .git/info/exclude), about 21 MB:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl \
#     open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 faiss-cpu==1.15.1
# faiss-gpu cannot travel: its wheel alone is 135 MB (the carry limit is 64 MiB) and it needs the CUDA 12
# runtime and cuBLAS wheels besides, while the lent machine's torch is built for CUDA 13. lookup_gpu.json
# says so and measures FAISS on the CPU and torch on the GPU instead.
#
# Run (device tool): carry [".whl"], timeout_s 540, command:
#   bash benchmarks/gpu_all.sh
# CPU-only check here (tiny sizes, no wheels needed): DEVICE=cpu SIZES=tiny N=3 REPS=1 LOOKUP_N=20000 \
#   OUT=/tmp/gpu-all bash benchmarks/gpu_all.sh
set -u
OUT=${OUT:-/tmp/item-gpu-out}; mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}; N=${N:-64}; REPS=${REPS:-2}; SIZES=${SIZES:-"small default"}; LOOKUP_N=${LOOKUP_N:-1000000}
LOG="$OUT/log.txt"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >>"$LOG" 2>&1 || echo "wheel install failed (see log)" >>"$LOG"
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || echo "no nvidia-smi"
  nproc; free -g | head -2
  python3 - <<'EOF'
import platform
print("python", platform.python_version())
for name in ("torch", "transformers", "open_clip", "faiss", "h5py", "numpy"):
    try:
        m = __import__(name)
        print(name, getattr(m, "__version__", "?"), getattr(m, "__file__", ""))
    except Exception as exc:
        print(name, "MISSING", type(exc).__name__, exc)
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
try:
    import faiss
    print("faiss gpus", faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else "n/a")
except Exception:
    pass
EOF
} >"$OUT/env.txt" 2>&1

part() {  # part SECONDS command...: one measurement, its own time limit, logged with its exit code
  local limit=$1; shift
  echo "== $(date -u +%H:%M:%S) (limit ${limit}s) $*" >>"$LOG"
  timeout "$limit" "$@" >>"$LOG" 2>&1
  echo "== $(date -u +%H:%M:%S) exit $?" >>"$LOG"
}

for s in $SIZES; do
  extra=""; limit=${SMALL_LIMIT:-130}
  if [ "$s" = "default" ] || [ "$s" = "tiny" ]; then
    limit=${DEFAULT_LIMIT:-210}
    if [ "$s" = "default" ]; then extra="--ground-sizes 512,640 --grounders owlv2-random --precision 16"
    else extra="--ground-sizes 96 --grounders owlv2-tiny-random --precision 2"; fi
  fi
  part "$limit" python3 benchmarks/featurize.py --size "$s" --device "$DEVICE" --n-images "$N" --reps "$REPS" \
    --baseline-reps 1 --overlap-compare --profile $extra --out "$OUT/featurize_$s.json"
done
part "${LOOKUP_LIMIT:-100}" python3 benchmarks/lookup_gpu.py --n "$LOOKUP_N" --queries "${LOOKUP_Q:-5000}" \
  --batch 1000 --out "$OUT/lookup_gpu.json"
echo "== $(date -u +%H:%M:%S) done" >>"$LOG"
ls -la "$OUT" >>"$LOG"
