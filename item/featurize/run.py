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
from typing import Callable, Iterable

from item.faults import fault
from item.featurize.config import FeaturizeConfig
from item.featurize.inputs import InputRow
from item.featurize.loader import Item, iter_decoded
from item.featurize.loading import Models
from item.featurize.planning import hash_inputs, plan, seed_from_store
from item.featurize.steps import Featurizer
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
    interrupted: bool = False

    @property
    def text_cache_hit_rate(self) -> float:
        total = self.text_cache_hits + self.text_cache_misses
        return self.text_cache_hits / total if total else 0.0

    def to_json(self) -> dict:
        d = asdict(self)
        d["text_cache_hit_rate"] = round(self.text_cache_hit_rate, 4)
        return d


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
    try:
        t_dec = time.perf_counter()
        for batch in iter_decoded(todo, models, config):
            feat.seconds["decode"] += time.perf_counter() - t_dec
            records = feat.process(batch)
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
