"""Analyst latency: seconds per uploaded image in `item serve` (models loaded once), per preset.

    python benchmarks/serve_latency.py --models default-random,fast-random --reps 3 --threads 2 \\
        --out benchmarks/results/serve_latency_cpu.json

For each preset: a store of four sample images (two real, two generated, their manifest captions) is
featurized with the preset, a logistic head is trained on it, and `item.serve.service.Service` is built
on them as `item serve` builds it (store, head and models loaded once, outside the timings). Then each
repetition uploads a sample image the store does not hold, as bytes, through `Service.predict_upload`
(what POST /api/predict calls), twice:

- ``with_caption``: the sample's manifest caption is sent with it: nouns, grounding, crops, CLIP, head,
  neighbours; no captioner.
- ``no_caption``: the captioner runs first. Random-weight BLIP writes pseudo-words whose noun lists are
  empty, so with random weights this path grounds nothing: it measures captioning + CLIP + head.

A real upload without a caption costs about ``no_caption + with_caption - CLIP image`` (captioning and
grounding both). RANDOM WEIGHTS (speed does not depend on the weights); the machine's load is recorded.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import write_result  # noqa: E402

BANNER = "RANDOM WEIGHTS: real architectures with seeded random weights; latency only, no detection numbers"


def samples():
    d = ROOT / "item" / "samples"
    rows = list(csv.DictReader(open(d / "manifest.csv")))
    for r in rows:
        r["abs"] = str(d / r["path"])
        r["caption"] = (r.get("reference_caption") or r.get("prompt") or "").strip()
    return rows


def bench(preset: str, reps: int, device: str, log) -> dict:
    import item
    from item.featurize import FeaturizeConfig, featurize_store
    try:
        from item.featurize.inputs.discover import InputRow
    except ImportError:  # the layout before issue 18 (a35657c and older: the "before" measurement)
        from item.featurize.inputs import InputRow
    from item.serve.service import ServeConfig, Service

    rows = samples()
    real = [r for r in rows if r["label"] == "real"]
    fake = [r for r in rows if r["label"] == "fake"]
    stored = [real[0], fake[0], real[1], fake[1]]  # train, train, val, val
    uploads = (real[2:] + fake[2:])[:reps]
    with tempfile.TemporaryDirectory(prefix="item-serve-bench-") as tmp:
        store = Path(tmp) / "store"
        t = time.perf_counter()
        featurize_store([InputRow(path=r["abs"], label=r["label"], generator=r["generator"],
                                  split="train" if k < 2 else "val",
                                  caption=r["caption"], origin="bench") for k, r in enumerate(stored)],
                        store, models=preset, config=FeaturizeConfig(workers=0, device=device))
        store_s = time.perf_counter() - t
        log(f"[{preset}] store of {len(stored)} images in {store_s:.1f} s")
        head_dir = Path(tmp) / "head"
        item.train_head(store, kind="logistic", train_split="train", val_split="val").save(head_dir)
        t = time.perf_counter()
        service = Service(ServeConfig(store=str(store), heads=(str(head_dir),), device=device))
        load_s = time.perf_counter() - t
        log(f"[{preset}] service (store, head, models) loaded in {load_s:.1f} s")
        service.predict_upload(Path(stored[0]["abs"]).read_bytes(), caption=stored[0]["caption"])  # warm-up
        timings = {"with_caption": [], "no_caption": []}
        for r in uploads:
            data = Path(r["abs"]).read_bytes()
            t = time.perf_counter()
            out = service.predict_upload(data, caption=r["caption"])
            timings["with_caption"].append(time.perf_counter() - t)
            n_obj = len(out.get("objects", []))
            t = time.perf_counter()
            service.predict_upload(data)
            timings["no_caption"].append(time.perf_counter() - t)
            log(f"[{preset}] {r['path']}: with caption {timings['with_caption'][-1]:.2f} s ({n_obj} objects), "
                f"no caption {timings['no_caption'][-1]:.2f} s  (load {os.getloadavg()[0]:.1f})")
    return {"preset": preset, "device": device, "reps": len(uploads), "store_seconds": round(store_s, 1),
            "service_load_seconds": round(load_s, 1),
            **{f"{k}_seconds": {"median": round(statistics.median(v), 3), "min": round(min(v), 3),
                                "max": round(max(v), 3), "runs": [round(x, 3) for x in v]}
               for k, v in timings.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="default-random,fast-random", help="comma list of random presets")
    ap.add_argument("--reps", type=int, default=3, help="uploads per preset (different sample images)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    log(BANNER)
    log(f"load average at start: {os.getloadavg()}")
    results = []
    for preset in [p.strip() for p in args.models.split(",") if p.strip()]:
        results.append(bench(preset, args.reps, args.device, log))
        write_result(args.out, "serve_latency", BANNER, results, device=args.device)
    print(BANNER)
    print("| preset | device | uploads | with caption s (median, min..max) | no caption s (median, min..max) |")
    print("|---|---|---|---|---|")
    for r in results:
        w, n = r["with_caption_seconds"], r["no_caption_seconds"]
        print(f"| {r['preset']} | {r['device']} | {r['reps']} | {w['median']} ({w['min']}..{w['max']}) | "
              f"{n['median']} ({n['min']}..{n['max']}) |")
    write_result(args.out, "serve_latency", BANNER, results, device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
