"""CPU precision and latency levers (issue 31): where one analyst's upload spends its time on the CPU, what
bfloat16 autocast saves against float32, and what each other lever saves, with the agreement against fp32
beside every row.

    # the measurement (an otherwise idle machine; about 25 min on 2 cores with --lever-reps 2, see BENCHMARKS.md section 10):
    python benchmarks/cpu_precision.py --out-dir benchmarks/results/cpu_precision
    # end to end in a few minutes (1 repetition, 1 image): checks that the script works, measures nothing
    python benchmarks/cpu_precision.py --quick --out-dir /tmp/cpu_precision_smoke

RANDOM WEIGHTS: the presets are ``default-random`` (ViT-L-14, BLIP large with the authors' 3 beams, Grounding
DINO tiny at 800 px) and ``fast-random`` (the ``fast`` preset's architectures), seeded random weights of the
real full-size architectures. Speed does not depend on the weights; agreement on random weights is a floor
for real ones (random BLIP's near-ties and a threshold of 0 make every flip visible), so `item check
--precision bf16` on real weights is what decides.

What it measures, each part in one process with the models loaded once and every setting alternated with
its baseline rep by rep (ABAB), so drifting load hits both alike:

1. ``serve``: a store of four sample images (their manifest captions) featurized in fp32, a logistic head on
   it, then ``item.serve.service.Service`` built as ``item serve`` builds it, once per precision (fp32, bf16;
   warm-up at start). Each repetition uploads one sample the store does not hold, as bytes, through
   ``Service.predict_upload`` (what POST /api/predict calls) with its caption (grounding runs) and without
   (the captioner runs; random BLIP's pseudo-words name no noun, so nothing is grounded then). Stages, timed
   by wrapping the loaded parts: ``caption`` (BLIP generate), ``ground`` (grounder forward and box
   selection), ``clip_image`` (image and crops), ``clip_text`` (caption and nouns), ``decode`` (the
   server's decode check and the loader's decode + model preparation), ``head`` (features + every head),
   ``neighbours`` (image and misalignment lookups), ``other`` (the rest: nouns, crops, misalignment, JSON).
2. ``predict``: one ``item predict`` of one upload (``predict_files``, a fresh process's work without the
   imports): ``load`` (models), the same model stages, ``head``.
3. ``featurize``: ``featurize_store`` of N sample images into a fresh store per rep, models loaded once per
   precision, decode workers as a user gets them (``--workers -1``); captions given (so nouns are grounded)
   and BLIP's captioning of the same images timed beside it in batches as the pipeline batches it; images/s
   = N / (featurize + captioning).
4. ``levers``, one at a time against the same run's baseline: ``threads`` (featurize with one decode worker:
   torch on every core against cores - 1, i.e. no oversubscription), ``sdpa`` (CLIP with torch's fused
   multi-head-attention fast path, the SDPA kernels, against it switched off; BLIP and the grounders in
   transformers do not support SDPA, ``_supports_sdpa`` False, so they are not measured), ``channels_last``
   (grounder and CLIP image tower in channels-last memory format), ``warm_up`` (the first upload after
   start with and without the server's warm-up, against a steady upload), ``text_cache`` (an upload whose
   caption and nouns the server has seen, with the cross-request text cache and with it cleared). Opt-in
   (``--levers ...,compile,static_cache``): ``torch.compile`` of CLIP's image tower, BLIP generate with a
   static KV cache; either may fail on a machine, which is reported, not fatal.

Agreement beside every row, against fp32 (precision rows) or against the lever's own baseline (lever rows):
``same_caption`` (fraction of uploads), ``same_grounding`` (fraction of nouns with the same decision: both
ungrounded, or boxes at IoU >= 0.5), ``min_cosine`` (image and caption embeddings), ``max_dp_fake`` (largest
change of any head's P(fake)).

Writes to --out-dir: ``cpu_precision.json`` (every timing of every rep, the machine with its load average at
start and end), ``summary.md`` (the tables for BENCHMARKS.md section 10), ``log.txt`` (progress).
"""

from __future__ import annotations

import argparse
import contextlib
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

from _common import machine_info, write_result  # noqa: E402

BANNER = ("RANDOM WEIGHTS: real full-size architectures with seeded random weights; latency and agreement "
          "on random weights only, no detection numbers")
PRECISIONS = ("fp32", "bf16")
STAGES = ("load", "decode", "caption", "ground", "clip_image", "clip_text", "head", "neighbours", "other")
LEVERS = ("threads", "sdpa", "channels_last", "warm_up", "text_cache")
OPT_IN_LEVERS = ("compile", "static_cache")
IOU_SAME = 0.5


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
    if LOG_FILE is not None:
        LOG_FILE.write(msg + "\n")
        LOG_FILE.flush()


