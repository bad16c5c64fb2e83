"""Featurizing for the benchmark runs: the one place that calls the featurize stage.

``featurize_jobs`` loads the models once and fills several stores (train and test of a benchmark,
or one store per perturbation of a robustness sweep), each resumable: a store that holds some rows
already gets only the missing ones.

Issue 11 brings ``item.featurize.featurize_store`` as featurize's front door; until it is on main
this module drives the stage's pieces itself (discover -> load_models -> StoreWriter ->
featurize_rows), the same calls ``item featurize`` makes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from item.errors import InputError


@dataclass(frozen=True)
class StoreJob:
    """One store to fill: sources (folders or manifests), the store folder, its perturbation spec."""

    sources: tuple[str, ...]
    store: Path
    perturb: str = ""
    augment: tuple[str, ...] = ()  # train-time augmentations added as rows of their own (see augment.py)


@dataclass
class JobResult:
    store: Path
    n_inputs: int = 0
    n_written: int = 0
    n_already_done: int = 0
    n_skipped: int = 0
    augmented: dict = field(default_factory=dict)  # spec -> rows written


def spec_from_head(info: dict):
    """The ModelSpec a head was trained with (from its recorded compat and models)."""
    from item.featurize import models as featurize_models

    from_head = getattr(featurize_models.ModelSpec, "from_head", None)
    if from_head is not None:  # issue 11's front door, once merged
        return from_head(info)
    from item.classify.predict import _spec

    compat = info.get("compat")
    if not compat:
        raise InputError("the head records no models; it cannot featurize new images")
    return _spec(compat, info.get("models", {}))


def featurize_jobs(jobs: list[StoreJob], *, models="default", device: str = "auto", batch_size: int = 16,
                   workers: int = 0, max_objects: int = 8, log: Callable[[str], None] = lambda s: None,
                   progress: Callable[[int], None] | None = None, command: str = "item reproduce") -> list[JobResult]:
    """Fill each job's store with its sources' images (resuming what is there). Models load once.

    models: a preset name or a ModelSpec. Returns one JobResult per job, in order.
    """
    from item.featurize.inputs import discover
    from item.featurize.models import ModelSpec, resolve_models
    from item.featurize.perturb import parse_perturb
    from item.featurize.pipeline import FeaturizeConfig, compat_for, featurize_rows, load_models, models_info
    from item.store.writer import StoreWriter

    spec = models if isinstance(models, ModelSpec) else resolve_models(models)
    loaded = None
    out = []
    for job in jobs:
        disc = discover(list(job.sources))
        if not disc.rows:
            raise InputError(f"no image found in {', '.join(job.sources)}")
        for p in disc.problems[:5]:
            log(f"warning: {p}")
        if loaded is None:
            log(f"loading models{' (RANDOM WEIGHTS)' if spec.random_weights else ''} ...")
            loaded = load_models(spec, device)
        config = FeaturizeConfig(batch_size=batch_size, workers=workers, device=device, max_objects=max_objects,
                                 perturb=str(parse_perturb(job.perturb or None)))
        res = JobResult(job.store, n_inputs=len(disc.rows))
        log(f"featurizing {len(disc.rows)} images into {job.store}"
            + (f" (perturbation {config.perturb})" if config.perturb else ""))
        with StoreWriter(job.store, compat=compat_for(loaded, config), models=models_info(loaded),
                         recipe=config.recipe, command=command) as writer:
            summary = featurize_rows(disc.rows, writer, loaded, config, progress=progress)
            res.n_written, res.n_already_done, res.n_skipped = summary.n_written, summary.n_already_done, \
                summary.n_skipped
            if job.augment:
                from item.featurize.augment import add_augmented_rows

                res.augmented = add_augmented_rows(disc.rows, writer, loaded, config, job.augment, progress=progress)
        log(f"{job.store}: {res.n_written} written, {res.n_already_done} already in the store, {res.n_skipped} skipped"
            + "".join(f", {n} copies under {s}" for s, n in res.augmented.items()))
        out.append(res)
    return out


def with_perturb(job: StoreJob, perturb: str) -> StoreJob:
    return replace(job, perturb=perturb)
