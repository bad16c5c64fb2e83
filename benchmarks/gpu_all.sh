#!/usr/bin/env bash
# Every featurize measurement of issues 14 and 20 in one call. RANDOM WEIGHTS of the real architectures
# throughout (speed only); the script builds every model itself (the lent machine has no network).
#
#   bash benchmarks/gpu_all.sh                      # on the GPU machine: at most about 9 minutes
#   bash benchmarks/gpu_all.sh --device cpu --small # the same presets on the CPU at small sizes (1 image, 1 rep,
#                                                   # no warm-up: a full-size preset takes 10-40 min on 2 shared cores)
#   PARALLEL=1 with --small runs the presets side by side (a busy shared machine; each then runs slower)
#   NICE="nice -n 10" runs the measurements below other work (default: normal priority)
#
# For each preset (default, small, fast: default-random, small-random, fast-random) one run of
# benchmarks/featurize.py measures, on the same images: the naive one-image-at-a-time baseline, the
# pipeline end to end (captions timed apart on the same images and added, see featurize.py), the forward
# bound, efficiency = bound / pipeline, GPU busy (NVML samples during the timed runs and torch.profiler
# kernel time on one more run: CUDA only), stage times from a run whose stage timers synchronise the
# device (--profile-stages; the timed runs do not synchronise), and the text-cache hit rate. On CUDA the
# default preset also runs its extras: --ground-size 512 / 640, OWLv2 and MM-Grounding-DINO as grounders,
# fp16 / bf16 against fp32. LOOKUP_N=1000000 adds issue 14's lookup_gpu.py at 1M x 768 (about 100 s more;
# off by default so that the featurize parts fit one 600 s call: 260 + 130 + 130 s at most).
#
# Writes to $OUT (default benchmarks/results/gpu_all_<device>, raw output):
#   env.txt, log.txt, featurize_<preset>.json (one per preset), lookup_gpu.json (CUDA only)
#
# Wheels the lent machine lacks (it has torch, transformers, h5py, typer, safetensors, timm), prepared
# here in the repository root (.whl/ is ignored through .git/info/exclude), about 21 MB:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl \
#     open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 faiss-cpu==1.15.1
# Run (device tool): carry [".whl"], timeout_s 600, command: bash benchmarks/gpu_all.sh
# faiss-gpu cannot travel (135 MB wheel, CUDA 12 runtime against the machine's CUDA 13 torch).
set -u
DEVICE=cuda; SMALL=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --small) SMALL=1; shift ;;
    *) echo "unknown argument $1 (use --device cpu|cuda, --small)" >&2; exit 2 ;;
  esac
done
if [ "$SMALL" = 1 ]; then
  N=${N:-1}; REPS=${REPS:-1}; BOUND="--quick-bound"; EXTRAS=0; LOOKUP_N=${LOOKUP_N:-0}
  THREADS="--threads ${THREADS:-2}"; LIMIT=${LIMIT:-1500}; PRESETS=${PRESETS:-"fast small default"}
else
  N=${N:-64}; REPS=${REPS:-2}; BOUND=""; EXTRAS=1; LOOKUP_N=${LOOKUP_N:-0}; THREADS=""; LIMIT=${LIMIT:-130}
fi
PRESETS=${PRESETS:-"default small fast"}
OUT=${OUT:-benchmarks/results/gpu_all_${DEVICE}$([ "$SMALL" = 1 ] && echo _small)}; mkdir -p "$OUT"
LOG="$OUT/log.txt"; : >"$LOG"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >>"$LOG" 2>&1 || echo "wheel install failed (see log)" >>"$LOG"
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
NICE=${NICE:-}  # e.g. NICE="nice -n 10" to yield to other work on a shared machine
{
  date -u; uptime
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || echo "no nvidia-smi"
  nproc; free -g | head -2
  python3 - <<'EOF'
import platform
print("python", platform.python_version())
for name in ("torch", "transformers", "open_clip", "timm", "faiss", "h5py", "numpy"):
    try:
        m = __import__(name)
        print(name, getattr(m, "__version__", "?"), getattr(m, "__file__", ""))
    except Exception as exc:
        print(name, "MISSING", type(exc).__name__, exc)
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
} >"$OUT/env.txt" 2>&1

part() {  # part SECONDS command...: one measurement, its own time limit, logged with its exit code and the load
  local limit=$1; shift
  echo "== $(date -u +%H:%M:%S) (limit ${limit}s; load $(cut -d' ' -f1-3 /proc/loadavg)) $*" >>"$LOG"
  timeout "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?  # before any command substitution below resets $?
  echo "== $(date -u +%H:%M:%S) exit $rc (load $(cut -d' ' -f1-3 /proc/loadavg))" >>"$LOG"
}

pids=""
for p in $PRESETS; do
  extra=""
  if [ "$EXTRAS" = 1 ] && [ "$DEVICE" != cpu ]; then
    extra="--overlap-compare"
  fi
  limit=$LIMIT
  if [ "$EXTRAS" = 1 ] && [ "$DEVICE" != cpu ] && [ "$p" = default ]; then
    extra="$extra --ground-sizes 512,640 --grounders owlv2-random,mm-gdino-random --precision 16"; limit=${DEFAULT_LIMIT:-260}
  fi
  if [ "${PARALLEL:-0}" = 1 ]; then
    part "$limit" $NICE python3 benchmarks/featurize.py --size "$p" --device "$DEVICE" --n-images "$N" --reps "$REPS" \
      --baseline-reps 1 --profile $BOUND $THREADS $extra --out "$OUT/featurize_$p.json" &
    pids="$pids $!"
  else
    part "$limit" $NICE python3 benchmarks/featurize.py --size "$p" --device "$DEVICE" --n-images "$N" --reps "$REPS" \
      --baseline-reps 1 --profile $BOUND $THREADS $extra --out "$OUT/featurize_$p.json"
  fi
done
[ -n "$pids" ] && wait $pids
if [ "$LOOKUP_N" != 0 ]; then
  part "${LOOKUP_LIMIT:-100}" python3 benchmarks/lookup_gpu.py --n "$LOOKUP_N" --queries "${LOOKUP_Q:-5000}" \
    --batch 1000 --out "$OUT/lookup_gpu.json"
fi
python3 benchmarks/featurize.py --summarize "$OUT"/featurize_*.json >"$OUT/summary.md" 2>>"$LOG" || true
echo "== $(date -u +%H:%M:%S) done" >>"$LOG"
ls -la "$OUT" >>"$LOG"
