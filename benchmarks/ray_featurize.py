"""Featurize throughput: one process (`--engine local`) against a Ray Data job (`--engine ray`), same inputs.

    python benchmarks/ray_featurize.py --models tiny-random --n-images 60 --reps 2 --actors 2
    python benchmarks/ray_featurize.py --models small-random --device cuda --gpus-per-actor 0.5 --actors 2 \
        --n-images 256 --reps 2 --out ray_gpu.json      # on a GPU machine

Both sides run `item.featurize.featurize_store` into a fresh temporary store with the same FeaturizeConfig
(batch size, shard size) and the same model preset, alternated local, ray, local, ray... Each side's time
includes its model loading (the local run loads once; each Ray actor loads its own copy, plus one load
for the store's identity) and the store writes. The Ray cluster is started once before the first
repetition (its start-up is reported apart) and reused.

Inputs: the shipped samples with their manifest captions (nouns and crops as in real data, see
benchmarks/featurize.py), mirrored, re-encoded copies beyond the first 38. Random weights: the numbers
are speeds, never accuracies.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny-random", help="a model preset (random ones need no hub)")
    ap.add_argument("--n-images", type=int, default=60)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--actors", type=int, default=2, help="Ray model actors")
    ap.add_argument("--gpus-per-actor", type=float, default=0.0)
    ap.add_argument("--cpus-per-actor", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ray-address", default=None, help="an existing cluster; default: a local one")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import ray

    from _common import write_result
    from featurize import sample_rows
    from item.featurize import FeaturizeConfig, featurize_store, resolve_models

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    spec = resolve_models(args.models)
    workdir = Path(tempfile.mkdtemp(prefix="item-bench-ray-imgs-"))
    rows = sample_rows(args.n_images, workdir)
    base = dict(batch_size=args.batch_size, shard_size=args.shard_size, device=args.device)
    local_cfg = FeaturizeConfig(**base)
    ray_cfg = FeaturizeConfig(**base, engine="ray", ray_address=args.ray_address, ray_actors=args.actors,
                              gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor)
    t = time.perf_counter()
    ray.init(address=args.ray_address, include_dashboard=False, configure_logging=False,
             logging_level="WARNING")
    ray_start = time.perf_counter() - t
    log(f"ray cluster up in {ray_start:.1f} s: {ray.cluster_resources()}")
    times = {"local": [], "ray": []}
    for rep in range(args.reps):
        for side, cfg in (("local", local_cfg), ("ray", ray_cfg)):
            with tempfile.TemporaryDirectory(prefix="item-bench-ray-store-") as d:
                t = time.perf_counter()
                summary = featurize_store(rows, Path(d) / "s", models=spec, config=cfg)
                times[side].append(time.perf_counter() - t)
            assert summary.n_written + summary.n_skipped + summary.n_duplicates == len(rows), summary
            log(f"rep {rep}: {side} {times[side][-1]:.2f} s ({len(rows) / times[side][-1]:.2f} img/s)")
    ray.shutdown()
    results = {}
    for side, xs in times.items():
        med = statistics.median(xs)
        results[side] = {"seconds_median": round(med, 3), "seconds": [round(x, 3) for x in xs],
                         "images_per_second": round(len(rows) / med, 3)}
    results["ray_over_local"] = round(results["ray"]["images_per_second"] / results["local"]["images_per_second"], 3)
    print(f"RANDOM WEIGHTS ({args.models}): speeds only. {len(rows)} images, batch {args.batch_size}, "
          f"{args.reps} reps, device {args.device}")
    print("| engine | median s | img/s | runs s |")
    print("|---|---|---|---|")
    for side in ("local", "ray"):
        r = results[side]
        print(f"| {side} | {r['seconds_median']} | {r['images_per_second']} | {', '.join(map(str, r['seconds']))} |")
    print(f"ray / local throughput: {results['ray_over_local']}x (ray cluster start-up {ray_start:.1f} s, not counted)")
    write_result(args.out, "ray_featurize", f"RANDOM WEIGHTS ({args.models}); local vs ray engine", results,
                 device=args.device, n_images=len(rows), actors=args.actors, gpus_per_actor=args.gpus_per_actor,
                 cpus_per_actor=args.cpus_per_actor, batch_size=args.batch_size, ray_start_s=round(ray_start, 2))


if __name__ == "__main__":
    main()
