"""Seconds per `item neighbors STORE FILE` query: the whole featurize path against CLIP's image tower alone.

Three ways a file query is answered (item/classify/predict.py, ``_file_query``):

- ``full``: the whole featurize path (CLIP, captioner, grounder loaded and run on the file). This is what
  every file query did before issue 15, whatever ``--on``; it is what ``--on misalignment`` still does.
- ``image``: ``--on image`` for a file not in the store: CLIP loaded alone, its image tower run once.
- ``stored``: a file whose content is already in the store: its stored row, no model loaded.

Each query is one call of ``item.classify.predict.neighbors`` in this process, models loaded inside the
call as the command does (so a rep = one CLI query minus the interpreter's start-up). The store holds the
two images featurized first, with the same models. Random weights (``--models``); speed does not depend
on them, and nothing here is a detection number.

    python benchmarks/neighbors_image.py --models default-random --reps 2 --threads 2 \\
        --out benchmarks/results/neighbors_image_cpu.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="default-random", help="a random preset: tiny-random, small-random, "
                    "default-random")
    ap.add_argument("--reps", type=int, default=2, help="queries per way (each a different new file)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=512, help="query images are SIZE x SIZE JPEGs")
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from _common import write_result
    from item.classify.predict import neighbors
    from item.featurize import FeaturizeConfig, featurize_store, resolve_models

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def new_image(name: str) -> str:
            p = tmp / name
            Image.fromarray(rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)).save(p, quality=90)
            return str(p)

        stored = [new_image(f"stored-{k}.jpg") for k in range(2)]
        store = tmp / "store"
        t = time.perf_counter()
        featurize_store(stored, store, models=resolve_models(args.models), config=FeaturizeConfig(workers=0, device="cpu"))
        print(f"store of 2 images built in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        results = {}
        for way in ("stored", "image", "full"):
            times = []
            for r in range(args.reps):
                query = stored[r % 2] if way == "stored" else new_image(f"{way}-{r}.jpg")
                on = "misalignment" if way == "full" else "image"
                t = time.perf_counter()
                res = neighbors(store, query, k=2, on=on, device="cpu")
                times.append(time.perf_counter() - t)
                print(f"{way} rep {r}: {times[-1]:.2f} s (models loaded: {res.get('models_loaded')})", file=sys.stderr)
            results[way] = {"seconds": [round(x, 3) for x in times], "mean": round(statistics.mean(times), 3),
                            "min": round(min(times), 3), "models_loaded": res.get("models_loaded")}
    load = open("/proc/loadavg").read().split()[:3] if Path("/proc/loadavg").exists() else []
    print(f"RANDOM WEIGHTS ({args.models}): speed only. Seconds per file query, {args.reps} reps, "
          f"{args.threads} threads, load average at the end {' '.join(load)}")
    print(f"{'way':<8} {'models loaded':<28} {'mean s':>8} {'min s':>8}")
    for way, r in results.items():
        print(f"{way:<8} {','.join(r['models_loaded']) or '-':<28} {r['mean']:>8.2f} {r['min']:>8.2f}")
    write_result(args.out, "neighbors_image", f"RANDOM WEIGHTS ({args.models}); seconds per file query",
                 results, load_average_end=load, models=args.models, reps=args.reps)


if __name__ == "__main__":
    main()
