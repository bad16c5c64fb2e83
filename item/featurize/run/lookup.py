"""Image embeddings only: CLIP's image tower on whole images, for lookups by image (``neighbors --on image``).

Looking up what an image resembles needs its ``image_emb`` and nothing else: no caption, no nouns,
no boxes. Loading the captioner and the grounder for it costs most of a query's time (and memory),
so this path loads CLIP alone, through the same loader, decoder and preprocessing as a featurize
run, and gives the vector a featurize run would have stored.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from item.errors import IncompatibleError
from item.featurize.models.presets import ModelSpec


def load_image_tower(spec: ModelSpec, device: str = "auto"):
    """The run's models with CLIP alone loaded (captioner and grounder switched off)."""
    from item.featurize.models.loading import load_models

    return load_models(dataclasses.replace(spec, captioner="none", grounder="none"), device)


def embed_image_files(paths: list[str], spec: ModelSpec, *, device: str = "auto", batch_size: int = 16,
                      expect: dict | None = None) -> list[tuple[str, str, np.ndarray | None]]:
    """(id, skip reason or '', image_emb (embed_dim,) float32 L2-normalised or None) per path, in order.

    ``expect``: a store's or head's compat; CLIP's model, weights tag, embedding size and
    preprocessing must match it (IncompatibleError otherwise).
    """
    import os

    from item.featurize.inputs.discover import InputRow
    from item.featurize.run.config import FeaturizeConfig
    from item.featurize.run.loader import Item, iter_decoded
    from item.featurize.run.planning import hash_inputs
    from item.featurize.run.steps import Featurizer

    models = load_image_tower(spec, device)
    if expect:
        got = models.clip.info
        pairs = (("clip_model", got["model"]), ("clip_pretrained", got["pretrained"]),
                 ("embed_dim", int(got["embed_dim"])), ("preprocess_hash", got["preprocess_hash"]))
        diff = [f"{k}: recorded {expect[k]!r}, loaded {v!r}" for k, v in pairs if k in expect and expect[k] != v]
        if diff:
            raise IncompatibleError("the CLIP model that loaded differs from the one recorded: " + "; ".join(diff))
    config = FeaturizeConfig(workers=0, batch_size=batch_size, device=device)
    rows = [InputRow(path=os.path.abspath(p), label="unknown", generator="", split="", caption=None,
                     origin="lookup") for p in paths]
    items = [Item(fid, row, reason=reason) for row, (fid, reason) in zip(rows, hash_inputs(rows))]
    feat = Featurizer(models, config)
    out: list[tuple[str, str, np.ndarray | None]] = []
    for batch in iter_decoded(items, models, config):  # in input order (no shuffling)
        good = [it for it in batch if not it.reason]
        emb = iter(feat.images([it.pixels for it in good]))
        out.extend((it.id, it.reason, None) if it.reason else (it.id, "", next(emb)) for it in batch)
    return out
