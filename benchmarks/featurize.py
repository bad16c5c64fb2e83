"""Featurize speed: the project's batched pipeline against a naive one-image-at-a-time script.

    python benchmarks/featurize.py --size small --n-images 4 --reps 3
    python benchmarks/featurize.py --size small,default --device cuda --n-images 128 --reps 2 --out r.json

Both sides use the same loaded models (random weights of the real architectures: cost does not depend on
the weights) on the same images, alternated baseline, pipeline, baseline, pipeline... The pipeline is
`item.featurize.featurize_store` into a fresh temporary store (hashing, decoding workers, batching,
text cache, shard writes: all of it is in the time). The baseline is what a single-image script would do:
decode, caption, extract nouns, ground, then CLIP on the image, each crop, the caption and each noun, one
forward per item, no cache, results kept in memory (no store).

Captions (--captions): random-weight BLIP emits pseudo-words, so its captions name no nouns and nothing
would be grounded. By default ('given') both sides take the manifest's real captions (reference_caption
or prompt) for nouns, and captioning is timed separately on the same images and added to both sides'
totals: one generate() per image for the baseline, one per batch of --batch-size for the pipeline (what
the pipeline does when no caption is given). 'model' runs the random captioner inside both instead.

The forward bound: each model's pure forward (no pre- or post-processing) timed alone on the same inputs
at a few batch sizes; the best per-item time of each stage times the stage's item count (images,
images + crops, unique texts) summed over stages. Efficiency = bound / measured pipeline time.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import write_result  # noqa: E402

SIZES = {"tiny": "tiny-random", "small": "small-random", "default": "default-random"}
BANNER = ("RANDOM WEIGHTS: real full-size architectures with seeded random weights (speed does not depend on "
          "the weights; outputs are meaningless)")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# -- inputs ----------------------------------------------------------------------------------------
def sample_rows(n: int, workdir: Path):
    """n InputRows over item/samples (real photos and generated images, manifest captions).

    Beyond the 38 samples, mirrored and re-encoded copies (new bytes, new ids) with the same captions
    are written to `workdir`: their repeated captions raise the text-cache hit rate (say so)."""
    from PIL import Image, ImageOps

    from item.featurize.inputs import InputRow

    sample_dir = ROOT / "item" / "samples"
    base = list(csv.DictReader(open(sample_dir / "manifest.csv")))
    rows = []
    for i in range(n):
        r = base[i % len(base)]
        caption = (r.get("reference_caption") or r.get("prompt") or "").strip()
        path = sample_dir / r["path"]
        copy = i // len(base)
        if copy:
            im = Image.open(path).convert("RGB")
            if copy % 2:
                im = ImageOps.mirror(im)
            path = workdir / f"copy{copy}_{i % len(base):03d}.jpg"
            im.save(path, quality=90 - copy)
        rows.append(InputRow(path=str(path), label=r["label"], generator=r["generator"], split=r["split"],
                             caption=caption, origin=f"manifest.csv:{i % len(base) + 2}"))
    return rows


# -- the naive baseline ----------------------------------------------------------------------------
def naive_featurize(rows, models, max_objects: int, use_given: bool, seconds: Counter) -> list[dict]:
    """One image at a time: decode, caption, nouns, ground, CLIP image + each crop, caption + each noun."""
    from item.featurize.decode import decode_image
    from item.featurize.nouns import extract_nouns
    from item.misalignment import compute

    clip, dev = models.clip, models.device
    out = []

    def timed(stage, fn, *a):
        t = time.perf_counter()
        r = fn(*a)
        sync(dev)
        seconds[stage] += time.perf_counter() - t
        return r

    for row in rows:
        img = timed("decode", lambda: decode_image(row.path).image)
        caption = row.caption if use_given else timed("caption", models.captioner.caption, [img])[0]
        nouns = extract_nouns(caption, max_objects=max_objects)
        boxes = timed("ground", models.grounder.ground, [img], [nouns])[0] if nouns else []
        image_emb = timed("clip_image", lambda: clip.encode_images(clip.preprocess(img)[None]))
        crops = []
        for b in boxes:
            if b is None:
                crops.append(np.zeros(clip.embed_dim, np.float32))
                continue
            box = (int(np.floor(b.x0)), int(np.floor(b.y0)), max(int(np.ceil(b.x1)), int(np.floor(b.x0)) + 1),
                   max(int(np.ceil(b.y1)), int(np.floor(b.y0)) + 1))
            crops.append(timed("clip_image", lambda: clip.encode_images(clip.preprocess(img.crop(box))[None]))[0])
        caption_emb = timed("clip_text", clip.encode_texts, [caption])[0]
        noun_emb = [timed("clip_text", clip.encode_texts, [n])[0][0] for n in nouns]
        k = len(nouns)
        mis = compute("hierarchical", image_emb, caption_emb,
                      np.array(crops, np.float32).reshape(k, clip.embed_dim),
                      np.array(noun_emb, np.float32).reshape(k, clip.embed_dim),
                      np.zeros(k, np.int64), np.array([b is not None for b in boxes], bool))
        out.append({"caption": caption, "nouns": nouns, "n_crops": sum(b is not None for b in boxes), "mis": mis[0]})
    return out


# -- the project's pipeline ------------------------------------------------------------------------
def pipeline_featurize(rows, models, config) -> dict:
    from item.featurize import featurize_store

    with tempfile.TemporaryDirectory(prefix="item-bench-store-") as d:
        summary = featurize_store(rows, Path(d) / "store", models=models, config=config)
    return summary.to_json()


def caption_cost(images, models, batch_size: int) -> tuple[float, float]:
    """Seconds to caption `images` in batches of `batch_size`, and mean caption length in words."""
    t = time.perf_counter()
    words = 0
    for s in range(0, len(images), batch_size):
        caps = models.captioner.caption(images[s:s + batch_size])
        words += sum(len(c.split()) for c in caps)
    sync(models.device)
    return time.perf_counter() - t, words / max(1, len(images))


# -- forward bound ---------------------------------------------------------------------------------
def _best_per_item(fn, n_items_of_batch: dict, device: str, warmup: bool) -> dict:
    """{batch: seconds per item} timing fn(batch) once per batch size (after one warm-up on GPU)."""
    out = {}
    for b in n_items_of_batch:
        if warmup:
            fn(b)
            sync(device)
        t = time.perf_counter()
        fn(b)
        sync(device)
        out[b] = (time.perf_counter() - t) / b
    return out


def forward_bound(rows, models, counts: dict, config, batches: dict, time_caption: bool) -> dict:
    """Pure model forward time per stage at its best batch size x the stage's items."""
    import torch

    from item.featurize.captioner import autocast_for
    from item.featurize.decode import decode_image
    from item.featurize.grounder import build_prompt, letterbox
    from item.featurize.nouns import extract_nouns

    dev = models.device
    gpu = dev.startswith("cuda")
    clip = models.clip
    images = [decode_image(r.path).image for r in rows]
    nouns = [extract_nouns(r.caption or "", max_objects=config.max_objects) for r in rows]
    texts = list(dict.fromkeys([r.caption for r in rows] + [n for ns in nouns for n in ns]))

    def cycle(seq, b):
        return [seq[i % len(seq)] for i in range(b)]

    res = {}
    # CLIP image: whole images (crops are 224x224 inputs of the same cost)
    pix = torch.stack([clip.preprocess(im) for im in images])

    def clip_img(b):
        x = pix[torch.arange(b) % len(pix)].to(dev)
        with torch.inference_mode(), clip._autocast():
            clip.model.encode_image(x)

    res["clip_image"] = _best_per_item(clip_img, batches["clip_image"], dev, gpu)
    tokens = clip.tokenizer(texts, context_length=clip.context_length)

    def clip_txt(b):
        x = tokens[torch.arange(b) % len(tokens)].to(dev)
        with torch.inference_mode(), clip._autocast():
            clip.model.encode_text(x)

    res["clip_text"] = _best_per_item(clip_txt, batches["clip_text"], dev, gpu)

    g = models.grounder
    with_nouns = [i for i, n in enumerate(nouns) if n]

    def ground(b):
        idx = cycle(with_nouns, b)
        prompts = [build_prompt(nouns[i])[0] for i in idx]
        tok = g.processor.tokenizer(prompts, padding="longest", truncation=True, max_length=g.max_text_len,
                                    return_tensors="pt")
        pixd = g.processor.image_processor(images=[letterbox(images[i])[0] for i in idx], return_tensors="pt")
        inputs = {k: v.to(dev) for k, v in {**tok, **pixd}.items()}
        sync(dev)
        t = time.perf_counter()
        with torch.inference_mode(), autocast_for(dev):
            g.model(**inputs)
        sync(dev)
        return time.perf_counter() - t

    res["ground"] = {}
    for b in batches["ground"]:
        if gpu:
            ground(b)
        res["ground"][b] = ground(b) / b

    if time_caption:
        c = models.captioner

        def caption(b):
            pv = c.processor(images=cycle(images, b), return_tensors="pt")["pixel_values"].to(dev)
            sync(dev)
            t = time.perf_counter()
            with torch.inference_mode(), autocast_for(dev):
                c.model.generate(pixel_values=pv, **c.generation)
            sync(dev)
            return time.perf_counter() - t

        res["caption"] = {}
        for b in batches["caption"]:
            if gpu:
                caption(b)
            res["caption"][b] = caption(b) / b

    best = {k: min(v.values()) for k, v in res.items()}
    best_batch = {k: min(v, key=v.get) for k, v in res.items()}
    items = {"clip_image": counts["n_images"] + counts["n_crops"], "clip_text": counts["n_unique_texts"],
             "ground": counts["n_with_nouns"], "caption": counts["n_images"]}
    stage_bound = {k: best[k] * items[k] for k in best}
    return {"per_item_by_batch": {k: {str(b): round(s, 5) for b, s in v.items()} for k, v in res.items()},
            "best_batch": best_batch, "items": items, "stage_seconds": {k: round(v, 3) for k, v in stage_bound.items()},
            "featurize_seconds": round(sum(v for k, v in stage_bound.items() if k != "caption"), 3),
            "caption_seconds": round(stage_bound.get("caption", 0.0), 3)}


