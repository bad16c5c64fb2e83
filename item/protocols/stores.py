"""Featurizing for the benchmark runs: the one place that calls the featurize stage.

``featurize_jobs`` loads the models once and fills several stores (train and test of a benchmark,
or one store per perturbation of a robustness sweep) through featurize's front door
(``item.featurize.featurize_store``), each resumable: a store that holds some rows already gets only
the missing ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    alignment: str = ""  # format alignment its fakes were re-encoded with (item.protocols.align), '' for none


@dataclass
class JobResult:
    store: Path
    n_inputs: int = 0
    n_written: int = 0
    n_already_done: int = 0
    n_skipped: int = 0
    augmented: dict = field(default_factory=dict)  # spec -> rows written


def spec_from_head(info: dict):
    """The ModelSpec a head was trained with (from its recorded compat and models). A head over several
    stores (one per backbone, ``item train A B``) is refused: these commands featurize with one model set."""
    from item.featurize import ModelSpec

    if info.get("stores"):
        labels = ", ".join(str((p.get("backbone") or {}).get("label")) for p in info["stores"])
        raise InputError(f"the head reads {len(info['stores'])} stores, one per backbone ({labels}); this command "
                         "featurizes with one backbone: give a head trained on one store")
    return ModelSpec.from_head(info)


def featurize_jobs(jobs: list[StoreJob], *, models="default", device: str = "auto", batch_size: int = 16,
                   workers: int = 0, max_objects: int = 8, log: Callable[[str], None] = lambda s: None,
                   progress: Callable[[int], None] | None = None, command: str = "item reproduce") -> list[JobResult]:
    """Fill each job's store with its sources' images (resuming what is there). Models load once.

    models: a preset name or a ModelSpec. Returns one JobResult per job, in order.
    """
    from item.featurize import FeaturizeConfig, ModelSpec, featurize_store, load_models, resolve_models
    from item.featurize.inputs.augment import augment_store
    from item.featurize.inputs.discover import discover
    from item.featurize.inputs.perturb import parse_perturb

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
                                 perturb=str(parse_perturb(job.perturb or None)), alignment=job.alignment)
        log(f"featurizing {len(disc.rows)} images into {job.store}"
            + (f" (perturbation {config.perturb})" if config.perturb else ""))
        summary = featurize_store(disc.rows, job.store, models=loaded, config=config, progress=progress,
                                  command=command)
        res = JobResult(job.store, n_inputs=len(disc.rows), n_written=summary.n_written,
                        n_already_done=summary.n_already_done, n_skipped=summary.n_skipped)
        if job.augment:
            res.augmented = augment_store(disc.rows, job.store, models=loaded, config=config, specs=job.augment,
                                          progress=progress, command=command)
        log(f"{job.store}: {res.n_written} written, {res.n_already_done} already in the store, {res.n_skipped} skipped"
            + "".join(f", {n} copies under {s}" for s, n in res.augmented.items()))
        out.append(res)
    return out


def write_manifest(rows: list[dict], path: Path) -> None:
    """Rows (path, label, generator, split) as a CSV manifest at ``path``, replaced whole (temp + rename)."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "generator", "split"])
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)
