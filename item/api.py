"""The Python API: what a notebook needs to read a store, train, evaluate, save, load and predict.

    import item
    store = item.open_store("stores/ufd")
    X, y, rows = store.features("hierarchical", split="train")
    head = item.train_head(store, recipe="hierarchical", kind="mlp")
    item.evaluate(store, head, split="test")          # pandas DataFrame, one row per generator
    fused = item.train_head([store_a, store_b])       # one head over two backbones' stores of the same images
    item.evaluate([store_a, store_b], fused, each=True)  # the fused head beside each backbone alone
    head.save("heads/hier"); head = item.load_head("heads/hier")
    item.predict(["a.jpg", "b.png"], head)            # pandas DataFrame, one row per image

The ``item`` command calls these same functions; ``import item`` stays light because the package
exposes them lazily (see ``item/__init__.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from item.errors import InputError
from item.outputs import warn_random_weights

__all__ = ["Store", "Head", "open_store", "train_head", "load_head", "evaluate", "predict"]


def _path(store) -> Path:
    return Path(store.path if isinstance(store, Store) else store)


def _stores(store):
    """One store (``Store`` or path) as a path; a list or tuple of them as a list of paths (several stores of
    the same images, one per backbone: their rows joined by image id)."""
    if isinstance(store, (list, tuple)):
        if not store:
            raise InputError("give at least one store")
        paths = [_path(s) for s in store]
        return paths if len(paths) > 1 else paths[0]
    return _path(store)


class Store:
    """A store opened for analysis: metadata, feature matrices, splits and annotations (no model loaded)."""

    def __init__(self, path):
        from item.store import StoreReader

        self.path = Path(path)
        StoreReader(self.path).close()  # a missing or malformed store fails here, with its one-line error

    def __repr__(self) -> str:
        return f"item.open_store({str(self.path)!r})"

    def reader(self):
        """A fresh ``item.store.StoreReader`` (use it as a context manager)."""
        from item.store import StoreReader

        return StoreReader(self.path)

    def info(self) -> dict:
        """What ``item store info --json`` prints."""
        from item.store import store_info

        return store_info(self.path)

    def table(self):
        """Per-image metadata (pandas DataFrame, one row per image row; the overlay applied)."""
        with self.reader() as r:
            return r.table()

    def features(self, recipe: str = "hierarchical", split: str | None = None, generators=None,
                 labelled: bool = True):
        """(X, y, rows): features (n, feature_size) float32, labels (n,) int64 (1 = fake, 0 = real,
        -1 = unknown) and store rows (n,) int64 of the ok rows in ``split`` (None or 'all': every
        split) and of ``generators`` (None: all), labelled ones only unless ``labelled`` is False."""
        from item.classify.features import store_features
        from item.misalignment import RECIPES
        from item.store import schema

        if recipe not in RECIPES:
            raise InputError(f"unknown recipe {recipe!r}. Available: {', '.join(RECIPES)}")
        split = None if split in (None, "", "all") else split
        gens = [generators] if isinstance(generators, str) else generators
        with self.reader() as r:
            rows = r.select(label=["real", "fake"] if labelled else None, split=split, generator=gens)
            labels = r.metadata([schema.LABEL])[schema.LABEL][rows].astype(str)
            X = store_features(r, recipe, rows)
        y = np.where(labels == "fake", 1, np.where(labels == "real", 0, -1)).astype(np.int64)
        return X, y, rows

    def split(self, *, val: float = 0.2, test: float = 0.2, by: str = "generator", seed: int = 0,
              overwrite: bool = False, new_only: bool = False, command: str = ""):
        """Assign train / val / test to every ok row (stratified, seeded) in the metadata overlay;
        ``new_only``: only to rows without a split (e.g. committed after an earlier split)."""
        from item.store.annotate import split_store

        return split_store(self.path, val=val, test=test, by=by, seed=seed, overwrite=overwrite, new_only=new_only,
                           command=command or "item.open_store(...).split()")

    def annotate(self, manifest, command: str = ""):
        """Update label / generator / split of stored rows from a manifest (CSV or JSON Lines with
        ``path``, optional ``id``, and any of ``label``, ``generator``, ``split``; empty values keep
        what is stored). Never encodes an image. Returns an ``AnnotateResult``."""
        from item.store.annotate import annotate_store, updates_from_manifest

        updates = updates_from_manifest(manifest)
        return annotate_store(self.path, updates, command=command or f"item store annotate {manifest}")


def open_store(path) -> Store:
    """Open a store for analysis (``Store``); raises ``item.errors.StoreError`` when there is none."""
    return Store(path)


class Head:
    """A trained head with its metadata: ``predict_proba``, ``predict`` (at its threshold), ``save``."""

    def __init__(self, estimator, info: dict):
        self.estimator = estimator
        self.info = info

    def __repr__(self) -> str:
        over = f" over {len(self.info['stores'])} backbones" if self.info.get("stores") else ""
        return (f"<item head: {self.info.get('kind')} on {self.recipe}{over}, {self.info.get('feature_size')} "
                f"features, "
                f"threshold {self.threshold:.4f}{', RANDOM WEIGHTS' if self.random_weights else ''}>")

    @property
    def backbones(self) -> list[str]:
        """The backbone of each store the head reads, in the order of its feature columns (one for a head
        trained on one store)."""
        from item.classify.train import head_parts

        return [p["backbone"]["label"] for p in head_parts(self.info)]

    @property
    def recipe(self) -> str:
        return self.info["recipe"]

    @property
    def threshold(self) -> float:
        return float(self.info["threshold"])

    @property
    def random_weights(self) -> bool:
        return bool(self.info.get("random_weights"))

    def predict_proba(self, X) -> np.ndarray:
        """X: (n, feature_size) -> (n, 2) float64, columns [P(real), P(fake)]."""
        return self.estimator.predict_proba(X)

    def predict(self, X) -> np.ndarray:
        """X: (n, feature_size) -> (n,) int64, 1 = fake at the head's validation threshold."""
        return (self.predict_proba(X)[:, 1] >= self.threshold).astype(np.int64)

    def save(self, out_dir, *, overwrite: bool = False) -> Path:
        """Write ``out_dir/head.safetensors`` and ``out_dir/head.json`` as one unit; returns ``out_dir``.

        Refuses (HeadError) a folder that holds a head already unless ``overwrite``."""
        from item.classify.heads import _RESERVED, save_head

        save_head(self.estimator, out_dir, {k: v for k, v in self.info.items() if k not in _RESERVED},
                  overwrite=overwrite)
        return Path(out_dir)