LOG_FILE = None


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict:
    import torch

    from item.hardware import native_bfloat16, usable_cores

    return {**machine_info("cpu"), "load_average": load_average(), "usable_cores": usable_cores(),
            "native_bfloat16": native_bfloat16(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def samples() -> list[dict]:
    d = ROOT / "item" / "samples"
    rows = list(csv.DictReader(open(d / "manifest.csv")))
    for r in rows:
        r["abs"] = str(d / r["path"])
        r["caption"] = (r.get("reference_caption") or r.get("prompt") or "").strip()
    return rows


def median(xs):
    return round(statistics.median(xs), 4) if xs else None


def stage_medians(runs: list[dict]) -> dict:
    """Median seconds per stage over ``runs`` (None for a stage no run has, e.g. ``load`` of a server upload)."""
    return {k: (median([r.get(k, 0.0) for r in runs]) if any(k in r for r in runs) else None)
            for k in (*STAGES, "total")}


# ------------------------------------------------------------------ timing by wrapping the loaded parts


class StageTimer:
    """Seconds per stage, collected by wrapping callables (instance or module attributes) in place."""

    def __init__(self):
        self.seconds: Counter = Counter()
        self._undo = []

    def wrap(self, obj, attr: str, stage: str) -> None:
        original = getattr(obj, attr)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - t

        setattr(obj, attr, timed)
        self._undo.append((obj, attr, original, attr in getattr(obj, "__dict__", {})))

    def wrap_models(self, models) -> None:
        """The model stages of loaded ``item.featurize.Models``."""
        self.wrap(models.clip, "encode_images", "clip_image")
        self.wrap(models.clip, "encode_texts", "clip_text")
        if models.captioner is not None:
            self.wrap(models.captioner, "caption_prepared", "caption")
        if models.grounder is not None:
            self.wrap(models.grounder, "ground_prepared", "ground")

    def restore(self) -> None:
        for obj, attr, original, own in reversed(self._undo):
            if own or isinstance(obj, type(sys)):
                setattr(obj, attr, original)
            else:
                delattr(obj, attr)  # an instance's wrapped method: its class's comes back
        self._undo.clear()

    def take(self) -> dict:
        out = {k: round(v, 4) for k, v in self.seconds.items()}
        self.seconds.clear()
        return out


@contextlib.contextmanager
def decode_timed(timer: StageTimer):
    """Time the loader's decode + preparation and the server's decode check as ``decode``."""
    from item.featurize.inputs import decode as decode_module
    from item.featurize.run import loader

    timer.wrap(loader, "decode_item", "decode")
    timer.wrap(decode_module, "decode_image", "decode")
    try:
        yield
    finally:
        timer.restore()


# ------------------------------------------------------------------ agreement


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def record_agreement(a, b) -> dict:
    """Agreement of ImageRecords ``b`` with reference ``a`` (same upload): caption, grounding decisions, cosines."""
    same_caption = a.caption == b.caption
    decisions = []
    if [o.noun for o in a.objects] == [o.noun for o in b.objects]:
        for oa, ob in zip(a.objects, b.objects):
            decisions.append((oa.box is None and ob.box is None) or
                             (oa.box is not None and ob.box is not None and _iou(oa.box, ob.box) >= IOU_SAME))
    else:  # other nouns (the caption changed): every noun of either side counts as a disagreement
        decisions = [False] * max(len(a.objects), len(b.objects), 1)
    cos = [float(np.dot(a.image_emb, b.image_emb))]
    if same_caption:
        cos.append(float(np.dot(a.caption_emb, b.caption_emb)))
    return {"same_caption": bool(same_caption), "grounding_agree": int(sum(decisions)), "grounding_n": len(decisions),
            "min_cosine": round(min(cos), 6)}


def summarise_agreement(items: list[dict]) -> dict:
    if not items:
        return {}
    n = sum(i["grounding_n"] for i in items)
    out = {"same_caption": round(float(np.mean([i["same_caption"] for i in items])), 4),
           "same_grounding": round(sum(i["grounding_agree"] for i in items) / n, 4) if n else None,
           "min_cosine": round(min(i["min_cosine"] for i in items), 6)}
    dp = [i["dp_fake"] for i in items if i.get("dp_fake") is not None]
    if dp:
        out["max_dp_fake"] = round(max(dp), 5)
    return out


def verdict_delta(a: dict, b: dict) -> float:
    return max(abs(x["p_fake"] - y["p_fake"]) for x, y in zip(a["heads"], b["heads"]))


# ------------------------------------------------------------------ 1. serve uploads


def make_store(preset: str, tmp: Path, n_store: int):
    """A store of ``n_store`` sample images (fp32, their captions) and a logistic head: (store, head, uploads)."""
    import item
    from item.featurize import FeaturizeConfig, featurize_store
    from item.featurize.inputs.discover import InputRow

    rows = samples()
    real = [r for r in rows if r["label"] == "real"]
    fake = [r for r in rows if r["label"] == "fake"]
    half = max(1, n_store // 2)
    stored = [x for pair in zip(real[:half], fake[:half]) for x in pair]
    uploads = [x for pair in zip(real[half:], fake[half:]) for x in pair]
    store = tmp / f"store-{preset}"
    t = time.perf_counter()
    featurize_store([InputRow(path=r["abs"], label=r["label"], generator=r["generator"],
                              split="train" if k < len(stored) // 2 else "val", caption=r["caption"], origin="bench")
                     for k, r in enumerate(stored)], store, models=preset,
                    config=FeaturizeConfig(workers=0, device="cpu"))
    log(f"[{preset}] store of {len(stored)} images in {time.perf_counter() - t:.1f} s (fp32)")
    head_dir = tmp / f"head-{preset}"
    item.train_head(store, kind="logistic", train_split="train", val_split="val").save(head_dir)
    return store, head_dir, uploads


def service_for(store, head_dir, precision: str, *, warm_up: bool = True):
    from item.serve.service import ServeConfig, Service

    t = time.perf_counter()
    service = Service(ServeConfig(store=str(store), heads=(str(head_dir),), device="cpu", precision=precision,
                                  warm_up=warm_up))
    return service, round(time.perf_counter() - t, 3)


def timed_upload(service, data: bytes, caption, timer: StageTimer):
    """(seconds per stage incl. total and other, the view, the ImageRecord) of one predict_upload."""
    kept = {}
    models = service.models
    plain = models.featurize

    def featurize(paths, captions=None):
        recs = plain(paths, captions)
        kept["record"] = recs[0]
        return recs

    timer.wrap_models(models.models)
    timer.wrap(service, "_verdicts", "head")
    timer.wrap(service, "_lookups", "neighbours")
    models.featurize = featurize
    try:
        with decode_timed(timer):
            t = time.perf_counter()
            view = service.predict_upload(data, caption=caption)
            total = time.perf_counter() - t
    finally:
        del models.featurize
        timer.restore()
    stages = timer.take()
    stages["total"] = round(total, 4)
    stages["other"] = round(total - sum(v for k, v in stages.items() if k != "total"), 4)
    return stages, view, kept["record"]


def bench_serve(preset: str, store, head_dir, uploads, reps: int) -> dict:
    timer = StageTimer()
    services, loads = {}, {}
    for p in PRECISIONS:
        services[p], loads[p] = service_for(store, head_dir, p)
        log(f"[{preset}] serve {p}: loaded with warm-up in {loads[p]:.1f} s "
            f"(warm-up {services[p].models.warm_up_seconds:.1f} s)")
    runs = {(p, mode): [] for p in PRECISIONS for mode in ("with_caption", "no_caption")}
    agree = {(p, mode): [] for p in PRECISIONS for mode in ("with_caption", "no_caption")}
    try:
        for rep in range(reps):
            r = uploads[rep % len(uploads)]
            data = Path(r["abs"]).read_bytes()
            for mode, caption in (("with_caption", r["caption"]), ("no_caption", None)):
                ref = None
                for p in PRECISIONS:  # alternated: fp32, bf16, fp32, bf16, ...
                    services[p].models.text_cache.clear()  # every upload pays its texts (lever text_cache)
                    stages, view, rec = timed_upload(services[p], data, caption, timer)
                    runs[(p, mode)].append(stages)
                    if p == "fp32":
                        ref = (view, rec)
                    else:
                        agree[(p, mode)].append({**record_agreement(ref[1], rec), "dp_fake": verdict_delta(ref[0], view)})
                    log(f"[{preset}] serve {p} {mode} {r['path']}: {stages['total']:.2f} s "
                        f"({', '.join(f'{k} {v:.2f}' for k, v in stages.items() if k not in ('total',))}) "
                        f"load {load_average()}")
    finally:
        for s in services.values():
            s.close()
    rows = []
    for (p, mode), stage_runs in runs.items():
        rows.append({"part": "serve", "preset": preset, "precision": p, "mode": mode, "reps": len(stage_runs),
                     "service_load_seconds": loads[p], "warm_up_seconds": services[p].models.warm_up_seconds,
                     "median": stage_medians(stage_runs),
                     "runs": stage_runs, "agreement": summarise_agreement(agree[(p, mode)]) if p != "fp32" else "baseline"})
    return {"rows": rows}


# ------------------------------------------------------------------ 2. predict


def bench_predict(preset: str, head_dir, uploads, reps: int) -> list[dict]:
    import item.classify.predict as predict_module
    import item.featurize as featurize_front
    from item.classify.predict import predict_files

    rows = []
    results = {p: [] for p in PRECISIONS}
    outs = {p: [] for p in PRECISIONS}
    plain_load = featurize_front.load_models
    for rep in range(reps):
        r = uploads[rep % len(uploads)]
        for p in PRECISIONS:
            timer = StageTimer()

            def load_models(spec, device="auto", precision=None, _timer=timer):
                t = time.perf_counter()
                loaded = plain_load(spec, device, precision)
                _timer.seconds["load"] += time.perf_counter() - t
                _timer.wrap_models(loaded)
                return loaded

            timer.wrap(predict_module, "load_head", "head")
            timer.wrap(predict_module, "record_features", "head")
            featurize_front.load_models = load_models
            try:
                with decode_timed(timer):
                    t = time.perf_counter()
                    res = predict_files([r["abs"]], head_dir, device="cpu", precision=p,
                                        captions={r["abs"]: r["caption"]})
                    total = time.perf_counter() - t
            finally:
                featurize_front.load_models = plain_load
                timer.restore()
            stages = timer.take()
            stages["total"] = round(total, 4)
            stages["other"] = round(total - sum(v for k, v in stages.items() if k != "total"), 4)
            results[p].append(stages)
            outs[p].append(res["rows"][0])
            log(f"[{preset}] predict {p} {r['path']}: {total:.2f} s "
                f"({', '.join(f'{k} {v:.2f}' for k, v in stages.items() if k != 'total')}) load {load_average()}")
    for p in PRECISIONS:
        agreement = "baseline"
        if p != "fp32":
            pairs = list(zip(outs["fp32"], outs[p]))
            decisions = [a_o["grounded"] == b_o["grounded"] for a, b in pairs
                         for a_o, b_o in zip(a["objects"], b["objects"])]
            agreement = {"same_caption": round(float(np.mean([a["caption"] == b["caption"] for a, b in pairs])), 4),
                         "same_grounding": round(float(np.mean(decisions)), 4) if decisions else None,
                         "max_d_global_alignment": round(max(abs(a["global_alignment"] - b["global_alignment"])
                                                             for a, b in pairs), 6),
                         "max_dp_fake": round(max(abs(a["p_fake"] - b["p_fake"]) for a, b in pairs), 5)}
        rows.append({"part": "predict", "preset": preset, "precision": p, "mode": "with_caption",
                     "reps": len(results[p]),
                     "median": stage_medians(results[p]),
                     "runs": results[p], "agreement": agreement})
    return rows


# ------------------------------------------------------------------ 3. featurize images/s


def featurize_rows_for(n: int):
    from item.featurize.inputs.discover import InputRow

    rows = samples()
    return [InputRow(path=r["abs"], label=r["label"], generator=r["generator"], split="", caption=r["caption"],
                     origin="bench") for r in rows[:n]]


def caption_seconds(models, rows, batch: int = 16):
    """Seconds BLIP takes to caption ``rows`` in batches (what the pipeline does without captions) and the captions."""
    from item.featurize.inputs.decode import decode_image

    if models.captioner is None:
        return 0.0, []
    pixels = [models.captioner.prepare(decode_image(r.path).image) for r in rows]
    t = time.perf_counter()
    caps = []
    for s in range(0, len(pixels), batch):
        caps += models.captioner.caption_prepared(pixels[s:s + batch])
    return time.perf_counter() - t, caps


def run_featurize(models, rows, tmp: Path, name: str, workers: int = -1) -> float:
    """Seconds of featurize_store of ``rows`` into a fresh store (hashing, decode workers, batching, shards)."""
    import shutil

    from item.featurize import FeaturizeConfig, featurize_store

    store = tmp / name
    shutil.rmtree(store, ignore_errors=True)
    t = time.perf_counter()
    featurize_store(rows, store, models=models, config=FeaturizeConfig(device="cpu", workers=workers))
    return time.perf_counter() - t


def bench_featurize(preset: str, n: int, reps: int, tmp: Path) -> list[dict]:
    from item.featurize import load_models, resolve_models
    from item.featurize.run.local import featurize_images

    spec = resolve_models(preset)
    rows = featurize_rows_for(n)
    loaded = {p: load_models(spec, "cpu", p) for p in PRECISIONS}
    seconds = {p: [] for p in PRECISIONS}
    caps = {p: [] for p in PRECISIONS}
    for rep in range(reps):
        for p in PRECISIONS:
            s = run_featurize(loaded[p], rows, tmp, f"feat-{preset}-{p}")
            c, captions = caption_seconds(loaded[p], rows)
            seconds[p].append(round(s + c, 3))
            caps[p] = captions
            log(f"[{preset}] featurize {p}: {n} images in {s:.1f} s + captioning {c:.1f} s = "
                f"{n / (s + c):.4f} images/s, load {load_average()}")
    # agreement of the stored rows: the same images featurized in each precision, in memory (same code path)
    recs = {p: featurize_images([r.path for r in rows], models=loaded[p], captions=[r.caption for r in rows])
            for p in PRECISIONS}
    out = []
    for p in PRECISIONS:
        agreement = "baseline"
        if p != "fp32":
            items = [record_agreement(a, b) for a, b in zip(recs["fp32"], recs[p])]
            agreement = summarise_agreement(items)
            agreement["same_caption"] = round(float(np.mean([a == b for a, b in zip(caps["fp32"], caps[p])])), 4) \
                if caps[p] else None
        med = median(seconds[p])
        out.append({"part": "featurize", "preset": preset, "precision": p, "mode": "captions by BLIP, timed beside",
                    "n_images": n, "reps": len(seconds[p]), "seconds": seconds[p],
                    "images_per_second": round(n / med, 4) if med else None, "agreement": agreement})
    return out


# ------------------------------------------------------------------ 4. levers


def _ab(label_a, fn_a, label_b, fn_b, reps):
    """Each once untimed (first-call costs), then alternated reps times: ({label: [seconds]}, last outputs)."""
    times, outs = {label_a: [], label_b: []}, {}
    fn_a(), fn_b()
    for _ in range(reps):
        for label, fn in ((label_a, fn_a), (label_b, fn_b)):
            t = time.perf_counter()
            outs[label] = fn()
            times[label].append(round(time.perf_counter() - t, 4))
    return times, outs


def _lever_row(lever, preset, what, times, base, other, agreement, **extra):
    b, o = median(times[base]), median(times[other])
    return {"part": "lever", "lever": lever, "preset": preset, "what": what, "baseline": base, "setting": other,
            "median_baseline": b, "median_setting": o, "ratio": round(o / b, 4) if b else None,
            "runs": times, "agreement": agreement, **extra}


def lever_threads(preset, loaded, rows, reps, tmp):
    import torch

    from item.hardware import usable_cores

    cores = usable_cores()
    if cores < 2:
        return {"part": "lever", "lever": "threads", "preset": preset, "skipped": "one core: nothing to leave"}
    before = torch.get_num_threads()

    def run(threads):
        def fn():
            torch.set_num_threads(threads)
            try:
                return run_featurize(loaded, rows, tmp, f"threads-{preset}-{threads}", workers=1)
            finally:
                torch.set_num_threads(before)
        return fn

    times, _ = _ab(f"{cores} threads + 1 decode worker", run(cores), f"{cores - 1} threads + 1 decode worker",
                   run(cores - 1), reps)
    keys = list(times)
    return _lever_row("threads", preset, f"featurize {len(rows)} images (captions given), one decode worker",
                      times, keys[0], keys[1], "not compared (the same ops; the thread count may change the order "
                      "of float sums only)")


def lever_sdpa(preset, loaded, reps):
    import torch

    from PIL import Image

    rows = samples()
    images = [Image.open(r["abs"]).convert("RGB") for r in rows[:2]]
    texts = [r["caption"] for r in rows[:8]]
    clip = loaded.clip
    pixels = torch.stack([clip.preprocess(im) for im in images])

    def run(enabled):
        def fn():
            torch.backends.mha.set_fastpath_enabled(enabled)
            try:
                return clip.encode_images(pixels), clip.encode_texts(texts)[0]
            finally:
                torch.backends.mha.set_fastpath_enabled(True)
        return fn

    times, outs = _ab("fast path off (eager attention)", run(False), "fast path on (SDPA kernels)", run(True), reps)
    a, b = outs["fast path off (eager attention)"], outs["fast path on (SDPA kernels)"]
    cos = float(min((a[0] * b[0]).sum(1).min(), (a[1] * b[1]).sum(1).min()))
    return _lever_row("sdpa", preset, "CLIP: 2 images and 8 captions encoded", times, "fast path off (eager attention)",
                      "fast path on (SDPA kernels)", {"min_cosine": round(cos, 6)},
                      note="BLIP and the grounders: transformers 5.x has no SDPA for them (_supports_sdpa False)")


def lever_channels_last(preset, loaded, reps):
    import torch

    from PIL import Image

    rows = samples()
    r = rows[0]
    image = Image.open(r["abs"]).convert("RGB")
    from item.featurize.text.nouns import extract_nouns

    nouns = extract_nouns(r["caption"], max_objects=8) or ["object"]
    g = loaded.grounder
    clip = loaded.clip
    prepared = [g.prepare(image)]
    pixels = clip.preprocess(image)[None]

    def run(channels_last):
        fmt = torch.channels_last if channels_last else torch.contiguous_format

        def fn():
            g.model.to(memory_format=fmt)
            clip.model.visual.to(memory_format=fmt)
            try:
                px = pixels.contiguous(memory_format=fmt)
                return g.ground_prepared(prepared, [nouns]), clip.encode_images(px)
            finally:
                g.model.to(memory_format=torch.contiguous_format)
                clip.model.visual.to(memory_format=torch.contiguous_format)
        return fn

    times, outs = _ab("contiguous", run(False), "channels_last", run(True), reps)
    (ba, ea), (bb, eb) = outs["contiguous"], outs["channels_last"]
    same = [(x is None and y is None) or (x is not None and y is not None and
                                          _iou((x.x0, x.y0, x.x1, x.y1), (y.x0, y.y0, y.x1, y.y1)) >= IOU_SAME)
            for x, y in zip(ba[0], bb[0])]
    return _lever_row("channels_last", preset, f"grounder ({len(nouns)} nouns) + CLIP image tower, one image", times,
                      "contiguous", "channels_last",
                      {"same_grounding": round(float(np.mean(same)), 4) if same else None,
                       "min_cosine": round(float((ea * eb).sum(1).min()), 6)})


def lever_warm_up(preset, store, head_dir, uploads, reps):
    """First upload after start without warm-up, with warm-up, and a steady upload (the same service's second)."""
    out = {"no warm-up: first upload": [], "warm-up: first upload": [], "steady upload": []}
    for rep in range(reps):
        r = uploads[rep % len(uploads)]
        data = Path(r["abs"]).read_bytes()
        for warm in (False, True):
            service, _ = service_for(store, head_dir, "fp32", warm_up=warm)
            try:
                t = time.perf_counter()
                service.predict_upload(data, caption=r["caption"])
                first = time.perf_counter() - t
                out["warm-up: first upload" if warm else "no warm-up: first upload"].append(round(first, 4))
                if warm:
                    service.models.text_cache.clear()
                    t = time.perf_counter()
                    service.predict_upload(data, caption=r["caption"])
                    out["steady upload"].append(round(time.perf_counter() - t, 4))
            finally:
                service.close()
        log(f"[{preset}] warm_up: {dict((k, v[-1]) for k, v in out.items() if v)}")
    row = _lever_row("warm_up", preset, "first upload (with caption) after the service is built", out,
                     "no warm-up: first upload", "warm-up: first upload", "same bits (tests/test_cpu_precision.py)")
    row["median_steady"] = median(out["steady upload"])
    return row


def lever_text_cache(preset, store, head_dir, uploads, reps):
    service, _ = service_for(store, head_dir, "fp32")
    timer = StageTimer()
    out = {"cache cleared": [], "cache kept": []}
    text = {"cache cleared": [], "cache kept": []}
    try:
        for rep in range(reps):
            r = uploads[rep % len(uploads)]
            data = Path(r["abs"]).read_bytes()
            for label in out:
                if label == "cache cleared":
                    service.models.text_cache.clear()
                else:  # the caption and its nouns seen before (another analyst sent the same caption)
                    service.models.text_cache.clear()
                    service.predict_upload(data, caption=r["caption"])
                stages, _, _ = timed_upload(service, data, r["caption"], timer)
                out[label].append(stages["total"])
                text[label].append(stages.get("clip_text", 0.0))
    finally:
        service.close()
    return _lever_row("text_cache", preset, "upload with a caption the server has encoded before", out,
                      "cache cleared", "cache kept", "same bits (a hit returns the float16 values every encode "
                      "goes through)", clip_text_median={k: median(v) for k, v in text.items()})


def lever_compile(preset, loaded, reps):
    import torch

    from PIL import Image

    rows = samples()
    image = Image.open(rows[0]["abs"]).convert("RGB")
    clip = loaded.clip
    pixels = clip.preprocess(image)[None]
    eager = clip.model.visual
    try:
        t = time.perf_counter()
        compiled = torch.compile(eager)
        clip.model.visual = compiled
        first = clip.encode_images(pixels)
        compile_s = time.perf_counter() - t
    except Exception as exc:  # a missing compiler, an unsupported op: reported, not fatal
        clip.model.visual = eager
        return {"part": "lever", "lever": "compile", "preset": preset,
                "skipped": f"torch.compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}

    def run(module):
        def fn():
            clip.model.visual = module
            try:
                return clip.encode_images(pixels)
            finally:
                clip.model.visual = eager
        return fn

    times, outs = _ab("eager", run(eager), "torch.compile", run(compiled), reps)
    cos = float((outs["eager"] * outs["torch.compile"]).sum(1).min())
    return _lever_row("compile", preset, "CLIP image tower, one image (after compiling)", times, "eager",
                      "torch.compile", {"min_cosine": round(cos, 6), "first_call_cosine": round(float(
                          (first * outs["eager"]).sum(1).min()), 6)}, compile_seconds=round(compile_s, 1))


def lever_static_cache(preset, loaded, reps):
    from PIL import Image

    cap = loaded.captioner
    if cap is None:
        return {"part": "lever", "lever": "static_cache", "preset": preset, "skipped": "no captioner"}
    rows = samples()
    pixels = [cap.prepare(Image.open(rows[0]["abs"]).convert("RGB"))]
    plain = dict(cap.settings)

    def run(static):
        def fn():
            if static:
                cap.settings = {k: {**v, "cache_implementation": "static"} for k, v in plain.items()}
            try:
                return cap.caption_prepared(pixels)
            finally:
                cap.settings = plain
        return fn

    try:
        times, outs = _ab("dynamic cache", run(False), "static cache", run(True), reps)
    except Exception as exc:
        return {"part": "lever", "lever": "static_cache", "preset": preset,
                "skipped": f"generate(cache_implementation='static') failed: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200]}"}
    return _lever_row("static_cache", preset, "BLIP caption of one image (authors' 3 beams)", times, "dynamic cache",
                      "static cache", {"same_caption": outs["dynamic cache"] == outs["static cache"]})


def bench_levers(preset, levers, store, head_dir, uploads, reps, n_featurize, tmp) -> list[dict]:
    from item.featurize import load_models, resolve_models

    loaded = load_models(resolve_models(preset), "cpu")
    rows = featurize_rows_for(n_featurize)
    out = []
    for lever in levers:
        log(f"[{preset}] lever {lever} ...")
        if lever == "threads":
            row = lever_threads(preset, loaded, rows, reps, tmp)
        elif lever == "sdpa":
            row = lever_sdpa(preset, loaded, reps)
        elif lever == "channels_last":
            row = lever_channels_last(preset, loaded, reps)
        elif lever == "warm_up":
            row = lever_warm_up(preset, store, head_dir, uploads, reps)
        elif lever == "text_cache":
            row = lever_text_cache(preset, store, head_dir, uploads, reps)
        elif lever == "compile":
            row = lever_compile(preset, loaded, reps)
        elif lever == "static_cache":
            row = lever_static_cache(preset, loaded, reps)
        else:
            raise SystemExit(f"unknown lever {lever!r}; valid: {', '.join(LEVERS + OPT_IN_LEVERS)}")
        log(f"[{preset}] lever {lever}: " + (row.get("skipped") or
                                              f"{row['baseline']} {row['median_baseline']} s, {row['setting']} "
                                              f"{row['median_setting']} s (ratio {row['ratio']})"))
        out.append(row)
    return out


# ------------------------------------------------------------------ report


def _agree_text(a) -> str:
    if a == "baseline" or not a:
        return "baseline" if a == "baseline" else "-"
    if isinstance(a, str):
        return a
    return ", ".join(f"{k} {v}" for k, v in a.items() if v is not None)


def summary_md(doc: dict) -> str:
    m = doc["machine"]
    lines = [BANNER, "", f"Machine: {m.get('cpu', '?')}, {m.get('usable_cores')} usable cores, torch "
             f"{m.get('torch')} ({m.get('cpu_capability')}), native bfloat16: {m.get('native_bfloat16')}; load "
             f"average at start {doc['load_start']}, at end {doc['load_end']}; command `{doc['command']}`; "
             f"{'QUICK (smoke: not a measurement)' if doc['quick'] else 'full run'}.", ""]
    serve = [r for r in doc["results"] if r["part"] in ("serve", "predict")]
    if serve:
        lines += ["| part | preset | precision | mode | reps | " + " | ".join(STAGES) + " | total s | vs fp32 | "
                  "agreement vs fp32 |", "|" + "---|" * (len(STAGES) + 8)]
        base = {(r["part"], r["preset"], r["mode"]): r["median"]["total"] for r in serve if r["precision"] == "fp32"}
        for r in serve:
            b = base.get((r["part"], r["preset"], r["mode"]))
            ratio = f"{r['median']['total'] / b:.2f}x" if b else "-"
            lines.append(f"| {r['part']} | {r['preset']} | {r['precision']} | {r['mode']} | {r['reps']} | "
                         + " | ".join("-" if r["median"].get(k) is None else f"{r['median'][k]:.2f}" for k in STAGES)
                         + f" | **{r['median']['total']:.2f}** | {ratio} | {_agree_text(r['agreement'])} |")
        lines.append("")
    feat = [r for r in doc["results"] if r["part"] == "featurize"]
    if feat:
        lines += ["| featurize | precision | images | reps | images/s | vs fp32 | agreement vs fp32 |",
                  "|---|---|---|---|---|---|---|"]
        base = {r["preset"]: r["images_per_second"] for r in feat if r["precision"] == "fp32"}
        for r in feat:
            b = base.get(r["preset"])
            lines.append(f"| {r['preset']} | {r['precision']} | {r['n_images']} | {r['reps']} | "
                         f"**{r['images_per_second']}** | "
                         f"{(r['images_per_second'] / b) if b and r['images_per_second'] else 0:.2f}x | "
                         f"{_agree_text(r['agreement'])} |")
        lines.append("")
    levers = [r for r in doc["results"] if r["part"] == "lever"]
    if levers:
        lines += ["| lever | preset | what | baseline s | setting s | ratio | agreement |", "|---|---|---|---|---|---|---|"]
        for r in levers:
            if r.get("skipped"):
                lines.append(f"| {r['lever']} | {r['preset']} | skipped: {r['skipped']} | - | - | - | - |")
                continue
            lines.append(f"| {r['lever']} | {r['preset']} | {r['what']} | {r['baseline']}: {r['median_baseline']} | "
                         f"{r['setting']}: {r['median_setting']} | {r['ratio']} | {_agree_text(r['agreement'])} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    global LOG_FILE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="default-random,fast-random", help="comma list of random presets")
    ap.add_argument("--parts", default="serve,predict,featurize,levers", help="comma list of parts to run")
    ap.add_argument("--levers", default=",".join(LEVERS),
                    help=f"comma list of levers ({', '.join(LEVERS)}; opt-in: {', '.join(OPT_IN_LEVERS)})")
    ap.add_argument("--reps", type=int, default=3, help="uploads per setting (different sample images)")
    ap.add_argument("--predict-reps", type=int, default=2, help="predict runs per precision (each loads the models)")
    ap.add_argument("--featurize-images", type=int, default=4, help="images per featurize run")
    ap.add_argument("--featurize-reps", type=int, default=2)
    ap.add_argument("--lever-reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 repetition, 1 image: the script end to end, no measurement")
    ap.add_argument("--out-dir", default="", help="folder for cpu_precision.json, summary.md and log.txt")
    args = ap.parse_args(argv)
    if args.quick:
        args.reps = args.predict_reps = args.featurize_reps = 1
        args.lever_reps, args.featurize_images = 1, 1
    out_dir = Path(args.out_dir) if args.out_dir else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        LOG_FILE = open(out_dir / "log.txt", "a")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    levers = [x.strip() for x in args.levers.split(",") if x.strip()]
    log(BANNER)
    start = machine()
    log(f"machine: {start}")
    doc = {"quick": args.quick, "load_start": start["load_average"], "load_end": None,
           "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:]))}
    results: list[dict] = []

    def save():
        doc["load_end"] = load_average()
        if out_dir is not None:
            write_result(out_dir / "cpu_precision.json", "cpu_precision", BANNER, results, device="cpu",
                         quick=args.quick, load_start=doc["load_start"], load_end=doc["load_end"],
                         machine_extra=start)
            (out_dir / "summary.md").write_text(summary_md({**doc, "machine": start, "results": results}) + "\n")

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="item-cpu-precision-") as tmp_name:
        tmp = Path(tmp_name)
        for preset in [p.strip() for p in args.presets.split(",") if p.strip()]:
            store = head = uploads = None
            if {"serve", "predict", "levers"} & set(parts):
                store, head, uploads = make_store(preset, tmp, 4)
            if "serve" in parts:
                results.extend(bench_serve(preset, store, head, uploads, args.reps)["rows"])
                save()
            if "predict" in parts:
                results.extend(bench_predict(preset, head, uploads, args.predict_reps))
                save()
            if "featurize" in parts:
                results.extend(bench_featurize(preset, args.featurize_images, args.featurize_reps, tmp))
                save()
            if "levers" in parts and levers:
                results.extend(bench_levers(preset, levers, store, head, uploads, args.lever_reps,
                                            max(1, args.featurize_images // 2), tmp))
                save()
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    log(f"done in {doc['seconds']} s; load average now {load_average()}")
    save()
    print(summary_md({**doc, "machine": start, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
