"""The featurize run: inputs -> decode -> caption -> nouns -> ground -> crops -> CLIP -> store.

Work is done stage by stage on batches of images (every model sees a whole batch at once), with
decoding and the CLIP preprocessing of whole images in DataLoader worker processes. Text
embeddings are cached by exact string for the whole run. Rows go to the store's writer, which
commits them shard by shard, so a killed run resumes at its last committed shard.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable

from item.faults import fault
from item.featurize.inputs.discover import InputRow
from item.featurize.models.loading import Models
from item.featurize.run.config import FeaturizeConfig
from item.featurize.run.loader import Item, iter_decoded
from item.featurize.run.planning import hash_inputs, plan, seed_from_store
from item.featurize.run.steps import Featurizer
from item.store.writer import ImageRecord


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
    precision: str = ""  # the arithmetic the models ran in (the store identity's precision)
    interrupted: bool = False
    mixed_identity: dict = field(default_factory=dict)  # allow_mixed: {key: {'store': v, 'run': v}}
    ground_batch_size: int = 0  # images per grounder forward in effect (FeaturizeConfig.ground_batch_size)
    # Rows written whose caption gave no noun (nothing to ground), and those whose caption does not read as
    # English (nouns.reads_as_english: the extractor is English only); `item store info` sums them over runs.
    n_captions_without_nouns: int = 0
    n_captions_not_english: int = 0
    # Rows written whose nouns were left ungrounded because the grounder cannot take the image: empty, no
    # pixels left on a side after its processor's resize, OWLv2's pad canvas too large, or too few feature
    # cells at its input size (PreparedGrounder.input_problem); the row's reason says which.
    n_not_grounded: int = 0
    # --objects-from: the store whose captions, nouns and boxes this run reused (its path and fingerprint).
    objects_from: dict = field(default_factory=dict)

    @property
    def text_cache_hit_rate(self) -> float:
        total = self.text_cache_hits + self.text_cache_misses
        return self.text_cache_hits / total if total else 0.0

    def to_json(self) -> dict:
        d = asdict(self)
        d["text_cache_hit_rate"] = round(self.text_cache_hit_rate, 4)
        return d


def run_overlapped(batches, feat: Featurizer, write) -> None:
    """Batch i's `Featurizer.back` (crops, CLIP) runs in one background thread while the main thread
    decodes and runs batch i+1's `front` (captions, grounding) and writes batch i-1: a bounded pipeline,
    at most two batches in flight, written in order. Every batch meets the same computation as without
    the overlap, so the stored bits are the same; an error in either thread ends the run as it would
    without it."""
    from concurrent.futures import ThreadPoolExecutor

    pending = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="item-clip") as pool:
        try:
            t_dec = time.perf_counter()
            for batch in batches:
                feat.seconds["decode"] += time.perf_counter() - t_dec
                future = pool.submit(feat.back, feat.front(batch))
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
                   after_batch: Callable[[int], None] | None = None,
                   mixed_identity: dict | None = None, objects=None, ids=None) -> RunSummary:
    """Featurize ``rows`` into an open StoreWriter; rows whose content is already stored are skipped.

    ``after_batch(n_batches_done)`` is called after each batch has been handed to the writer (tests use
    it to interrupt a run). ``objects``: the open run.objects_from.ObjectsSource of ``config.objects_from``
    (opened here when not given). ``ids``: the rows' planning.hash_inputs, when the caller has them.
    """
    from item.store.manifest import now

    summary = RunSummary(started=now(), n_inputs=len(rows), device=models.device, precision=models.run_precision,
                         ground_batch_size=config.resolved_ground_batch_size(models.device),
                         mixed_identity=dict(mixed_identity or {}))
    t0 = time.perf_counter()
    ids = hash_inputs(rows, hash_progress) if ids is None else ids
    todo, aliases, n_done = plan(rows, ids, writer.done_ids, writer.known_paths)
    summary.n_already_done = n_done
    summary.n_duplicates = len(aliases)
    opened = None
    if config.objects_from and objects is None:
        from item.featurize.run.objects_from import ObjectsSource

        objects = opened = ObjectsSource(config.objects_from)
    if objects is not None:
        try:
            objects.refuse_missing(rows, ids)  # before any model runs: every input's objects must be in OLD
        except BaseException:
            if opened is not None:
                opened.close()
            raise
        summary.objects_from = {"store": str(objects.root.resolve()), "fingerprint": objects.fingerprint}
    feat = Featurizer(models, config, objects=objects)
    if writer.done_ids and todo:
        seed_from_store(feat, writer.root)
    reasons: Counter = Counter()
    last_flush = time.perf_counter()
    n_batches = 0
    # Shards end between batches only (add_batch): a resumed run then re-forms exactly the batches of
    # an uninterrupted one, and with its text cache seeded from the store it computes the same bits.

    def write(batch, records):
        nonlocal last_flush, n_batches
        fault("batch")
        t = time.perf_counter()
        writer.add_batch(records)
        for rec in records:
            if rec.status != "ok":
                reasons[rec.reason] += 1
                if len(summary.skipped_examples) < 20:
                    summary.skipped_examples.append((rec.path, rec.reason))
        if time.perf_counter() - last_flush > config.flush_seconds:
            writer.flush()
        if writer.pending == 0:
            last_flush = time.perf_counter()
        feat.seconds["write"] += time.perf_counter() - t
        summary.n_written += sum(r.status == "ok" for r in records)
        without, not_english = caption_counts(records, config.max_objects)
        summary.n_captions_without_nouns += without
        summary.n_captions_not_english += not_english
        summary.n_not_grounded += sum(r.status == "ok" and (r.reason or "").startswith("not grounded") for r in records)
        n_batches += 1
        if progress:
            progress(len(batch))
        if after_batch:
            after_batch(n_batches)

    try:
        if config.resolved_overlap(models.device):
            run_overlapped(iter_decoded(todo, models, config), feat, write)
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
        summary.n_skipped = sum(reasons.values())
        summary.skipped_by_reason = dict(reasons)
        summary.stage_seconds = {k: round(v, 3) for k, v in feat.seconds.items()}
        summary.text_cache_hits, summary.text_cache_misses = feat.text_hits, feat.text_misses
        summary.seconds = round(time.perf_counter() - t0, 3)
        processed = summary.n_written + summary.n_skipped
        summary.images_per_second = round(processed / summary.seconds, 3) if summary.seconds else 0.0
        writer.record_run(summary.to_json())
        if opened is not None:
            opened.close()
    return summary


def caption_counts(records, max_objects: int) -> tuple[int, int]:
    """(rows with status ok whose caption gave no noun, those whose caption is not English) among ``records``.
    With max_objects 0 no noun is looked for, and none is counted missing."""
    from item.featurize.text.nouns import reads_as_english

    ok = [r for r in records if r.status == "ok"]
    without = sum(not r.nouns for r in ok) if max_objects > 0 else 0
    return without, sum(not reads_as_english(r.caption_encoded or r.caption) for r in ok)


def _image_id(image) -> str:
    """Content id of an in-memory PIL image: sha256 over its mode, size and pixel bytes."""
    import hashlib

    h = hashlib.sha256(f"pil:{image.mode}:{image.width}x{image.height}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def featurize_images(images_or_paths, *, models, captions=None,
                     config: FeaturizeConfig | None = None, text_cache: dict | None = None) -> list[ImageRecord]:
    """Featurize images in memory (no store): what prediction and a server call.

    images_or_paths: image file paths and/or PIL images, in any mix.
    models: a preset name, a ModelSpec, or loaded Models (load once with ``load_models`` to call often).
    captions: None (the captioner writes them), a sequence aligned with the inputs (None entries are
        captioned), or a dict from the path as given to its caption.
    config: defaults to decoding in this process (``workers=0``).
    text_cache: a dict the caller keeps across calls (a server's), so a caption or noun seen before is not
        encoded again; None: one cache for this call. Entries hold the float16 values every encode goes
        through, so a hit gives the bits a miss would. The caller bounds its size.

    Returns one ImageRecord per input, in order; unreadable files come back with status 'skipped' and
    their reason. A PIL image's record has the path ``<image N>`` (N its position) unless it has a
    ``filename``, and an id hashed from its pixels.
    """
    from item.featurize.models.loading import as_models

    config = config or FeaturizeConfig(workers=0)
    loaded = as_models(models, config.device, config.precision)
    inputs = list(images_or_paths)
    if captions is None:
        given = [None] * len(inputs)
    elif isinstance(captions, dict):
        given = [captions.get(x) if isinstance(x, (str, os.PathLike)) else None for x in inputs]
    else:
        given = list(captions)
        if len(given) != len(inputs):
            from item.errors import InputError

            raise InputError(f"{len(given)} captions for {len(inputs)} images")
    items: list[Item] = []
    file_rows, file_at = [], []
    for n, (x, cap) in enumerate(zip(inputs, given)):
        if isinstance(x, (str, os.PathLike)):
            row = InputRow(path=os.path.abspath(os.fspath(x)), label="unknown", generator="", split="",
                           caption=cap, origin="predict")
            file_rows.append(row)
            file_at.append(n)
            items.append(Item("", row))
        else:
            path = getattr(x, "filename", "") or f"<image {n}>"
            row = InputRow(path=path, label="unknown", generator="", split="", caption=cap, origin="predict")
            items.append(Item(_image_id(x), row, image=x, format=getattr(x, "format", None) or ""))
    for n, (fid, reason) in zip(file_at, hash_inputs(file_rows)):
        items[n].id, items[n].reason = fid, reason
    feat = Featurizer(loaded, config)
    if text_cache is not None:
        feat.text_cache = text_cache
    out: list[ImageRecord] = []
    for batch in iter_decoded(items, loaded, config):
        out.extend(feat.process(batch))
    return out
