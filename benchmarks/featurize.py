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
import dataclasses
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

SIZES = {"tiny": "tiny-random", "small": "small-random", "default": "default-random", "fast": "fast-random"}
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

    from item.featurize.inputs.discover import InputRow

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
    from item.featurize.inputs.decode import decode_image
    from item.featurize.text.nouns import extract_nouns
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


# -- GPU busy fraction ---------------------------------------------------------------------------
class NvmlSampler:
    """Mean of NVML's GPU utilisation (% of time a kernel ran) sampled every 50 ms while active; None
    without NVML (nvidia-ml-py) or a GPU."""

    def __init__(self):
        self.samples, self._stop, self._thread, self.error = [], None, None, ""

    def __enter__(self):
        import threading

        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception as exc:  # no NVML, no GPU
            self.error = f"{type(exc).__name__}: {exc}"[:200]
            return self
        self._stop = threading.Event()

        def run():
            while not self._stop.is_set():
                try:
                    self.samples.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                except Exception:
                    break
                self._stop.wait(0.05)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread:
            self._stop.set()
            self._thread.join()

    @property
    def mean(self):
        return round(sum(self.samples) / len(self.samples) / 100, 3) if self.samples else None


def profiled_gpu_seconds(fn) -> dict:
    """Run fn() under torch.profiler; the union of the intervals in which a CUDA kernel or copy ran (s),
    the profiled wall time, and their ratio. CUDA only."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    wall = time.perf_counter() - t
    ivs = sorted((e.start_ns(), e.end_ns()) for e in prof.profiler.kineto_results.events()
                 if e.device_type() == torch.autograd.DeviceType.CUDA and e.end_ns() > e.start_ns())
    busy, cur_s, cur_e = 0, None, None
    for a, b in ivs:
        if cur_e is None or a > cur_e:
            if cur_e is not None:
                busy += cur_e - cur_s
            cur_s, cur_e = a, b
        else:
            cur_e = max(cur_e, b)
    if cur_e is not None:
        busy += cur_e - cur_s
    return {"gpu_busy_seconds": round(busy / 1e9, 3), "profiled_wall_seconds": round(wall, 3),
            "busy_fraction_of_profiled_wall": round(busy / 1e9 / wall, 3) if wall else None,
            "n_gpu_events": len(ivs)}


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

    from item.featurize.inputs.decode import decode_image
    from item.featurize.models.grounding_dino import build_prompt
    from item.featurize.models.hub import autocast_for
    from item.featurize.text.nouns import extract_nouns

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

    prepared = {i: g.prepare(images[i]) for i in with_nouns}

    def ground(b):
        from item.featurize.models.grounding import collate_pixels

        idx = cycle(with_nouns, b)
        if hasattr(g, "model_inputs"):  # OmDet-Turbo: its own inputs; noun embeddings cached beforehand
            inputs = g.model_inputs([prepared[i] for i in idx], [nouns[i] for i in idx])
            with torch.inference_mode(), autocast_for(dev):
                g.model(**inputs)  # fills the noun cache, as a run does after its first images
            sync(dev)
            t = time.perf_counter()
            with torch.inference_mode(), autocast_for(dev):
                g.model(**inputs)
            sync(dev)
            return time.perf_counter() - t
        if getattr(g, "family", "") == "owlv2":
            return _owl_forward(g, [prepared[i] for i in idx], [nouns[i] for i in idx], dev)
        prompts = [build_prompt(nouns[i])[0] for i in idx]
        tok = g.processor.tokenizer(prompts, padding="longest", truncation=True, max_length=g.max_text_len,
                                    return_tensors="pt")
        pix, mask = collate_pixels([prepared[i] for i in idx])
        inputs = {k: v.to(dev) for k, v in {**tok, "pixel_values": pix, "pixel_mask": mask}.items()}
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

        cap_pix = [c.prepare(im) for im in images]

        def caption(b):
            # the captioner's own generate() call with its decoding's settings (the authors' prompt included):
            # batched pixels in, one generate, texts out; the stacking and the prompt's tokens are its only host work
            pix = cycle(cap_pix, b)
            sync(dev)
            t = time.perf_counter()
            c.caption_prepared(pix)
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


def _owl_forward(g, prepared, nouns, dev) -> float:
    import torch

    from item.featurize.models.hub import autocast_for
    from item.featurize.models.owlv2 import PROMPT

    n_q = max(len(n) for n in nouns)
    texts = [q for ns in nouns for q in [PROMPT.format(n) for n in ns] + [""] * (n_q - len(ns))]
    tok = g.processor.tokenizer(texts, padding="max_length", truncation=True, max_length=g.max_text_len,
                                return_tensors="pt")
    inputs = {"input_ids": tok["input_ids"].to(dev), "attention_mask": tok["attention_mask"].to(dev),
              "pixel_values": torch.stack([p.pixel_values for p in prepared]).to(dev)}
    sync(dev)
    t = time.perf_counter()
    with torch.inference_mode(), autocast_for(dev):
        g.model(**inputs)
    sync(dev)
    return time.perf_counter() - t


# -- precision: fp16 / bf16 autocast against fp32 on the same inputs ------------------------------------
def precision_check(rows, models, n: int, log) -> dict:
    """Embeddings, boxes and captions under fp32, fp16 and bf16 autocast (CUDA), compared with fp32."""
    import contextlib

    import torch

    from item.featurize.inputs.decode import decode_image
    from item.featurize.models import blip as cap_mod
    from item.featurize.models import grounding_dino as gr_mod
    from item.featurize.models.clip import ClipEncoder
    from item.featurize.text.nouns import extract_nouns

    rows = rows[:n]
    images = [decode_image(r.path).image for r in rows]
    nouns = [extract_nouns(r.caption or "", max_objects=8) for r in rows]
    texts = list(dict.fromkeys([r.caption for r in rows] + [x for ns in nouns for x in ns]))
    clip = models.clip
    pix = torch.stack([clip.preprocess(im) for im in images])
    orig = (cap_mod.autocast_for, gr_mod.autocast_for, ClipEncoder._autocast)
    out = {}
    for name, dtype in (("fp32", None), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        def ctx(*_a, _d=dtype):
            return torch.autocast("cuda", dtype=_d) if _d is not None else contextlib.nullcontext()

        cap_mod.autocast_for = gr_mod.autocast_for = ctx
        ClipEncoder._autocast = lambda self, _c=ctx: _c()
        try:
            out[name] = {"image_emb": clip.encode_images(pix), "text_emb": clip.encode_texts(texts)[0],
                         "boxes": models.grounder.ground(images, nouns),
                         "captions": models.captioner.caption(images) if models.captioner else []}
        finally:
            cap_mod.autocast_for, gr_mod.autocast_for, ClipEncoder._autocast = orig

    def emb_cmp(a, b):
        a16, b16 = a.astype(np.float16).astype(np.float32), b.astype(np.float16).astype(np.float32)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        return {"min_cosine": round(float(cos.min()), 6), "mean_cosine": round(float(cos.mean()), 6),
                "max_abs_diff_stored_float16": round(float(np.abs(a16 - b16).max()), 5)}

    def box_cmp(a, b):
        diffs, n_diff_grounding = [], 0
        for ba, bb in zip(a, b):
            for x, y in zip(ba, bb):
                if (x is None) != (y is None):
                    n_diff_grounding += 1
                elif x is not None:
                    diffs.append(max(abs(x.x0 - y.x0), abs(x.y0 - y.y0), abs(x.x1 - y.x1), abs(x.y1 - y.y1)))
        d = np.array(diffs) if diffs else np.zeros(1)
        return {"n_boxes": len(diffs), "grounded_differently": n_diff_grounding,
                "max_px_diff": round(float(d.max()), 3), "median_px_diff": round(float(np.median(d)), 3),
                "share_within_1px": round(float((d <= 1.0).mean()), 3)}

    res = {"n_images": len(rows), "n_texts": len(texts)}
    for name in ("fp16", "bf16"):
        res[name] = {"clip_image": emb_cmp(out[name]["image_emb"], out["fp32"]["image_emb"]),
                     "clip_text": emb_cmp(out[name]["text_emb"], out["fp32"]["text_emb"]),
                     "ground": box_cmp(out[name]["boxes"], out["fp32"]["boxes"]),
                     "captions_identical": round(float(np.mean([x == y for x, y in zip(
                         out[name]["captions"], out["fp32"]["captions"])])), 3) if out[name]["captions"] else None}
        log(f"precision {name} vs fp32: {res[name]}")
    return res


# -- one size --------------------------------------------------------------------------------------
def med_spread(xs):
    return {"median": round(statistics.median(xs), 3), "min": round(min(xs), 3), "max": round(max(xs), 3),
            "runs": [round(x, 3) for x in xs]}


def bench_size(size: str, args, log, save=None) -> dict:
    import torch

    from item.featurize import FeaturizeConfig, load_models, resolve_models
    from item.featurize.inputs.decode import decode_image

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
                             clip_batch_size=args.clip_batch_size, caption_batch_size=args.caption_batch_size,
                             max_objects=8)
    images = [decode_image(r.path).image for r in rows] if use_given else []

    # warm-up: one image through both (first forwards allocate / autotune). Not on the CPU, where it
    # costs as much as the measurement itself and first calls carry no autotuning.
    if models.device.startswith("cuda"):
        naive_featurize(rows[:1], models, config.max_objects, use_given, Counter())
        pipeline_featurize(rows[:2], models, config)

    base_s, pipe_s, base_cap, pipe_cap = [], [], [], []
    base_stages, pipe_stages, pipe_summary = Counter(), Counter(), {}
    base_reps = args.reps if args.baseline_reps is None else args.baseline_reps
    busy_samples = []
    naive = None
    for rep in range(max(args.reps, base_reps)):
        if rep < base_reps or naive is None:
            st = Counter()
            t = time.perf_counter()
            naive = naive_featurize(rows, models, config.max_objects, use_given, st)
            sync(models.device)
            base_s.append(time.perf_counter() - t)
            base_stages.update(st)
            log(f"[{size}] rep {rep}: baseline {base_s[-1]:.2f} s")
        if rep < args.reps:
            t = time.perf_counter()
            with NvmlSampler() as nv:
                pipe_summary = pipeline_featurize(rows, models, config)
            pipe_s.append(time.perf_counter() - t)
            busy_samples.append(nv.mean)
            pipe_stages.update(pipe_summary["stage_seconds"])
            log(f"[{size}] rep {rep}: pipeline {pipe_s[-1]:.2f} s (NVML busy {nv.mean})  "
                f"stages {pipe_summary['stage_seconds']}")
        if use_given and not args.no_caption_timing:
            if rep < base_reps:
                s, words = caption_cost(images, models, 1)
                base_cap.append(s)
            if rep < args.reps:
                s, words = caption_cost(images, models, config.caption_batch_size)
                pipe_cap.append(s)
            log(f"[{size}] rep {rep}: captioning baseline {base_cap[-1] if base_cap else '-'} s, "
                f"pipeline {pipe_cap[-1]:.2f} s")
    n = len(rows)
    n_nouns = sum(len(r["nouns"]) for r in naive)
    n_crops = sum(r["n_crops"] for r in naive)  # the random presets ground every noun (thresholds 0.0)
    texts = list(dict.fromkeys([r["caption"] for r in naive] + [x for r in naive for x in r["nouns"]]))
    counts = {"n_images": n, "n_nouns": n_nouns, "n_crops": n_crops, "n_unique_texts": len(texts),
              "n_with_nouns": sum(bool(r["nouns"]) for r in naive)}

    gpu = models.device.startswith("cuda")
    batches = ({"clip_image": [1, 64, 256], "clip_text": [1, 64, 256], "ground": [1, 4, 8, 16, 32],
                "caption": [1, 16, 64, 128]}
               if gpu else {"clip_image": [1, 16, 64], "clip_text": [1, 16, 64], "ground": [1, 2], "caption": [1, 8]})
    if args.quick_bound:
        batches = {k: v[:2] for k, v in batches.items()}
    g = models.grounder
    text_cache = {"hits": g.text_hits, "misses": g.text_misses} if hasattr(g, "text_hits") else None
    t = time.perf_counter()
    bound = forward_bound(rows, models, counts, config, batches, time_caption=use_given and not args.no_caption_timing)
    log(f"[{size}] forward bound measured in {time.perf_counter() - t:.1f} s: {bound['stage_seconds']}")

    bmed, pmed = statistics.median(base_s), statistics.median(pipe_s)
    res = {
        "size": size, "preset": SIZES[size], "device": models.device, "n_images": n, "reps": args.reps,
        "captions": args.captions, "batch_size": config.resolved_batch_size(models.device),
        "clip_batch_size": config.clip_batch_size, "caption_batch_size": config.caption_batch_size,
        "ground_batch_size": config.ground_batch_size or models.grounder.auto_batch_size(models.device),
        "grounder": models.grounder.info.get("id"), "grounder_family": models.grounder.family,
        "overlap": config.resolved_overlap(models.device), "baseline_reps": base_reps,
        "gpu_busy_nvml_mean": [b for b in busy_samples], "extras": {},
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
        "grounder_text_cache": text_cache,  # the grounder's own noun cache (OmDet-Turbo), warm-up included
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
    if save:  # the main measurement is safe on disk before the extras run
        save(res)
    extras = res["extras"]
    gpu_dev = models.device.startswith("cuda")
    if args.overlap_compare:
        cfg = dataclasses.replace(config, overlap=not config.resolved_overlap(models.device))
        t = time.perf_counter()
        summ = pipeline_featurize(rows, models, cfg)
        extras["overlap_flipped"] = {"overlap": cfg.overlap, "seconds": round(time.perf_counter() - t, 3),
                                     "stage_seconds": summ["stage_seconds"]}
        log(f"[{size}] pipeline with overlap={cfg.overlap}: {extras['overlap_flipped']['seconds']} s")
        if save:
            save(res)
    if args.profile and gpu_dev:
        # One more run with --profile-stages (the GPU synchronised after every stage, so each stage timer
        # holds its own GPU time) under torch.profiler (kernel busy time). The timed runs above synchronise
        # nothing, so their stage times are host times.
        cfg = dataclasses.replace(config, profile_stages=True)
        synced = {}
        try:
            def run():
                synced.update(pipeline_featurize(rows, models, cfg))

            extras["profile"] = profiled_gpu_seconds(run)
            extras["profile"]["stage_seconds_synchronised"] = synced.get("stage_seconds")
            log(f"[{size}] profiled: {extras['profile']}")
        except Exception as exc:  # the profiler is optional; never lose the run over it
            extras["profile"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    for gs in [int(x) for x in args.ground_sizes.split(",") if x.strip()]:
        from item.featurize.models.grounding import set_ground_size

        ip = models.grounder.processor.image_processor
        before = set_ground_size(ip, None)
        set_ground_size(ip, gs)
        try:
            t = time.perf_counter()
            summ = pipeline_featurize(rows, models, config)
            extras[f"ground_size_{gs}"] = {"seconds": round(time.perf_counter() - t, 3),
                                           "stage_seconds": summ["stage_seconds"]}
            log(f"[{size}] ground size {gs}: {extras[f'ground_size_{gs}']}")
            if save:
                save(res)
        finally:
            set_ground_size(ip, before)
    for gname in [x.strip() for x in args.grounders.split(",") if x.strip()]:
        from item.featurize.models.grounders import load_grounder

        t = time.perf_counter()
        other = load_grounder(gname, models.device, box_threshold=0.0, text_threshold=0.0)
        load_g = time.perf_counter() - t
        keep, models.grounder = models.grounder, other
        try:
            pipeline_featurize(rows[:4], models, config)  # warm-up
            t = time.perf_counter()
            summ = pipeline_featurize(rows, models, config)
            extras[f"grounder_{gname}"] = {"seconds": round(time.perf_counter() - t, 3), "load_seconds": round(load_g, 1),
                                           "stage_seconds": summ["stage_seconds"], "ground_size": other.ground_size,
                                           "quality": "unknown (random weights; no real weights here)"}
            per_item = {}
            from item.featurize.inputs.decode import decode_image as _dec
            from item.featurize.text.nouns import extract_nouns as _nouns

            cand = [(r, _nouns(r.caption or "", max_objects=8)) for r in rows]
            cand = [(other.prepare(_dec(r.path).image), ns) for r, ns in cand if ns][:16]
            for b in ((1, 4, 16) if gpu_dev else (1, 2)):
                if len(cand) < b:
                    break
                part = cand[:b]
                other.ground_prepared([c[0] for c in part], [c[1] for c in part])  # warm-up
                sync(models.device)
                t = time.perf_counter()
                other.ground_prepared([c[0] for c in part], [c[1] for c in part])
                sync(models.device)
                per_item[str(b)] = round((time.perf_counter() - t) / b, 5)
            extras[f"grounder_{gname}"]["ground_call_seconds_per_image_by_batch"] = per_item
            log(f"[{size}] grounder {gname}: {extras[f'grounder_{gname}']}")
            if save:
                save(res)
        finally:
            models.grounder = keep
            del other
            if gpu_dev:
                torch.cuda.empty_cache()
    if args.precision and gpu_dev:
        try:
            extras["precision"] = precision_check(rows, models, args.precision, log)
        except Exception as exc:
            extras["precision"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    if "profile" in extras and "gpu_busy_seconds" in extras["profile"]:
        res["gpu_busy_fraction"] = round(extras["profile"]["gpu_busy_seconds"] / pmed, 3)
    if save:
        save(res)
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


def summarize(paths) -> str:
    """One markdown row per preset from featurize JSON files (what gpu_all.sh leaves in its folder)."""
    import json

    hdr = ("preset", "device", "images", "baseline e2e img/s", "pipeline e2e img/s", "e2e speedup",
           "bound e2e img/s", "e2e efficiency", "featurize efficiency", "GPU busy (profiler; NVML)",
           "stage s (synchronised run, else timed run)")
    lines = [BANNER, "", "| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    for path in paths:
        doc = json.loads(Path(path).read_text())
        for r in doc["results"]:
            b = r["forward_bound"]
            bound_s = b["featurize_seconds"] + b.get("caption_seconds", 0.0)
            prof = r.get("extras", {}).get("profile", {})
            stages = prof.get("stage_seconds_synchronised") or r["pipeline_stage_seconds_per_rep"]
            nv = [x for x in r.get("gpu_busy_nvml_mean", []) if x is not None]
            lines.append("| " + " | ".join(str(x) for x in (
                f"{r['size']} ({r['preset']})", r["device"], r["n_images"], r.get("e2e_baseline_images_per_s", "-"),
                r.get("e2e_pipeline_images_per_s", "-"), r.get("e2e_speedup", "-"),
                round(r["n_images"] / bound_s, 3) if bound_s else "-", r.get("e2e_efficiency", "-"), r["efficiency"],
                f"{r.get('gpu_busy_fraction', '-')}; {max(nv) if nv else '-'}",
                ", ".join(f"{k} {v:.2f}" for k, v in sorted(stages.items())))) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--summarize":
        print(summarize(argv[1:]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="small", help="comma list of: " + ", ".join(SIZES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-images", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=0, help="image batch (0: the pipeline's auto)")
    ap.add_argument("--clip-batch-size", type=int, default=256)
    ap.add_argument("--caption-batch-size", type=int, default=64)
    ap.add_argument("--baseline-reps", type=int, default=None, help="repetitions of the baseline (default --reps)")
    ap.add_argument("--overlap-compare", action="store_true", help="one more pipeline run with overlap flipped")
    ap.add_argument("--profile", action="store_true", help="one more pipeline run under torch.profiler (CUDA): "
                    "GPU busy seconds")
    ap.add_argument("--ground-sizes", default="", help="comma list: one pipeline run per grounder input size")
    ap.add_argument("--grounders", default="", help="comma list of other grounders (e.g. owlv2-random): one "
                    "pipeline run each")
    ap.add_argument("--precision", type=int, default=0, help="compare fp16/bf16 with fp32 on this many images (CUDA)")
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
        def save(partial, done=tuple(results)):
            write_result(args.out, "featurize", BANNER, list(done) + [partial], device=args.device)

        results.append(bench_size(size, args, log, save))
    print(table(results))
    write_result(args.out, "featurize", BANNER, results, device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
