"""Train-time augmentation: perturbed copies of training images as rows of their own.

A store holds one perturbation setting (its compat ``perturbation``, '' for clean images): that is
what its test rows are and what a head trained on it expects. Augmentation adds, for every
*training* row, one more row per augmentation spec (``jpeg:75``, ``blur:1.0`` ...), encoded from the
perturbed pixels, in the same store:

- its id is the original's content id plus ``+SPEC`` (``<sha256>+jpeg:75``): a row is still "this
  file's content under this treatment", so resume skips copies already stored and never confuses a
  copy with its original;
- its ``perturbation`` column holds the combined spec (store perturbation, then the augmentation),
  which differs from the store's: that marks it as an augmented copy;
- only rows of the training split are copied (``split == 'train'``); ``evaluate`` ignores every row
  whose perturbation differs from the store's, and training keeps a copy on the same side of the
  validation hold-out as its original, so no augmented row reaches a test or validation number.

The compat perturbation is not changed: clean test rows and the clean training rows stay one
identity, and a second augmentation later only adds rows.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from item.featurize.inputs.discover import InputRow
from item.featurize.inputs.perturb import parse_perturb

AUGMENT_SPLIT = "train"
ID_SEPARATOR = "+"


def augmented_id(base_id: str, spec: str) -> str:
    return f"{base_id}{ID_SEPARATOR}{spec}"


def base_id(row_id: str) -> str:
    """The original's content id of a row id (itself for a row that is not an augmented copy)."""
    return str(row_id).split(ID_SEPARATOR, 1)[0]


def combined(store_perturb: str, spec: str) -> str:
    """The perturbation of an augmented copy: the store's own steps, then the augmentation's."""
    joined = "+".join(s for s in (store_perturb, spec) if s)
    return str(parse_perturb(joined or None))


class _CopyWriter:
    """The StoreWriter as featurize_rows sees it while it writes augmented copies of one spec.

    Ids get the ``+SPEC`` suffix on the way in; "already done" means "a copy under this spec is
    stored"; duplicate files make no alias rows (the original's aliases already name them).
    """

    def __init__(self, writer, spec: str):
        self._w, self._spec = writer, spec
        self.root = writer.root

    @property
    def done_ids(self) -> set[str]:
        suffix = ID_SEPARATOR + self._spec
        return {i[: -len(suffix)] for i in self._w.done_ids if i.endswith(suffix)}

    @property
    def known_paths(self):
        return _Everything()

    def add(self, record) -> None:
        self._w.add(replace(record, id=augmented_id(record.id, self._spec)))

    def add_batch(self, records) -> None:
        self._w.add_batch([replace(r, id=augmented_id(r.id, self._spec)) for r in records])

    def add_alias(self, alias) -> None:
        pass

    def record_run(self, summary: dict) -> None:
        self._w.record_run({**summary, "augment": self._spec})

    def __getattr__(self, name):  # flush, flush_if_full, pending, auto_flush ...
        return getattr(self._w, name)

    def __setattr__(self, name, value):
        if name in ("_w", "_spec", "root"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._w, name, value)


class _Everything:
    def __contains__(self, item) -> bool:
        return True

    def __iter__(self):
        return iter(())


def augment_store(rows: list[InputRow], store, *, models, config, specs, progress=None,
                  command: str = "item featurize --augment") -> dict[str, int]:
    """Add augmented copies of ``rows``' training images to the store at ``store``; {spec: rows written}.

    models: loaded Models (or a preset / ModelSpec, loaded here); config: the FeaturizeConfig of the
    store's run (its perturbation is the store's). Takes the store's writer lock like any writer.
    """
    from item.featurize.models.loading import as_models
    from item.featurize.run.objects_from import run_identity
    from item.store.writer import StoreWriter

    loaded = as_models(models, config.device)
    compat, info = run_identity(loaded, config)
    with StoreWriter(store, compat=compat, models=info, recipe=config.recipe,
                     shard_size=config.shard_size, command=command) as writer:
        return add_augmented_rows(rows, writer, loaded, config, specs, progress=progress)


def add_augmented_rows(rows: list[InputRow], writer, models, config, specs, *,
                       progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Featurize perturbed copies of the training rows into ``writer``'s store; {spec: rows written}."""
    from item.errors import InputError
    from item.featurize.run.local import featurize_rows

    train = [r for r in rows if r.split == AUGMENT_SPLIT]
    if specs and not train:
        raise InputError(f"--augment copies training rows only (split {AUGMENT_SPLIT!r}), and no input row is in it")
    out = {}
    for spec in specs:
        spec = str(parse_perturb(spec))
        if not spec:
            continue
        cfg = replace(config, perturb=combined(config.perturb, spec))
        summary = featurize_rows(train, _CopyWriter(writer, spec), models, cfg, progress=progress)
        out[spec] = summary.n_written
    return out