# -- one size --------------------------------------------------------------------------------------
def med_spread(xs):
    return {"median": round(statistics.median(xs), 3), "min": round(min(xs), 3), "max": round(max(xs), 3),
            "runs": [round(x, 3) for x in xs]}


def bench_size(size: str, args, log) -> dict:
    import torch

    from item.featurize.decode import decode_image
    from item.featurize import FeaturizeConfig, load_models, resolve_models

    t = time.perf_counter()
    models = load_models(resolve_models(SIZES[size]), args.device)
    load_s = time.perf_counter() - t
    log(f"[{size}] models loaded in {load_s:.1f} s on {models.device}")
    use_given = args.captions == "given"
    workdir = Path(tempfile.mkdtemp(prefix="item-bench-imgs-"))
    rows = sample_rows(args.n_images, workdir)
    if not use_given:
        rows = [r.__class__(**{**r.__dict__, "caption": None}) for r in rows]
    config = FeaturizeConfig(batch_size=args.batch_size, device=args.device, workers=args.workers,
                             clip_batch_size=args.clip_batch_size, max_objects=8)
    images = [decode_image(r.path).image for r in rows] if use_given else []

    # warm-up: one image through both (first forwards allocate / autotune)
    naive_featurize(rows[:1], models, config.max_objects, use_given, Counter())
    pipeline_featurize(rows[:2] if models.device.startswith("cuda") else rows[:1], models, config)

    base_s, pipe_s, base_cap, pipe_cap = [], [], [], []
    base_stages, pipe_stages, pipe_summary = Counter(), Counter(), {}
    for rep in range(args.reps):
        st = Counter()
        t = time.perf_counter()
        naive = naive_featurize(rows, models, config.max_objects, use_given, st)
        sync(models.device)
        base_s.append(time.perf_counter() - t)
        base_stages.update(st)
        log(f"[{size}] rep {rep}: baseline {base_s[-1]:.2f} s")
        t = time.perf_counter()
        pipe_summary = pipeline_featurize(rows, models, config)
        pipe_s.append(time.perf_counter() - t)
        pipe_stages.update(pipe_summary["stage_seconds"])
        log(f"[{size}] rep {rep}: pipeline {pipe_s[-1]:.2f} s  stages {pipe_summary['stage_seconds']}")
        if use_given and not args.no_caption_timing:
            s, words = caption_cost(images, models, 1)
            base_cap.append(s)
            s, words = caption_cost(images, models, args.batch_size)
            pipe_cap.append(s)
            log(f"[{size}] rep {rep}: captioning baseline {base_cap[-1]:.2f} s, pipeline {pipe_cap[-1]:.2f} s")
    n = len(rows)
    n_nouns = sum(len(r["nouns"]) for r in naive)
    n_crops = sum(r["n_crops"] for r in naive)  # the random presets ground every noun (thresholds 0.0)
    texts = list(dict.fromkeys([r["caption"] for r in naive] + [x for r in naive for x in r["nouns"]]))
    counts = {"n_images": n, "n_nouns": n_nouns, "n_crops": n_crops, "n_unique_texts": len(texts),
              "n_with_nouns": sum(bool(r["nouns"]) for r in naive)}

    gpu = models.device.startswith("cuda")
    batches = ({"clip_image": [1, 64, 256], "clip_text": [1, 64, 256], "ground": [1, 4, 16], "caption": [1, 16, 64]}
               if gpu else {"clip_image": [1, 16, 64], "clip_text": [1, 16, 64], "ground": [1, 2], "caption": [1, 8]})
    if args.quick_bound:
        batches = {k: v[:2] for k, v in batches.items()}
    t = time.perf_counter()
    bound = forward_bound(rows, models, counts, config, batches, time_caption=use_given and not args.no_caption_timing)
    log(f"[{size}] forward bound measured in {time.perf_counter() - t:.1f} s: {bound['stage_seconds']}")

    bmed, pmed = statistics.median(base_s), statistics.median(pipe_s)
    res = {
        "size": size, "preset": SIZES[size], "device": models.device, "n_images": n, "reps": args.reps,
        "captions": args.captions, "batch_size": args.batch_size, "clip_batch_size": args.clip_batch_size,
        "workers": args.workers, "counts": counts, "model_load_seconds": round(load_s, 1),
        "baseline_seconds": med_spread(base_s), "pipeline_seconds": med_spread(pipe_s),
        "baseline_images_per_s": round(n / bmed, 4), "pipeline_images_per_s": round(n / pmed, 4),
        "speedup": round(bmed / pmed, 3),
        "baseline_stage_seconds_per_rep": {k: round(v / args.reps, 3) for k, v in base_stages.items()},
        "pipeline_stage_seconds_per_rep": {k: round(v / args.reps, 3) for k, v in pipe_stages.items()},
        "text_cache_hit_rate": pipe_summary.get("text_cache_hit_rate"),
        "text_cache_hits": pipe_summary.get("text_cache_hits"),
        "text_cache_misses": pipe_summary.get("text_cache_misses"),
        "forward_bound": bound,
        "efficiency": round(bound["featurize_seconds"] / pmed, 3),
    }
    if base_cap:
        bc, pc = statistics.median(base_cap), statistics.median(pipe_cap)
        res.update({
            "caption_baseline_seconds": med_spread(base_cap), "caption_pipeline_seconds": med_spread(pipe_cap),
            "caption_words_mean": round(words, 1),
            "e2e_baseline_images_per_s": round(n / (bmed + bc), 4),
            "e2e_pipeline_images_per_s": round(n / (pmed + pc), 4),
            "e2e_speedup": round((bmed + bc) / (pmed + pc), 3),
            "e2e_efficiency": round((bound["featurize_seconds"] + bound["caption_seconds"]) / (pmed + pc), 3),
        })
    del models
    if gpu:
        torch.cuda.empty_cache()
    return res


