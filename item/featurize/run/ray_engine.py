"""``--engine ray``: the featurize run as a Ray Data job.

    driver: plan (content ids, dedup, what the store holds) -> batches of Items, in the order a
            single-process run forms them
    tasks:  decode + CLIP preprocessing of one batch               (ds.map, fractional CPUs)
    actors: the models on one batch -> ImageRecords                 (map_batches, ActorPoolStrategy,
            each actor loads the models once, num_gpus per actor)
    sink:   write tasks encode their batches' records as one complete shard file each, uncommitted;
            on_write_complete (on the driver) commits them to the manifest

One Ray row is one batch of ``batch_size`` images, so every model sees exactly the batches a
single-process run sees (the same image and crop embeddings, bit for bit on the same device). Text
embeddings go through each actor's own cache, so a caption or noun may be encoded in another
company of texts than in one process: equal to float16 rounding, not always bit for bit.

A driver killed mid-job leaves complete, uncommitted shard files (``shard-ID-N.h5`` of the driver's
writer id); the next writer to open the store adopts each one whose rows the store does not hold
yet, so nothing is lost or written twice.

The store must be on a filesystem every node of the cluster sees (write tasks write into it).
"""

from __future__ import annotations

import json
import math
import os
# Only for the job's own in-memory rows (driver -> decode tasks -> actors -> sink), which Ray's object
# store moves as bytes; nothing read from a file or handed in by a user is ever unpickled.
import pickle
import time
from collections import Counter

from item.errors import InputError

RAY_MISSING = 'the ray engine needs Ray Data: pip install -e ".[ray]"'


def import_ray():
    """The ``ray`` module, or InputError with the one line that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError(RAY_MISSING) from None
    return ray


# -- the seam with the store's writer ---------------------------------------------------------------
# Write tasks stage shards under the driver's writer id with item.store.stage_shard(publish=True): each
# is complete under its final name, unlisted. The driver commits them with StoreWriter.commit_staged.
# A killed driver's published shards are adopted by the next writer that opens the store (its recovery
# takes over shards of writers that are gone), so finished work is not redone.
def write_uncommitted_shard(root, compat: dict, records: list, writer_id: str):
    """Write ``records`` (ImageRecords) as one complete shard of writer ``writer_id``, not listed in the
    manifest. Returns its StagedShard (``.entry`` is the manifest entry)."""
    from item.store.writer import stage_shard

    return stage_shard(root, records, [], compat=compat, writer_id=writer_id, publish=True)


# -- what runs on the cluster -------------------------------------------------------------------------
def _actor_device(config) -> str:
    """The device the model actors run on: CUDA when they hold GPUs, else the configured one."""
    return "cuda" if config.gpus_per_actor > 0 else config.device


def _identity(spec, config):
    """(compat, models info, CLIP preprocess) of ``spec``, loaded once on a worker with an actor's resources.

    The store's identity names the device class and precision the rows are computed in, so the models
    are loaded on the device the actors use.
    """
    from item.featurize.models.loading import load_models
    from item.featurize.run.objects_from import run_identity

    loaded = load_models(spec, _actor_device(config), config.precision)
    return (*run_identity(loaded, config), loaded.clip.preprocess)


def _decode_batch(row: dict, preprocess, perturb: str, max_pixels) -> dict:
    """One Ray row (a pickled batch of Items) decoded and preprocessed."""
    from item.featurize.inputs.perturb import parse_perturb
    from item.featurize.run.loader import decode_item

    perturbation = parse_perturb(perturb or None)
    t = time.perf_counter()
    items = [decode_item(it, preprocess, perturbation, max_pixels) for it in pickle.loads(row["payload"])]
    return {"n": row["n"], "payload": pickle.dumps(items), "decode_s": time.perf_counter() - t}


class _ModelActor:
    """Holds the loaded models (once per actor) and turns decoded batches into ImageRecords."""

    def __init__(self, spec, config):
        from item.featurize.models.loading import load_models
        from item.featurize.run.steps import Featurizer

        self.feat = Featurizer(load_models(spec, _actor_device(config), config.precision), config)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        out = {"n": [], "payload": [], "seconds": [], "hits": [], "misses": []}
        for n, payload, decode_s in zip(batch["n"], batch["payload"], batch["decode_s"]):
            before = Counter(self.feat.seconds)
            hits, misses = self.feat.text_hits, self.feat.text_misses
            records = self.feat.process(pickle.loads(payload))
            seconds = Counter(self.feat.seconds)
            seconds.subtract(before)
            seconds["decode"] += float(decode_s)
            out["n"].append(int(n))
            out["payload"].append(pickle.dumps(records))
            out["seconds"].append(json.dumps(dict(seconds)))
            out["hits"].append(self.feat.text_hits - hits)
            out["misses"].append(self.feat.text_misses - misses)
        return {k: np.array(v, dtype=object if k in ("payload", "seconds") else np.int64) for k, v in out.items()}


def _make_sink(root: str, compat: dict, min_rows: int, writer_id: str):
    from ray.data import Datasink
    from ray.data.block import BlockAccessor

    class ShardSink(Datasink):
        """Each write task writes its batches' rows as one shard; the driver commits them at the end."""

        def __init__(self):
            self.writer = None  # the driver's StoreWriter; never shipped to the write tasks
            self.results: list[dict] = []

        def __getstate__(self):
            return {"results": []}

        def __setstate__(self, state):
            self.writer, self.results = None, []

        writer_id_ = writer_id  # a class attribute: travels with the class to the write tasks

        @property
        def min_rows_per_write(self):
            return min_rows  # one row is one batch: about shard_size image rows a shard, ending between batches

        def write(self, blocks, ctx) -> dict:
            records, seconds, hits, misses, batches = [], Counter(), 0, 0, []
            for block in blocks:
                for row in BlockAccessor.for_block(block).iter_rows(public_row_format=True):
                    batches.append((int(row["n"]), row))
            for _, row in sorted(batches, key=lambda b: b[0]):
                records.extend(pickle.loads(row["payload"]))
                seconds.update(json.loads(row["seconds"]))
                hits += int(row["hits"])
                misses += int(row["misses"])
            t = time.perf_counter()
            staged = write_uncommitted_shard(root, compat, records, self.writer_id_) if records else None
            seconds["write"] += time.perf_counter() - t
            from item.featurize.run.local import caption_counts

            return {"entry": staged.entry if staged else None, "staged": staged, "seconds": dict(seconds), "hits": hits, "misses": misses,
                    "examples": [(r.path, r.reason) for r in records if r.status != "ok"][:20],
                    "captions": caption_counts(records, int(compat.get("max_objects", 8)))}

        def on_write_complete(self, write_result):
            self.results = [r for r in write_result.write_returns if r]
            if self.writer is not None:
                conflicts = self.writer.commit_staged([r["staged"] for r in self.results if r["staged"]])
                dropped = {c.entry["name"] for c in conflicts}
                for r in self.results:  # another writer committed these images meanwhile
                    if r["staged"] and r["staged"].entry["name"] in dropped:
                        r["entry"] = None

    return ShardSink()


