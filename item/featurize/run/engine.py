"""The choice between the local engine (item.featurize.run.local) and the Ray engine
(item.featurize.run.ray_engine), made here and only here: neither engine imports this module.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

from item.featurize.inputs.discover import InputRow
from item.featurize.run.config import FeaturizeConfig
from item.featurize.run.local import RunSummary, featurize_rows


def input_rows(sources) -> list[InputRow]:
    """InputRows from folders / manifests / image files (discovered), or InputRows as they are."""
    from item.errors import InputError
    from item.featurize.inputs.discover import discover

    sources = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if all(isinstance(s, InputRow) for s in sources):
        rows = sources
    else:
        rows = discover([os.fspath(s) for s in sources]).rows
    if not rows:
        raise InputError("no image found in the given sources")
    return rows


def featurize_store(sources, store, *, models="default", config: FeaturizeConfig = FeaturizeConfig(),
                    progress: Callable[[int], None] | None = None, overwrite: bool = False,
                    command: str = "", allow_mixed: bool = False, objects_from=None,
                    max_objects: int | None = None) -> RunSummary:
    """Featurize ``sources`` into the store at ``store`` (created, or resumed where a run stopped).

    sources: folders, manifests (.csv / .jsonl) or image files (discovered with their layouts), or a list
        of InputRows already discovered.
    models: a preset name, a ModelSpec, or Models already loaded (a caller featurizing often loads once).
    config: how the run works; ``config.engine`` picks the single-process loop or a Ray Data job.
    progress: called with the number of inputs each batch finished.
    overwrite: delete what the store holds first. command: recorded in the lock note and manifest.
    allow_mixed: resume a store whose identity differs only in schema.ALLOW_MIXED_KEYS (library versions,
        device class, precision: rounding-level differences); the run records its own values in the
        manifest's run entry (``mixed_identity``). Local engine only.

    objects_from: a store whose captions, nouns and boxes are reused by content id (run.objects_from): no
        captioner or grounder loads, ``models`` gives only the CLIP; the run takes OLD's max_objects (or
        ``max_objects`` when fewer), perturbation and alignment. Every input must be in OLD.

    Rows whose content the store already holds are not computed again. Raises InputError,
    IncompatibleError (the store holds other models' rows), LockedError, StoreError.
    """
    from item.errors import InputError, StoreError
    from item.featurize.models.loading import as_models
    from item.featurize.run.config import ENGINES
    from item.featurize.run.objects_from import clip_only, open_source, run_identity
    from item.featurize.run.planning import hash_inputs
    from item.store.writer import StoreWriter, WriterLock

    if config.engine not in ENGINES:
        raise InputError(f"unknown engine {config.engine!r}; valid engines: {', '.join(ENGINES)}")
    if config.engine == "ray":
        from item.featurize.run.ray_engine import import_ray

        import_ray()  # without the extra: one line saying how to install it, before anything is created
    rows = input_rows(sources)
    root = os.fspath(store)
    source, ids = None, None
    if objects_from is not None:  # before the store folder exists: a wrong OLD creates nothing
        source = open_source(objects_from, root)
        try:
            config = source.config_for(dataclasses.replace(config, objects_from=str(source.root.resolve())),
                                       max_objects)
        except BaseException:
            source.close()
            raise
        models = clip_only(models)
        try:  # every input's objects must be in OLD: refused before a folder or a model exists
            ids = hash_inputs(rows)
            source.refuse_missing(rows, ids)
        except BaseException:
            source.close()
            raise
    elif max_objects is not None:
        config = dataclasses.replace(config, max_objects=int(max_objects))
    created = not os.path.isdir(root)
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{root}: cannot create the store folder ({exc.strerror or exc})") from None
    # The store's writer lock is taken before models load (minutes with real weights): an --overwrite
    # that another process would block is refused at once, not after its models have loaded.
    lock = WriterLock(root)
    try:
        lock.acquire(command, exclusive=overwrite)
    except BaseException:
        if source is not None:
            source.close()
        raise
    try:
        if config.engine == "ray":
            from item.featurize.run.ray_engine import featurize_store_ray

            if allow_mixed:
                raise InputError("--allow-mixed works with the local engine only; resume this store without --engine ray")

            return featurize_store_ray(rows, root, models=models, config=config, progress=progress,
                                       overwrite=overwrite, command=command, lock=lock, objects=source, ids=ids)
        loaded = as_models(models, config.device, config.precision)
        compat, info = run_identity(loaded, config)
        mixed = {}
        if allow_mixed and not overwrite and os.path.isfile(os.path.join(root, "manifest.json")):
            from item.featurize.identity import adopt_mixable
            from item.store.manifest import read_manifest

            compat, mixed = adopt_mixable(read_manifest(root)["compat"], compat)
        with StoreWriter(root, compat=compat, models=info, recipe=config.recipe,
                         shard_size=config.shard_size, overwrite=overwrite, command=command, lock=lock) as writer:
            return featurize_rows(rows, writer, loaded, config, progress=progress, mixed_identity=mixed,
                                  objects=source, ids=ids)
    except BaseException:
        lock.release()
        if created:  # a run that failed before writing anything (models that would not load) leaves no folder
            from item.store.locks import remove_if_unused

            remove_if_unused(root)
        raise
    finally:
        lock.release()
        if source is not None:
            source.close()
