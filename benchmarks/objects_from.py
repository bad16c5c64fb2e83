"""A second backbone from an existing store: re-embedding with ``--objects-from`` against a full featurize.

    python benchmarks/objects_from.py --n-images 8 --reps 3 --out benchmarks/results/objects_from_cpu.json
    python benchmarks/objects_from.py --quick          # tiny-random models, a smoke run of the script itself

One run, the same images, models loaded once before any timing (load time is not in the numbers):

- full: ``featurize_store`` of the images with the default preset's architectures (BLIP large with the
  authors' 3-beam decoding, Grounding DINO tiny at 800 px, ViT-L-14), random weights. Random BLIP writes
  pseudo-words that name no noun, so, as benchmarks/featurize.py does, the stored run takes the samples' real
  captions (nouns to ground) and the captioner's own generate() on the same images, in batches as the pipeline
  makes them, is timed beside it and added: full = featurize with given captions + captioning. The grounder's
  thresholds are set to 0 so that every noun gets a box: the re-embedding then has every crop to encode (the
  most work it can have; a real grounder keeps fewer).
- re-embed: ``featurize_store(..., objects_from=OLD)`` of the same images into a fresh store under each
  backbone, CLIP only. The ratio re-embed / full is the issue-28 figure (goal <= 0.25), given for the same
  CLIP (ViT-L-14) and for the other backbones.

Repetitions alternate full, re-embed, full, re-embed, ...; medians are reported with every repetition. Each
backbone's CLIP is a real full-size architecture with random weights (``--pretrained ''``); backbones whose
tokenizer comes from the hub (SigLIP 2, MetaCLIP 2) cannot be built offline and are left out here (their
text tower is the only difference a tokenizer makes; tests/test_fidelity_backbones.py loads them).
"""

from __future__ import annotations

import argparse
import dataclasses
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
from featurize import BANNER, sample_rows  # noqa: E402

#: (registry name, open_clip model) re-embedded with random weights; all tokenizers ship with open_clip.
BACKBONES = (("openai-l14", "ViT-L-14"), ("pe-core-l14", "PE-Core-L-14-336"), ("mobileclip2-s2", "MobileCLIP2-S2"),
             ("openai-b32", "ViT-B-32"))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def caption_seconds(rows, models, batch: int) -> float:
    """The captioner's generate() on the rows' images in batches of ``batch`` (the authors' decoding)."""
    from item.featurize.inputs.decode import decode_image

    cap = models.captioner
    images = [decode_image(r.path).image for r in rows]
    t = time.perf_counter()
    for s in range(0, len(images), batch):
        pixels = [cap.prepare(im) for im in images[s:s + batch]]
        if getattr(cap, "decodings", None):
            cap.caption_prepared(pixels, "authors")
        else:
            cap.caption_prepared(pixels)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-images", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny-random models, 4 images, 2 repetitions")
    ap.add_argument("--backbones", default=",".join(b for b, _ in BACKBONES))
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    import torch

    from item.featurize import FeaturizeConfig, featurize_store, load_models
    from item.featurize.models.presets import resolve_models
    from item.featurize.run.objects_from import clip_only
    from item.store import StoreReader

    log(BANNER)
    load_start = os.getloadavg()
    log(f"load average at start: {load_start}; torch threads {torch.get_num_threads()}")
    preset = "tiny-random" if args.quick else "default-random"
    n, reps = (4, 2) if args.quick else (args.n_images, args.reps)
    wanted = [b for b in args.backbones.split(",") if b]
    base = resolve_models(preset)
    spec = dataclasses.replace(base, box_threshold=0.0, text_threshold=0.0)
    config = FeaturizeConfig(workers=0, batch_size=8)
    work = Path(tempfile.mkdtemp(prefix="item-bench-objects-"))
    rows = sample_rows(n, work)
    t = time.perf_counter()
    full_models = load_models(spec, "cpu")
    log(f"loaded {preset} in {time.perf_counter() - t:.1f} s")
    clips = {}
    for name, model in BACKBONES:
        if name not in wanted:
            continue
        if args.quick:
            clips[name] = clip_only(full_models)  # the tiny CLIP stands for every backbone in a smoke run
            continue
        t = time.perf_counter()
        clips[name] = clip_only(load_models(dataclasses.replace(spec, clip_model=model, clip_pretrained=""), "cpu"))
        log(f"loaded {name} ({model}, random weights) in {time.perf_counter() - t:.1f} s")

    old = work / "old"
    results = {"full": [], "full_featurize": [], "captioning": [], **{f"reembed_{b}": [] for b in clips}}
    counts = {}
    for rep in range(reps):
        store = work / f"full{rep}"
        t = time.perf_counter()
        s = featurize_store(rows, store, models=full_models, config=config)
        feat = time.perf_counter() - t
        cap = caption_seconds(rows, full_models, config.resolved_batch_size("cpu"))
        results["full_featurize"].append(round(feat, 3))
        results["captioning"].append(round(cap, 3))
        results["full"].append(round(feat + cap, 3))
        if rep == 0:
            os.replace(store, old)
            with StoreReader(old) as r:
                counts = {"images": r.n_images, "objects": r.n_objects, "grounded": int(r.manifest["counts"]["n_grounded"])}
        log(f"rep {rep}: full {feat + cap:.1f} s (featurize {feat:.1f} + captioning {cap:.1f}; "
            f"{s.n_written} images, stages {s.stage_seconds}) load {os.getloadavg()[0]:.2f}")
        for name, models in clips.items():
            t = time.perf_counter()
            s = featurize_store(rows, work / f"re_{name}_{rep}", models=models, config=config, objects_from=old)
            dt = time.perf_counter() - t
            results[f"reembed_{name}"].append(round(dt, 3))
            log(f"rep {rep}: re-embed {name} {dt:.1f} s ({n / dt:.2f} img/s; stages {s.stage_seconds})")
    med = {k: statistics.median(v) for k, v in results.items() if v}
    summary = {"images_per_second_full": round(n / med["full"], 4),
               **{f"ratio_{b}": round(med[f"reembed_{b}"] / med["full"], 4) for b in clips},
               **{f"ratio_{b}_vs_featurize_only": round(med[f"reembed_{b}"] / med["full_featurize"], 4) for b in clips},
               **{f"images_per_second_{b}": round(n / med[f"reembed_{b}"], 4) for b in clips}}
    for k, v in summary.items():
        log(f"{k}: {v}")
    log(f"load average at end: {os.getloadavg()}")
    write_result(args.out, "objects_from", BANNER, {"seconds": results, "median_seconds": med, "summary": summary},
                 preset=preset, n_images=n, reps=reps, counts=counts, load_start=load_start, load_end=os.getloadavg(),
                 thresholds="box 0, text 0 (every noun grounded: the most crops a re-embedding can have)")


if __name__ == "__main__":
    main()