# -- the driver -----------------------------------------------------------------------------------
def _check_pool_fits(resources: dict, actors: int, cpus: float, gpus: float) -> None:
    """Refuse an actor pool the Ray instance started here cannot place: Ray Data waits for every actor of a
    fixed-size pool, so --ray-actors 4096 on a 2-CPU machine ran until killed (and asked for 4096 model
    copies). A cluster given with --ray-address may scale up, so it is not checked."""
    have_cpu, have_gpu = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    spare = cpus / 2  # one decode task beside the pool (it asks for half an actor's CPUs)
    if actors * cpus + spare > have_cpu or (gpus and actors * gpus > have_gpu):
        fit = int(min((have_cpu - spare) / cpus if cpus else actors, have_gpu / gpus if gpus else actors))
        raise InputError(f"--ray-actors {actors} need {actors * cpus + spare:g} CPUs with a decode task"
                         + (f" and {actors * gpus:g} GPUs" if gpus else "")
                         + f"; this machine's Ray has {have_cpu:g} CPUs" + (f" and {have_gpu:g} GPUs" if gpus else "")
                         + f": give --ray-actors {max(1, fit)} or fewer, or --ray-address of a larger cluster")


def featurize_store_ray(rows, root, *, models, config, progress=None, overwrite=False, command="", lock=None,
                        objects=None, ids=None):
    """Featurize InputRows into the store at ``root`` with a Ray Data job (see the module docstring).

    ``lock``: the store's WriterLock, held by the caller. ``objects``: the open ObjectsSource of
    ``config.objects_from`` (each model actor opens its own); ``ids``: the rows' hash_inputs when the caller
    has them. Returns the RunSummary.
    """
    ray = import_ray()
    from ray.data import ActorPoolStrategy

    from item.featurize.models.loading import Models
    from item.featurize.models.presets import ModelSpec, resolve_models
    from item.featurize.run.local import RunSummary
    from item.featurize.run.planning import hash_inputs, plan
    from item.store.manifest import now
    from item.store.writer import StoreWriter

    if config.ray_actors < 1:
        raise InputError(f"--ray-actors must be at least 1, got {config.ray_actors}")
    if config.gpus_per_actor < 0:
        raise InputError(f"--gpus-per-actor must be 0 or more, got {config.gpus_per_actor}")
    spec = models.spec if isinstance(models, Models) else resolve_models(models) if isinstance(models, str) else models
    if not isinstance(spec, ModelSpec):
        raise InputError(f"models must be a preset name, a ModelSpec or loaded Models, not {type(models).__name__}")
    from item.featurize.models.hub import resolve_device, resolve_precision

    summary = RunSummary(started=now(), n_inputs=len(rows), device=f"ray ({config.ray_actors} actors)",
                         precision=resolve_precision(config.precision, resolve_device(_actor_device(config))))
    t0 = time.perf_counter()
    started_here = not ray.is_initialized()
    if started_here:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        import logging

        try:
            ray.init(address=config.ray_address, include_dashboard=False, logging_level=logging.WARNING,
                     configure_logging=False)
        except ConnectionError as exc:
            raise InputError(f"--ray-address {config.ray_address}: cannot connect to a Ray cluster ({exc})") from None
    try:
        cpus = config.cpus_per_actor
        if started_here and config.ray_address is None:
            _check_pool_fits(ray.cluster_resources(), config.ray_actors, cpus, config.gpus_per_actor)
        identity = ray.remote(_identity).options(num_cpus=cpus, num_gpus=config.gpus_per_actor or None)
        compat, info, preprocess = ray.get(identity.remote(spec, config))
        with StoreWriter(root, compat=compat, models=info, recipe=config.recipe, shard_size=config.shard_size,
                         overwrite=overwrite, command=command, lock=lock) as writer:
            ids = hash_inputs(rows) if ids is None else ids
            todo, aliases, n_done = plan(rows, ids, writer.done_ids, writer.known_paths)
            if objects is not None:
                objects.refuse_missing(rows, ids)
                summary.objects_from = {"store": str(objects.root.resolve()), "fingerprint": objects.fingerprint}
            summary.n_already_done, summary.n_duplicates = n_done, len(aliases)
            bs = config.resolved_batch_size("cuda" if config.gpus_per_actor > 0 else "cpu")
            batches = [todo[s:s + bs] for s in range(0, len(todo), bs)]
            sink = _make_sink(str(writer.root), compat, max(1, math.ceil(config.shard_size / bs)), writer.writer_id)
            sink.writer = writer
            if batches:
                ds = ray.data.from_items([{"n": i, "payload": pickle.dumps(b)} for i, b in enumerate(batches)],
                                         override_num_blocks=len(batches))
                ds = ds.map(_decode_batch, fn_kwargs={"preprocess": preprocess, "perturb": config.perturb,
                                                      "max_pixels": config.max_pixels}, num_cpus=cpus / 2)
                ds = ds.map_batches(_ModelActor, fn_constructor_kwargs={"spec": spec, "config": config},
                                    batch_size=1, batch_format="numpy",
                                    compute=ActorPoolStrategy(size=config.ray_actors),
                                    num_cpus=cpus, num_gpus=config.gpus_per_actor or None)
                ds.write_datasink(sink, ray_remote_args={"num_cpus": cpus / 2})
            reasons, seconds = Counter(), Counter()
            for r in sink.results:
                if r["entry"]:
                    summary.n_written += r["entry"]["n_ok"]
                    summary.n_captions_without_nouns += r["captions"][0]
                    summary.n_captions_not_english += r["captions"][1]
                    reasons.update(r["entry"]["skipped_by_reason"])
                seconds.update(r["seconds"])
                summary.text_cache_hits += r["hits"]
                summary.text_cache_misses += r["misses"]
                summary.skipped_examples.extend(r["examples"][:20 - len(summary.skipped_examples)])
            # Aliases last: each names an image row that is committed by now (or was in an earlier run).
            for a in aliases:
                writer.add_alias(a)
            summary.n_skipped = sum(reasons.values())
            summary.skipped_by_reason = dict(reasons)
            summary.stage_seconds = {k: round(v, 3) for k, v in seconds.items()}  # summed over actors and tasks
            summary.seconds = round(time.perf_counter() - t0, 3)
            processed = summary.n_written + summary.n_skipped
            summary.images_per_second = round(processed / summary.seconds, 3) if summary.seconds else 0.0
            writer.record_run({**summary.to_json(), "engine": "ray", "ray_actors": config.ray_actors,
                               "gpus_per_actor": config.gpus_per_actor})
        if progress:
            progress(len(rows))
        return summary
    finally:
        if started_here:
            ray.shutdown()
