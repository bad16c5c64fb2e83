"""Feature matrices from a store: any recipe, from the stored raw embeddings, no model loaded."""

from __future__ import annotations

import numpy as np

from item.errors import InputError
from item.misalignment import compute, feature_size
from item.store import StoreReader
from item.store import schema


def reads_stored(compat: dict, recipe: str, recompute: bool = False) -> bool:
    """Whether ``recipe``'s features on a store with ``compat`` are its stored ``misalignment`` column
    (the store's own recipe, not recomputed) rather than computed from the stored embeddings."""
    return recipe == compat.get("recipe") and not recompute


def feature_width(compat: dict, recipe: str, recompute: bool = False) -> int:
    """Columns of :func:`store_features` for ``recipe`` on a store with ``compat`` (its ``recipe``,
    ``embed_dim`` and ``misalignment_dim``): the stored column's width for the store's own recipe,
    ``feature_size(recipe, embed_dim)`` otherwise. The one answer every path (in memory, streamed, a
    head's fit check) takes, so they cannot disagree on a store whose stored vectors have another width
    (a synthetic store's 8-float misalignment)."""
    if reads_stored(compat, recipe, recompute):
        return int(compat["misalignment_dim"])
    return feature_size(recipe, int(compat["embed_dim"]))


def store_features(reader: StoreReader, recipe: str, rows: np.ndarray, chunk_rows: int = 16384,
                   recompute: bool = False) -> np.ndarray:
    """(len(rows), feature_width(reader.compat, recipe)) float32 for the given store rows, in their order.

    Computed from image_emb, caption_emb and the objects' crop/noun embeddings in chunks of
    ``chunk_rows`` images, so memory holds the result plus one chunk. Rows may repeat (e.g. a
    bootstrap sample): each occurrence gets its row's features. The store's own recipe is read from
    its ``misalignment`` column instead, unless ``recompute``.
    """
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if reads_stored(_compat_of(reader), recipe, recompute):
        # Featurize stores this recipe's vectors computed from the float16 embeddings the store keeps,
        # so they equal a recomputation (tests/test_classify.py checks it) and read many times faster.
        return reader.read(schema.MISALIGNMENT, rows)
    out = np.empty((rows.size, feature_size(recipe, reader.embed_dim)), np.float32)
    for s in range(0, rows.size, chunk_rows):
        chunk = rows[s:s + chunk_rows]
        # Work on sorted unique rows: one read per row, and objects map to images by searchsorted.
        uniq, inverse = np.unique(chunk, return_inverse=True)
        feats = records_features(
            recipe, reader.read(schema.IMAGE_EMB, uniq),
            None if recipe == "visual" else reader.read(schema.CAPTION_EMB, uniq),
            None if recipe in ("visual", "global") else reader.objects(
                uniq, columns=[schema.OBJ_IMAGE, schema.GROUNDED, schema.CROP_EMB, schema.NOUN_EMB]),
            uniq)
        out[s:s + chunk.size] = feats[inverse.reshape(-1)]
    return out


def _compat_of(reader) -> dict:
    """What feature_width reads, from a reader (the manifest's recipe is the one its column holds)."""
    return {"recipe": reader.manifest.get("recipe"), "embed_dim": reader.embed_dim,
            "misalignment_dim": reader.misalignment_dim}


def store_feature_width(reader, recipe: str, recompute: bool = False) -> int:
    """:func:`feature_width` of an open store."""
    return feature_width(_compat_of(reader), recipe, recompute)


def records_features(recipe: str, image_emb, caption_emb, objects: dict | None, rows=None) -> np.ndarray:
    """Features from arrays. image_emb, caption_emb: (n, embed_dim). objects holds 'image' (the
    store row of each object's image, with ``rows`` the store rows of the n images, sorted and
    unique; or indices 0..n-1 when rows is None), 'grounded', 'crop_emb', 'noun_emb'.
    Returns (n, feature_size(recipe, embed_dim)) float32."""
    n, d = image_emb.shape
    if objects is None or len(objects.get(schema.OBJ_IMAGE, [])) == 0:
        empty = np.zeros((0, d), np.float32)
        return compute(recipe, image_emb, caption_emb, empty, empty, np.zeros(0, np.int64), np.zeros(0, bool))
    owner = np.asarray(objects[schema.OBJ_IMAGE], np.int64)
    if rows is not None:
        rows = np.asarray(rows, np.int64)
        pos = np.searchsorted(rows, owner)
        if rows.size == 0 or (np.diff(rows) <= 0).any() or (pos >= rows.size).any() or \
                (rows[np.minimum(pos, rows.size - 1)] != owner).any():
            raise InputError("records_features: rows must be sorted, unique and hold every object's image")
        owner = pos
    return compute(recipe, image_emb, caption_emb, objects[schema.CROP_EMB], objects[schema.NOUN_EMB], owner,
                   np.asarray(objects[schema.GROUNDED], bool))


def _as_stored(vectors, d: int) -> np.ndarray:
    """(m, d) float32 embeddings rounded exactly as the store keeps them (schema.EMB_DTYPE)."""
    return np.asarray(vectors, np.float32).reshape(-1, d).astype(schema.EMB_DTYPE).astype(np.float32)


def record_features(recipe: str, records) -> np.ndarray:
    """Features of in-memory ImageRecords (status 'ok'), as prediction computes them.

    Embeddings are first rounded to the store's embedding dtype, so a new image gets exactly the
    features it would get from a store (heads are trained on stored, rounded embeddings).
    Returns (len(records), feature_size(recipe, embed_dim)) float32.
    """
    d = int(np.asarray(records[0].image_emb).shape[-1])
    image_emb = _as_stored([r.image_emb for r in records], d)
    caption_emb = _as_stored([r.caption_emb for r in records], d)
    owner, grounded, crops, nouns = [], [], [], []
    for i, r in enumerate(records):
        for o in r.objects:
            owner.append(i)
            grounded.append(o.box is not None)
            crops.append(o.crop_emb if o.crop_emb is not None else np.zeros(d, np.float32))
            nouns.append(o.noun_emb)
    objects = {schema.OBJ_IMAGE: np.array(owner, np.int64), schema.GROUNDED: np.array(grounded, bool),
               schema.CROP_EMB: _as_stored(crops, d), schema.NOUN_EMB: _as_stored(nouns, d)}
    return records_features(recipe, image_emb, caption_emb, objects)
