"""The featurize run: inputs -> decode -> caption -> nouns -> ground -> crops -> CLIP -> store.

Work is done stage by stage on batches of images (every model sees a whole batch at once), with
decoding and the CLIP preprocessing of whole images in DataLoader worker processes. Text
embeddings are cached by exact string for the whole run. Rows go to the store's writer, which
commits them shard by shard, so a killed run resumes at its last committed shard.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import numpy as np

from item.errors import InputError
from item.faults import fault
from item.featurize.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image, file_id
from item.featurize.inputs import InputRow
from item.featurize.models import ModelSpec
from item.featurize.nouns import extract_nouns
from item.featurize.perturb import Perturbation, parse_perturb
from item.store.writer import AliasRecord, ImageRecord, ObjectRecord, storable_text

STAGES = ("decode", "caption", "ground", "clip_image", "clip_text", "write")
NOUNS_VERSION = "rules-1"  # bump when extract_nouns changes its output
#: Skip reason of an image whose embeddings or misalignment came out NaN or infinite (a model
#: overflow, e.g. in fp16): the image is skipped with this reason and the run goes on.
NON_FINITE = "non-finite"


@dataclass(frozen=True)
class FeaturizeConfig:
    """How a run works (not what it computes, apart from max_objects, perturb and recipe)."""

    batch_size: int = 0  # images per batch (decoded together, one shard boundary at most); 0 = auto: 64 on CUDA, 16 on CPU
    max_objects: int = 8
    workers: int = -1  # decoding processes; -1 = auto (cores - 1, at most 4), 0 = in the main process
    shard_size: int = 1000  # image rows per shard: at most this many rows are redone after a kill
    flush_seconds: float = 600.0  # also close a shard after this long, whatever its size
    perturb: str = ""
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    device: str = "auto"
    recipe: str = "hierarchical"
    clip_batch_size: int = 256  # images or texts per CLIP forward
    # Images per captioner generate(); the image batch caps it. BLIP on an H200: 21.7 ms an image at 16,
    # 5.7 ms at 64 (BENCHMARKS.md).
    caption_batch_size: int = 64
    # Images per Grounding DINO forward; 0 = auto: 4 on CUDA, 1 on CPU. It pads a batch to its largest
    # image, and batching gains little: on an H200 27 ms an image at batch 4, 34 ms at 16 (BENCHMARKS.md).
    ground_batch_size: int = 0
    # Run the CLIP stage and the writes of batch i in a background thread while batch i+1 is captioned and
    # grounded (a bounded pipeline: at most two batches in flight). None = auto: on CUDA only (on the CPU
    # the two threads would share the same cores). The stored bits are the same either way.
    overlap: bool | None = None

    def resolved_batch_size(self, device: str) -> int:
        return self.batch_size or (64 if str(device).startswith("cuda") else 16)

    def resolved_overlap(self, device: str) -> bool:
        return str(device).startswith("cuda") if self.overlap is None else bool(self.overlap)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    if device != "cpu" and not device.startswith("cuda"):
        raise InputError(f"unknown device {device!r}; use auto, cpu or cuda[:N]")
    return device


@dataclass
class Models:
    """The loaded models of a run; captioner / grounder are None when switched off."""

    spec: ModelSpec
    clip: object
    captioner: object | None
    grounder: object | None
    device: str


def load_models(spec: ModelSpec, device: str = "auto") -> Models:
    from item.featurize.captioner import load_captioner
    from item.featurize.encoder import load_clip
    from item.featurize.grounder import load_grounder

    device = resolve_device(device)
    clip = load_clip(spec.clip_model, spec.clip_pretrained, device)
    captioner = None if spec.captioner == "none" else load_captioner(spec.captioner, device)
    grounder = None if spec.grounder == "none" else load_grounder(
        spec.grounder, device, box_threshold=spec.box_threshold, text_threshold=spec.text_threshold,
        ground_size=spec.ground_size or None)
    return Models(spec, clip, captioner, grounder, device)


def any_random_weights(models: Models) -> bool:
    """True when any loaded model has random weights (a preset's, or a local copy of random ones)."""
    parts = [models.clip, models.captioner, models.grounder]
    return bool(models.spec.random_weights or any(p is not None and p.info.get("random_weights") for p in parts))


def compat_for(models: Models, config: FeaturizeConfig) -> dict:
    """What every row of one store shares (see item.store.schema.COMPAT_KEYS)."""
    from item.misalignment import feature_size

    clip = models.clip.info
    return {
        "clip_model": clip["model"],
        "clip_pretrained": clip["pretrained"],
        "embed_dim": int(clip["embed_dim"]),
        "preprocess_hash": clip["preprocess_hash"],
        "captioner": models.spec.captioner,
        "grounder": models.spec.grounder,
        "recipe": config.recipe,
        "misalignment_dim": feature_size(config.recipe, int(clip["embed_dim"])),
        "random_weights": any_random_weights(models),
        "perturbation": str(parse_perturb(config.perturb or None)),
        "max_objects": int(config.max_objects),
        "ground_size": int(models.grounder.ground_size) if models.grounder else 0,
    }


def models_info(models: Models) -> dict:
    return {
        "clip": models.clip.info,
        "captioner": models.captioner.info if models.captioner else {"id": "none"},
        "grounder": (dict(models.grounder.info, box_threshold=models.grounder.box_threshold,
                          text_threshold=models.grounder.text_threshold) if models.grounder else {"id": "none"}),
        "nouns": {"extractor": NOUNS_VERSION},
        "random_weights": any_random_weights(models),
    }


# -- decoding in worker processes ---------------------------------------------------------------
@dataclass
class Item:
    """One input on its way through the pipeline."""

    id: str
    row: InputRow
    image: object = None  # PIL RGB after perturbation
    pixels: object = None  # (3, H, W) CLIP input of the whole image
    width: int = 0
    height: int = 0
    format: str = ""
    reason: str = ""  # skip reason; '' when decoded
    caption_pixels: object = None  # (3, h, w) captioner input, when the row has no caption
    ground_input: object = None  # grounder input (GroundImage), when a grounder runs


class _DecodeDataset:
    """Decoding and every model's image preparation, in the worker processes (all parts are picklable)."""

    def __init__(self, items: list[Item], preprocess, perturbation: Perturbation, max_pixels,
                 caption_prep=None, ground_prep=None):
        self.items, self.preprocess, self.perturbation, self.max_pixels = items, preprocess, perturbation, max_pixels
        self.caption_prep, self.ground_prep = caption_prep, ground_prep

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        it = self.items[i]
        out = Item(it.id, it.row)
        try:
            dec = decode_image(it.row.path, max_pixels=self.max_pixels)
        except DecodeError as exc:
            out.reason = exc.reason
            return out
        img = self.perturbation.apply(dec.image) if self.perturbation.steps else dec.image
        out.image, out.width, out.height, out.format = img, img.width, img.height, dec.format
        out.pixels = self.preprocess(img)
        if self.caption_prep is not None and not it.row.caption:
            out.caption_pixels = self.caption_prep(img)
        if self.ground_prep is not None:
            out.ground_input = self.ground_prep(img)
        return out


def _as_list(batch):
    return batch


def iter_decoded(items: list[Item], models: Models, config: FeaturizeConfig):
    """Yield lists of decoded Items (batch_size each), decoding ahead in worker processes."""
    import torch

    workers = config.workers
    if workers < 0:
        workers = min(4, max(0, (os.cpu_count() or 1) - 1))
    ds = _DecodeDataset(items, models.clip.preprocess, parse_perturb(config.perturb or None), config.max_pixels,
                        caption_prep=models.captioner.prepare if models.captioner else None,
                        ground_prep=models.grounder.prepare if models.grounder else None)
    # Prepared grounder inputs are large (800x1066 float32: 10 MB an image), so fewer batches wait ahead
    # when they are made.
    prefetch = 2 if models.grounder is not None else 4
    loader = torch.utils.data.DataLoader(ds, batch_size=config.resolved_batch_size(models.device), shuffle=False,
                                         num_workers=workers, collate_fn=_as_list,
                                         prefetch_factor=prefetch if workers else None, persistent_workers=False)
    yield from loader


# -- the model stages ---------------------------------------------------------------------------
class Featurizer:
    """Turns batches of decoded Items into ImageRecords. Keeps the run's text cache and stage timers."""

    def __init__(self, models: Models, config: FeaturizeConfig):
        from item.misalignment import feature_size

        self.models, self.config = models, config
        self.text_cache: dict[str, tuple[np.ndarray, bool]] = {}
        self.text_hits = 0
        self.text_misses = 0
        self.seconds: Counter = Counter()
        self.embed_dim = models.clip.embed_dim
        self.misalignment_dim = feature_size(config.recipe, self.embed_dim)
        self.perturbation = str(parse_perturb(config.perturb or None))

    def _timed(self, stage: str, fn, *args):
        t = time.perf_counter()
        try:
            return fn(*args)
        finally:
            if str(self.models.device).startswith("cuda"):
                import torch

                torch.cuda.synchronize()
            self.seconds[stage] += time.perf_counter() - t

    def texts(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of texts through the run's cache: ((n, d) float32, (n,) bool truncated)."""
        todo = list(dict.fromkeys(t for t in texts if t not in self.text_cache))
        self.text_misses += len(todo)
        self.text_hits += len(texts) - len(todo)
        bs = self.config.clip_batch_size
        for s in range(0, len(todo), bs):
            chunk = todo[s:s + bs]
            emb, trunc = self._timed("clip_text", self.models.clip.encode_texts, chunk)
            # Cached as float16, the precision the store keeps: half the memory, and a resumed run that
            # seeds its cache from the store (seed_text_cache) uses exactly the values this run used.
            for t, e, tr in zip(chunk, emb.astype(np.float16), trunc):
                self.text_cache[t] = (e, bool(tr))
        if not texts:
            return np.zeros((0, self.embed_dim), np.float32), np.zeros(0, bool)
        return (np.stack([self.text_cache[t][0] for t in texts]).astype(np.float32),
                np.array([self.text_cache[t][1] for t in texts], bool))

    def seed_text_cache(self, texts, emb: np.ndarray, truncated) -> None:
        """Put already-encoded texts in the cache: (n,) str, (n, d) float16/32, (n,) bool."""
        emb = np.asarray(emb).astype(np.float16)
        for t, e, tr in zip(texts, emb, truncated):
            self.text_cache.setdefault(str(t), (e, bool(tr)))

    def images(self, pixels: list) -> np.ndarray:
        import torch

        out = []
        bs = self.config.clip_batch_size
        cuda = str(self.models.device).startswith("cuda")
        for s in range(0, len(pixels), bs):
            chunk = torch.stack(pixels[s:s + bs])
            if cuda:  # page-locked, so encode_images' non-blocking copy is asynchronous
                chunk = chunk.pin_memory()
            out.append(self._timed("clip_image", self.models.clip.encode_images, chunk))
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

    def process(self, batch: list[Item]) -> list[ImageRecord]:
        """Featurize one batch. Skipped Items become rows with status 'skipped' and their reason."""
        return self.back(self.front(batch))

    def _captions(self, need: list[Item]) -> list[str]:
        captioner = self.models.captioner
        out: list[str] = []
        bs = max(1, int(self.config.caption_batch_size))
        for s in range(0, len(need), bs):
            part = need[s:s + bs]
            pixels = [it.caption_pixels if it.caption_pixels is not None else captioner.prepare(it.image)
                      for it in part]
            out.extend(self._timed("caption", captioner.caption_prepared, pixels))
        return out

    def front(self, batch: list[Item]) -> dict:
        """Captions, nouns and boxes of one batch (the captioner's and grounder's forwards)."""
        good = [it for it in batch if not it.reason]
        # captions: given ones as is, the captioner for the rest
        need = [it for it in good if not it.row.caption]
        if need and self.models.captioner is None:
            raise InputError(f"{need[0].row.path}: no caption given and --captioner none")
        generated = self._captions(need) if need else []
        caption_of = {id(it): (c, self.models.spec.captioner) for it, c in zip(need, generated)}
        captions, sources = [], []
        for it in good:
            c, src = caption_of.get(id(it), (it.row.caption, "given"))
            captions.append(c or "")
            sources.append(src)
        nouns = [extract_nouns(c, max_objects=self.config.max_objects) for c in captions]
        # grounding: one best box per noun, or None
        if self.models.grounder is not None and any(nouns):
            # Like-shaped images share a forward, so little of it is padding.
            with_nouns = sorted((i for i, n in enumerate(nouns) if n),
                                key=lambda i: (good[i].image.width / good[i].image.height, i))
            gbs = self.config.ground_batch_size or (4 if str(self.models.device).startswith("cuda") else 1)
            boxes = [[None] * len(n) for n in nouns]
            grounder = self.models.grounder
            for s in range(0, len(with_nouns), gbs):
                part = with_nouns[s:s + gbs]
                prepared = [good[i].ground_input if good[i].ground_input is not None else
                            grounder.prepare(good[i].image) for i in part]
                found = self._timed("ground", grounder.ground_prepared, prepared, [nouns[i] for i in part])
                for i, b in zip(part, found):
                    boxes[i] = list(b)
        else:
            boxes = [[None] * len(n) for n in nouns]
        return {"batch": batch, "good": good, "captions": captions, "sources": sources, "nouns": nouns,
                "boxes": boxes}

    def back(self, front: dict) -> list[ImageRecord]:
        """Crops, CLIP embeddings, misalignment and the records of a batch that went through `front`."""
        from item.misalignment import compute

        batch, good, captions, sources = front["batch"], front["good"], front["captions"], front["sources"]
        nouns, boxes = front["nouns"], front["boxes"]
        # CLIP: whole images and crops in one stream of batches
        pixels = [it.pixels for it in good]
        crop_owner = []
        t = time.perf_counter()
        for i, (it, bx) in enumerate(zip(good, boxes)):
            for j, b in enumerate(bx):
                if b is not None:
                    crop = it.image.crop((int(np.floor(b.x0)), int(np.floor(b.y0)),
                                          max(int(np.ceil(b.x1)), int(np.floor(b.x0)) + 1),
                                          max(int(np.ceil(b.y1)), int(np.floor(b.y0)) + 1)))
                    pixels.append(self.models.clip.preprocess(crop))
                    crop_owner.append((i, j))
        self.seconds["crop"] += time.perf_counter() - t
        img_emb = self.images(pixels)
        image_emb, crop_emb = img_emb[:len(good)], img_emb[len(good):]
        caption_emb, truncated = self.texts(captions)
        flat_nouns = [n for ns in nouns for n in ns]
        noun_emb, _ = self.texts(flat_nouns)
        # misalignment under the store's recipe
        crop_of = {(i, j): crop_emb[k] for k, (i, j) in enumerate(crop_owner)}
        obj_image = np.array([i for i, ns in enumerate(nouns) for _ in ns], np.int64)
        grounded = np.array([boxes[i][j] is not None for i, ns in enumerate(nouns) for j in range(len(ns))], bool)
        crops_full = np.zeros((len(flat_nouns), self.embed_dim), np.float32)
        k = 0
        for i, ns in enumerate(nouns):
            for j in range(len(ns)):
                if (i, j) in crop_of:
                    crops_full[k] = crop_of[(i, j)]
                k += 1
        # The store keeps embeddings as float16: compute the vector from what is stored, so that the
        # misalignment column equals the recipe recomputed from the store, bit for bit.
        def stored(x):
            return x.astype(np.float16).astype(np.float32)

        mis = compute(self.config.recipe, stored(image_emb), stored(caption_emb), stored(crops_full),
                      stored(noun_emb), obj_image, grounded)
        records = []
        k = 0
        by_item = {id(it): i for i, it in enumerate(good)}
        for it in batch:
            base = dict(id=it.id, path=it.row.path, label=it.row.label, generator=it.row.generator,
                        split=it.row.split, perturbation=self.perturbation)
            if it.reason:
                records.append(ImageRecord(**base, status="skipped", reason=it.reason))
                continue
            i = by_item[id(it)]
            objects = []
            for j, noun in enumerate(nouns[i]):
                b = boxes[i][j]
                objects.append(ObjectRecord(noun=noun, noun_emb=noun_emb[k],
                                            box=None if b is None else (b.x0, b.y0, b.x1, b.y1),
                                            score=0.0 if b is None else float(b.score),
                                            crop_emb=None if b is None else crop_of[(i, j)]))
                k += 1
            vectors = [image_emb[i], caption_emb[i], mis[i]] + [o.noun_emb for o in objects] + \
                [o.crop_emb for o in objects if o.crop_emb is not None]
            if not all(np.isfinite(v).all() for v in vectors):
                records.append(ImageRecord(**base, status="skipped", reason=NON_FINITE))
                continue
            records.append(ImageRecord(
                **base, caption=captions[i], caption_source=sources[i], caption_truncated=bool(truncated[i]),
                nouns=list(nouns[i]), width=it.width, height=it.height, format=it.format,
                image_emb=image_emb[i], caption_emb=caption_emb[i], misalignment=mis[i], objects=objects))
        return records


# -- the whole run ------------------------------------------------------------------------------
@dataclass
class RunSummary:
    """What a run did; also appended to the store manifest's ``runs``."""

    started: str = ""
    seconds: float = 0.0
    n_inputs: int = 0
    n_already_done: int = 0
    n_duplicates: int = 0
    n_written: int = 0
    n_skipped: int = 0
    skipped_by_reason: dict = field(default_factory=dict)
    skipped_examples: list = field(default_factory=list)  # (path, reason), the first few
    stage_seconds: dict = field(default_factory=dict)
    text_cache_hits: int = 0
    text_cache_misses: int = 0
    images_per_second: float = 0.0
    device: str = ""
    interrupted: bool = False

    @property
    def text_cache_hit_rate(self) -> float:
        total = self.text_cache_hits + self.text_cache_misses
        return self.text_cache_hits / total if total else 0.0

    def to_json(self) -> dict:
        d = asdict(self)
        d["text_cache_hit_rate"] = round(self.text_cache_hit_rate, 4)
        return d


def _unreadable_id(path: str) -> str:
    # A file that cannot be read has no content hash; its id is derived from its path instead so
    # that a resumed run does not retry it (the row says why it was skipped).
    return hashlib.sha256(b"unreadable:" + os.fsencode(path)).hexdigest()


def hash_inputs(rows: list[InputRow], progress: Callable[[int], None] | None = None,
                threads: int = 4) -> list[tuple[str, str]]:
    """(id, reason) per row: sha256 of the file's bytes, or a path-derived id and the read error."""

    def one(row: InputRow):
        try:
            return file_id(row.path), ""
        except DecodeError as exc:
            return _unreadable_id(row.path), exc.reason

    out = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for res in pool.map(one, rows):
            out.append(res)
            if progress:
                progress(1)
    return out


def plan(rows: list[InputRow], ids: list[tuple[str, str]], done: set[str], known_paths: set[str]):
    """Split inputs into Items to featurize (first path of each new content), aliases, and a count of
    rows whose content the store already holds. ``known_paths``: paths the store already records."""
    todo: list[Item] = []
    aliases: list[AliasRecord] = []
    seen: dict[str, str] = {}
    known = set(known_paths)
    n_done = 0
    for row, (fid, reason) in zip(rows, ids):
        if fid in done or fid in seen:
            n_done += fid in done
            stored = storable_text(row.path)  # the store keeps non-UTF-8 names escaped
            if stored not in known and row.path != seen.get(fid):
                aliases.append(AliasRecord(fid, row.path, row.label, row.generator, row.split))
                known.add(stored)
            continue
        seen[fid] = row.path
        todo.append(Item(fid, row, reason=reason))
    return todo, aliases, n_done


def seed_from_store(feat: Featurizer, root) -> None:
    """Fill the run's text cache with the captions and nouns the store already holds."""
    from item.store import StoreReader
    from item.store import schema

    with StoreReader(root) as reader:
        rows = reader.select()
        meta = reader.metadata([schema.CAPTION, schema.CAPTION_TRUNCATED])
        for chunk, emb in reader.iter_chunks(schema.CAPTION_EMB, rows, dtype=np.float16):
            feat.seed_text_cache(meta[schema.CAPTION][chunk], emb, meta[schema.CAPTION_TRUNCATED][chunk])
        for s in range(0, rows.size, 65536):
            objs = reader.objects(rows[s:s + 65536], columns=[schema.NOUN, schema.NOUN_EMB])
            feat.seed_text_cache(objs[schema.NOUN], objs[schema.NOUN_EMB], np.zeros(len(objs[schema.NOUN]), bool))


def _run_overlapped(batches, feat: Featurizer, write) -> None:
    """Batch i's `back` (crops, CLIP) runs in one background thread while the main thread decodes and
    runs batch i+1's `front` (captions, grounding) and writes batch i-1: a bounded pipeline, at most two
    batches in flight, results written in order. Every batch meets the same computation as without the
    overlap, so the stored bits are the same."""
    from concurrent.futures import ThreadPoolExecutor as _Pool

    pending = None
    with _Pool(max_workers=1, thread_name_prefix="item-clip") as pool:
        try:
            t_dec = time.perf_counter()
            for batch in batches:
                feat.seconds["decode"] += time.perf_counter() - t_dec
                front = feat.front(batch)
                future = pool.submit(feat.back, front)
                if pending is not None:
                    write(pending[0], pending[1].result())
                pending = (batch, future)
                t_dec = time.perf_counter()
            if pending is not None:
                write(pending[0], pending[1].result())
                pending = None
        finally:
            if pending is not None:
                pending[1].cancel()


def featurize_rows(rows: list[InputRow], writer, models: Models, config: FeaturizeConfig, *,
                   progress: Callable[[int], None] | None = None,
                   hash_progress: Callable[[int], None] | None = None,
                   after_batch: Callable[[int], None] | None = None) -> RunSummary:
    """Featurize ``rows`` into an open StoreWriter; rows whose content is already stored are skipped.

    ``after_batch(n_batches_done)`` is called after each batch has been handed to the writer (tests use
    it to interrupt a run).
    """
    from item.store.manifest import now

    summary = RunSummary(started=now(), n_inputs=len(rows), device=models.device)
    t0 = time.perf_counter()
    ids = hash_inputs(rows, hash_progress)
    todo, aliases, n_done = plan(rows, ids, writer.done_ids, writer.known_paths)
    summary.n_already_done = n_done
    summary.n_duplicates = len(aliases)
    feat = Featurizer(models, config)
    if writer.done_ids and todo:
        seed_from_store(feat, writer.root)
    reasons: Counter = Counter()
    last_flush = time.perf_counter()
    n_batches = 0
    # Shards end between batches only: a resumed run then re-forms exactly the batches of an
    # uninterrupted one, and with its text cache seeded from the store it computes the same bits.
    auto_flush, writer.auto_flush = writer.auto_flush, False

    def write(batch, records):
        nonlocal last_flush, n_batches
        fault("batch")
        t = time.perf_counter()
        for rec in records:
            writer.add(rec)
            if rec.status != "ok":
                reasons[rec.reason] += 1
                if len(summary.skipped_examples) < 20:
                    summary.skipped_examples.append((rec.path, rec.reason))
        if time.perf_counter() - last_flush > config.flush_seconds:
            writer.flush()
        else:
            writer.flush_if_full()
        if writer.pending == 0:
            last_flush = time.perf_counter()
        feat.seconds["write"] += time.perf_counter() - t
        summary.n_written += sum(r.status == "ok" for r in records)
        n_batches += 1
        if progress:
            progress(len(batch))
        if after_batch:
            after_batch(n_batches)

    try:
        if config.resolved_overlap(models.device):
            _run_overlapped(iter_decoded(todo, models, config), feat, write)
        else:
            t_dec = time.perf_counter()
            for batch in iter_decoded(todo, models, config):
                feat.seconds["decode"] += time.perf_counter() - t_dec
                write(batch, feat.process(batch))
                t_dec = time.perf_counter()
        # Aliases last: each names an image row that is written by now (or was in an earlier run).
        for a in aliases:
            writer.add_alias(a)
    except KeyboardInterrupt:
        summary.interrupted = True
        raise
    finally:
        writer.auto_flush = auto_flush
        summary.n_skipped = sum(reasons.values())
        summary.skipped_by_reason = dict(reasons)
        summary.stage_seconds = {k: round(v, 3) for k, v in feat.seconds.items()}
        summary.text_cache_hits, summary.text_cache_misses = feat.text_hits, feat.text_misses
        summary.seconds = round(time.perf_counter() - t0, 3)
        processed = summary.n_written + summary.n_skipped
        summary.images_per_second = round(processed / summary.seconds, 3) if summary.seconds else 0.0
        writer.record_run(summary.to_json())
    return summary


def featurize_images(paths: Iterable[str], models: Models, config: FeaturizeConfig | None = None,
                     captions: dict[str, str] | None = None) -> list[ImageRecord]:
    """Featurize image files in memory (no store): the public entry point prediction uses.

    Returns one ImageRecord per path, in order; unreadable files come back with status 'skipped'.
    """
    config = config or FeaturizeConfig(workers=0)
    captions = captions or {}
    rows = [InputRow(path=os.path.abspath(p), label="unknown", generator="", split="",
                     caption=captions.get(p), origin="predict") for p in paths]
    ids = hash_inputs(rows)
    items = [Item(fid, row, reason=reason) for row, (fid, reason) in zip(rows, ids)]
    feat = Featurizer(models, config)
    out: list[ImageRecord] = []
    for batch in iter_decoded(items, models, config):
        out.extend(feat.process(batch))
    return out
