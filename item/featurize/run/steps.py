"""The model steps of one batch: caption -> nouns -> ground -> crops -> CLIP -> misalignment -> records."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np

from item.errors import InputError
from item.featurize.inputs.perturb import parse_perturb
from item.featurize.models.loading import Models
from item.featurize.run.config import FeaturizeConfig
from item.featurize.run.loader import Item
from item.featurize.text.nouns import extract_nouns, noun_text
from item.store.writer import ImageRecord, ObjectRecord

#: Skip reason of an image whose embeddings or misalignment came out NaN or infinite (a model
#: overflow, e.g. in fp16): the image is skipped with this reason and the run goes on.
NON_FINITE = "non-finite"


class Featurizer:
    """Turns batches of decoded Items into ImageRecords. Keeps the run's text cache and stage timers."""

    def __init__(self, models: Models, config: FeaturizeConfig, objects=None):
        from item.misalignment import feature_size

        self.models, self.config = models, config
        # --objects-from: captions, nouns and boxes come from this run.objects_from.ObjectsSource (opened
        # here from config.objects_from when not given: a Ray actor's), never from a captioner or grounder.
        if objects is None and config.objects_from:
            from item.featurize.run.objects_from import ObjectsSource

            objects = ObjectsSource(config.objects_from)
        self.objects = objects
        self.text_cache: dict[str, tuple[np.ndarray, bool]] = {}
        self.text_hits = 0
        self.text_misses = 0
        self.seconds: Counter = Counter()
        self.embed_dim = models.clip.embed_dim
        self.misalignment_dim = feature_size(config.recipe, self.embed_dim)
        self.perturbation = str(parse_perturb(config.perturb or None))

    def _timed(self, stage: str, fn, *args):
        """fn(*args), its seconds added to ``stage``. Every stage ends in a copy to the host (boxes, captions,
        embeddings), which waits for its own kernels; a device-wide synchronize here would also wait for the
        other thread's (the overlapped CLIP stage) and forbid the overlap, so it happens only when
        ``config.profile_stages`` asks for exact per-stage GPU time."""
        t = time.perf_counter()
        try:
            return fn(*args)
        finally:
            if self.config.profile_stages and str(self.models.device).startswith("cuda"):
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
            if getattr(captioner, "decodings", None):  # BLIP; a stand-in part decodes its own way
                out.extend(self._timed("caption", captioner.caption_prepared, pixels, self.config.caption_decoding))
            else:
                out.extend(self._timed("caption", captioner.caption_prepared, pixels))
        return out

    def front(self, batch: list[Item]) -> dict:
        """Captions, nouns and boxes of one batch (the captioner's and the grounder's forwards)."""
        from item.featurize.models.grounding import not_groundable, shape_groups
        from item.featurize.text.captions import clean_caption

        if self.objects is not None:
            return self._timed("objects_from", self._front_from_store, batch)
        good = [it for it in batch if not it.reason]
        # captions: given ones as is, the captioner for the rest
        need = [it for it in good if not it.row.caption]
        if need and self.models.captioner is None:
            raise InputError(f"{need[0].row.path}: no caption given and --captioner none")
        generated = self._captions(need) if need else []
        caption_of = {id(it): (c, self.models.spec.captioner) for it, c in zip(need, generated)}
        raw_captions, captions, sources = [], [], []
        for it in good:
            c, src = caption_of.get(id(it), (it.row.caption, "given"))
            raw_captions.append(c or "")
            # BLIP's artefacts never reach CLIP; a caption the user gave is encoded as given
            captions.append(c or "" if src == "given" else clean_caption(c or ""))
            sources.append(src)
        nouns = [extract_nouns(c, max_objects=self.config.max_objects) for c in captions]
        ground_note = {i: not_groundable(it.image.width, it.image.height) for i, it in enumerate(good)
                       if self.models.grounder is not None and nouns[i]}
        # grounding: one best box per noun, or None
        if self.models.grounder is not None and any(nouns):
            grounder = self.models.grounder
            with_nouns = [i for i, n in enumerate(nouns) if n]
            prepared = {i: good[i].ground_input if good[i].ground_input is not None else grounder.prepare(good[i].image)
                        for i in with_nouns}
            for i in with_nouns:  # an input the grounder cannot take: ungrounded (ground_prepared skips it), say why
                why = grounder.too_small if prepared[i] is None else grounder.input_problem(prepared[i])
                if why and not ground_note.get(i):  # an empty image keeps not_groundable's reason
                    ground_note[i] = why
            # Only equally shaped inputs share a forward (a forward pads its images to the largest, which moved
            # boxes by up to 22 px): an image's boxes never depend on what else is in its batch.
            gbs = self.config.resolved_ground_batch_size(self.models.device, grounder.auto_batch_size(self.models.device))
            boxes = [[None] * len(n) for n in nouns]
            order = [i for i in with_nouns if prepared[i] is not None]
            for group in shape_groups(prepared, order):
                for s in range(0, len(group), gbs):
                    part = group[s:s + gbs]
                    found = self._timed("ground", grounder.ground_prepared, [prepared[i] for i in part],
                                        [nouns[i] for i in part])
                    for i, b in zip(part, found):
                        boxes[i] = list(b)
        else:
            boxes = [[None] * len(n) for n in nouns]
        return {"batch": batch, "good": good, "raw_captions": raw_captions, "captions": captions,
                "sources": sources, "nouns": nouns, "boxes": boxes, "ground_note": ground_note}

    def _front_from_store(self, batch: list[Item]) -> dict:
        """`front` of a run with --objects-from: each image's caption, nouns and boxes as OLD holds them for
        its content id. An image OLD holds as skipped is skipped with OLD's reason."""
        from item.featurize.run.objects_from import SKIPPED_IN_SOURCE

        found = self.objects.lookup([it.id for it in batch if not it.reason], self.config.max_objects)
        for it in batch:
            if it.reason:
                continue
            s = found.get(it.id)
            if s is None:  # refused before the run (refuse_missing); here only if OLD lost rows meanwhile
                it.reason = f"not in the --objects-from store {self.objects.root}"
            elif s.status != "ok":
                it.reason = f"{SKIPPED_IN_SOURCE}: {s.reason}" if s.reason else SKIPPED_IN_SOURCE
        good = [it for it in batch if not it.reason]
        got = [found[it.id] for it in good]
        return {"batch": batch, "good": good, "raw_captions": [s.caption for s in got],
                "captions": [s.caption_encoded for s in got], "sources": [s.caption_source for s in got],
                "nouns": [list(s.nouns) for s in got], "boxes": [list(s.boxes) for s in got],
                "ground_note": {i: s.reason for i, s in enumerate(got) if s.reason}}

    def back(self, front: dict) -> list[ImageRecord]:
        """Crops, CLIP embeddings, misalignment and the records of a batch that went through `front`."""
        from item.featurize.crops import pad_colour, square_crop
        from item.misalignment import compute

        batch, good, captions, sources = front["batch"], front["good"], front["captions"], front["sources"]
        nouns, boxes, raw_captions, ground_note = front["nouns"], front["boxes"], front["raw_captions"], \
            front["ground_note"]
        # CLIP: whole images and crops in one stream of batches
        pixels = [it.pixels for it in good]
        crop_owner = []
        t = time.perf_counter()
        pad = pad_colour(self.models.clip.info.get("preprocess", {}).get("mean"))
        for i, (it, bx) in enumerate(zip(good, boxes)):
            for j, b in enumerate(bx):
                if b is not None:
                    crop = square_crop(it.image, (b.x0, b.y0, b.x1, b.y1), pad)
                    pixels.append(self.models.clip.preprocess(crop))
                    crop_owner.append((i, j))
        self.seconds["crop"] += time.perf_counter() - t
        img_emb = self.images(pixels)
        image_emb, crop_emb = img_emb[:len(good)], img_emb[len(good):]
        caption_emb, truncated = self.texts(captions)
        flat_nouns = [n for ns in nouns for n in ns]
        noun_emb, _ = self.texts([noun_text(n, self.config.noun_prompt) for n in flat_nouns])
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
                **base, caption=raw_captions[i], caption_encoded=captions[i], reason=ground_note.get(i, ""),
                caption_source=sources[i], caption_truncated=bool(truncated[i]),
                nouns=list(nouns[i]), width=it.width, height=it.height, format=it.format,
                file_size=it.file_size, jpeg_quality=it.jpeg_quality, exif=it.exif,
                image_emb=image_emb[i], caption_emb=caption_emb[i], misalignment=mis[i], objects=objects))
        return records