def table(results: list[dict]) -> str:
    lines = [BANNER, ""]
    hdr = ("size", "device", "imgs", "reps", "baseline img/s", "pipeline img/s", "speedup", "e2e speedup",
           "bound s", "pipeline s", "efficiency", "e2e eff.", "text hit")
    lines.append("| " + " | ".join(hdr) + " |")
    lines.append("|" + "---|" * len(hdr))
    for r in results:
        lines.append("| " + " | ".join(str(x) for x in (
            r["size"], r["device"], r["n_images"], r["reps"], r["baseline_images_per_s"], r["pipeline_images_per_s"],
            r["speedup"], r.get("e2e_speedup", "-"), r["forward_bound"]["featurize_seconds"],
            r["pipeline_seconds"]["median"], r["efficiency"], r.get("e2e_efficiency", "-"),
            r["text_cache_hit_rate"])) + " |")
    lines.append("")
    for r in results:
        lines.append(f"[{r['size']}] counts {r['counts']}")
        lines.append(f"[{r['size']}] baseline s (median, min, max): {r['baseline_seconds']['median']} "
                     f"({r['baseline_seconds']['min']}..{r['baseline_seconds']['max']}); pipeline s: "
                     f"{r['pipeline_seconds']['median']} ({r['pipeline_seconds']['min']}..{r['pipeline_seconds']['max']})")
        lines.append(f"[{r['size']}] stage s per rep, baseline: {r['baseline_stage_seconds_per_rep']}")
        lines.append(f"[{r['size']}] stage s per rep, pipeline: {r['pipeline_stage_seconds_per_rep']}")
        lines.append(f"[{r['size']}] forward bound s by stage: {r['forward_bound']['stage_seconds']} "
                     f"(best batch {r['forward_bound']['best_batch']})")
        lines.append(f"[{r['size']}] per-item forward s by batch: {r['forward_bound']['per_item_by_batch']}")
        if "caption_baseline_seconds" in r:
            lines.append(f"[{r['size']}] captioning (timed apart, {r['caption_words_mean']} words a caption): "
                         f"baseline {r['caption_baseline_seconds']['median']} s, pipeline batches "
                         f"{r['caption_pipeline_seconds']['median']} s; end to end img/s baseline "
                         f"{r['e2e_baseline_images_per_s']}, pipeline {r['e2e_pipeline_images_per_s']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="small", help="comma list of: " + ", ".join(SIZES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-images", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--clip-batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=-1)
    ap.add_argument("--captions", choices=("given", "model"), default="given")
    ap.add_argument("--no-caption-timing", action="store_true", help="with --captions given, skip timing BLIP")
    ap.add_argument("--quick-bound", action="store_true", help="time only the first two batch sizes per model")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    log(BANNER)
    results = []
    for size in [s.strip() for s in args.size.split(",") if s.strip()]:
        if size not in SIZES:
            log(f"unknown size {size!r}; valid: {', '.join(SIZES)}")
            return 2
        results.append(bench_size(size, args, log))
    print(table(results))
    write_result(args.out, "featurize", BANNER, results, device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
