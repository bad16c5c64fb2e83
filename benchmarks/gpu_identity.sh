#!/usr/bin/env bash
# Store identity on a real GPU (issue 9): a store featurized on CUDA (fp16 autocast) is refused when resumed
# on the CPU, in one line naming device_class and precision; --allow-mixed resumes it and the run records
# what differed. Also prints how far CUDA fp16 and CPU fp32 embeddings of the same images are apart.
# Tiny random models (RANDOM WEIGHTS: the numbers mean nothing beyond this comparison). About a minute.
# Usage: OUT=dir bash benchmarks/gpu_identity.sh
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/item-gpu-identity}; mkdir -p "$OUT"; S="$OUT/store"; C="$OUT/cpu-store"; rm -rf "$S" "$C"
M=item/samples/manifest.csv
python3 -m item featurize "$M" --store "$S" --models tiny-random --device cuda --workers 0 2>"$OUT/cuda.err"
echo "cuda run exit $?"
python3 -m item store info "$S" | grep identity
python3 -m item featurize item/samples/real --label real --store "$S" --models tiny-random --device cpu --workers 0 \
  2>"$OUT/cpu-resume.err"; echo "cpu resume exit $? (expect 1):"; grep -i refusing "$OUT/cpu-resume.err"
python3 -m item featurize item/samples/real --label real --store "$S" --models tiny-random --device cpu --workers 0 \
  --allow-mixed 2>"$OUT/cpu-mixed.err"; echo "cpu --allow-mixed exit $? (expect 0)"
python3 -m item featurize "$M" --store "$C" --models tiny-random --device cpu --workers 0 2>/dev/null
python3 - "$S" "$C" <<'PY' | tee "$OUT/cuda_vs_cpu.txt"
import sys, numpy as np
from item.store import StoreReader, schema
with StoreReader(sys.argv[1]) as a, StoreReader(sys.argv[2]) as b:
    ia = {i: k for k, i in enumerate(a.metadata([schema.ID])[schema.ID])}
    ib = b.metadata([schema.ID])[schema.ID]
    common = [i for i in ib if i in ia]
    ea = a.read(schema.IMAGE_EMB, [ia[i] for i in common]); eb = b.read(schema.IMAGE_EMB, list(range(len(ib))))
    eb = eb[[list(ib).index(i) for i in common]]
    print("RANDOM WEIGHTS; images compared:", len(common), "max L2 CUDA fp16 vs CPU fp32 image_emb:",
          float(np.linalg.norm(ea - eb, axis=1).max()))
    print("last run mixed_identity:", a.manifest["runs"][-1].get("mixed_identity"))
PY