def _train_config(recipe, kind, train_split, val_split, val_fraction, train_generators, seed, hyper, max_memory=0):
    from dataclasses import fields

    from item.classify.heads import HeadConfig
    from item.classify.train import TrainConfig

    known = {f.name for f in fields(HeadConfig)} - {"kind", "random_state"}
    unknown = sorted(set(hyper) - known)
    if unknown:
        raise InputError(f"unknown head option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    if "hidden" in hyper:
        hyper = {**hyper, "hidden": tuple(int(h) for h in hyper["hidden"])}
    gens = (train_generators,) if isinstance(train_generators, str) else tuple(train_generators or ())
    return TrainConfig(recipe=recipe, head=HeadConfig(kind=kind, **hyper), train_split=train_split,
                       val_split=val_split or None, val_fraction=val_fraction, train_generators=gens, seed=seed,
                       max_memory=int(max_memory or 0))


def train_head(store, *, recipe: str = "hierarchical", kind: str = "mlp", train_split: str = "train",
               val_split: str | None = "val", val_fraction: float = 0.2, train_generators=None, seed: int = 0,
               max_memory: int = 0, **hyper) -> Head:
    """Train a head on a store (``Store`` or path), as ``item train`` does; nothing is written.

    ``store`` may be a list of stores of the same images, one per backbone (``item train A B``): their rows
    are joined by image id (``head.info['join']`` has the counts joined and dropped), each store's recipe
    features are put side by side in the order given, and ``head.info['stores']`` records each store's
    fingerprint, backbone and feature columns.

    ``hyper``: head hyperparameters of ``item.classify.heads.HeadConfig`` (hidden, dropout, lr, C, ...).
    ``max_memory``: bytes the feature rows may take (0: half the RAM); more are streamed from the store.
    ``train_split='all'``: every labelled row outside the validation split.
    """
    from item.classify.train import fit_head

    cfg = _train_config(recipe, kind, train_split, val_split, val_fraction, train_generators, seed, hyper, max_memory)
    estimator, info = fit_head(_stores(store), cfg)
    warn_random_weights(bool(info.get("random_weights")))
    # The same metadata a saved and reloaded head has (kind, config, feature size).
    import dataclasses

    info = {"kind": estimator.kind, "config": dataclasses.asdict(estimator._cfg()),
            "feature_size": int(estimator.n_features_in_), **info}
    return Head(estimator, info)


def load_head(path) -> Head:
    """A head saved by ``Head.save`` or ``item train --out``."""
    from item.classify.heads import load_head as _load

    estimator, info = _load(path)
    return Head(estimator, info)


def _head_dir(head, tmp: Path) -> str:
    """A head directory for functions that read heads from disk (an in-memory Head is saved to ``tmp``)."""
    if isinstance(head, Head):
        return str(head.save(tmp / "head"))
    return str(head)


def evaluate(store, head, split: str | None = "test", *, each: bool = False):
    """Per-generator metrics of ``head`` (Head or head directory) on ``split`` (pandas DataFrame).

    ``store``: one store, or a list of stores of the same images, one per backbone, for a head trained on
    several (``train_head([a, b])``); they are matched to the head's backbones by identity, and a missing
    or extra one is refused naming it. ``each``: for a head over several stores, one more column group
    per backbone alone (a head trained on the fly on that store's features, same recipe, kind, seed and
    joined train / validation rows): the columns become a (head, metric) MultiIndex, the per-generator
    columns (generator, reals, n_real, n_fake) first.
    Columns as ``item eval``; ``DataFrame.attrs`` holds 'threshold' (a dict by head with ``each``),
    'random_weights', 'warnings' and, for several stores, 'join' (the counts joined and dropped).
    """
    import tempfile

    import pandas as pd

    from item.classify.train import evaluate as _evaluate

    with tempfile.TemporaryDirectory() as tmp:
        results = _evaluate(_stores(store), [_head_dir(head, Path(tmp))], split, each=each)
    res = next(iter(results.values()))
    random_weights = any(r["info"].get("random_weights") for r in results.values())
    warnings = list(dict.fromkeys(w for r in results.values() for w in r["warnings"]))
    if len(results) == 1:
        df = pd.DataFrame(res["table"])
        threshold = res["threshold"]
    else:
        shared = ["generator", "reals", "n_real", "n_fake"]
        frames = {name: pd.DataFrame(r["table"]).drop(columns=shared) for name, r in results.items()}
        df = pd.concat({"": pd.DataFrame(res["table"])[shared], **frames}, axis=1)
        threshold = {name: r["threshold"] for name, r in results.items()}
    df.attrs.update({"threshold": threshold, "random_weights": random_weights, "warnings": warnings, "split": split})
    if res.get("join"):
        df.attrs["join"] = res["join"]
    warn_random_weights(df.attrs["random_weights"])
    return df


def predict(paths_or_images, head, *, captions=None, device: str = "auto", batch_size: int = 16,
            precision: str | None = None):
    """Score images with ``head`` (Head or head directory): a pandas DataFrame, one row per image.

    ``paths_or_images``: files, folders, manifests (CSV / JSON Lines with ``path`` and optional
    ``caption``) or PIL images, alone or in a list. ``captions``: {path: caption} used instead of
    the captioner. Columns: path, id, status, reason, p_fake, label, threshold, caption,
    caption_source, global_alignment, objects; ``attrs`` holds 'random_weights', 'warnings' and 'precision'
    (the arithmetic the models ran in; ``precision``: fp32, bf16 or auto on the CPU, None for the device's own).
    """
    import tempfile

    import pandas as pd

    from item.classify.predict import predict_files

    items = list(paths_or_images) if isinstance(paths_or_images, (list, tuple)) else [paths_or_images]
    for it in items:
        if not isinstance(it, (str, os.PathLike)) and not (hasattr(it, "convert") and hasattr(it, "mode")):
            raise InputError(f"cannot predict on a {type(it).__name__}: give paths or PIL images")
    with tempfile.TemporaryDirectory() as tmp:
        result = predict_files(items, _head_dir(head, Path(tmp)), device=device, batch_size=batch_size,
                               captions=captions, precision=precision)
    df = pd.DataFrame(result["rows"])
    df.attrs.update({"random_weights": result["random_weights"], "warnings": result["warnings"],
                     "precision": result["precision"]})
    warn_random_weights(result["random_weights"])
    return df
