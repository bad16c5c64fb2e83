"""Feature matrices from a store: any recipe, from the stored raw embeddings, no model loaded."""

from __future__ import annotations

import numpy as np

from item.misalignment import compute, feature_size
from item.store import StoreReader
from item.store import schema


def store_features(reader: StoreReader, recipe: str, rows: np.ndarray, chunk_rows: int = 16384) -> np.ndarray:
    """(len(rows), feature_size(recipe, embed_dim)) float32 for the given store rows, in their order.

    Computed from image_emb, caption_emb and the objects' crop/noun embeddings in chunks of
    ``chunk_rows`` images, so memory holds the result plus one chunk.
    """
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((rows.size, feature_size(recipe, reader.embed_dim)), np.float32)
    for s in range(0, rows.size, chunk_rows):
        chunk = rows[s:s + chunk_rows]
        out[s:s + chunk.size] = records_features(
            recipe, reader.read(schema.IMAGE_EMB, chunk),
            None if recipe == "visual" else reader.read(schema.CAPTION_EMB, chunk),
            None if recipe in ("visual", "global") else reader.objects(
                chunk, columns=[schema.OBJ_IMAGE, schema.GROUNDED, schema.CROP_EMB, schema.NOUN_EMB]),
            chunk)
    return out


def records_features(recipe: str, image_emb, caption_emb, objects: dict | None, rows=None) -> np.ndarray:
    """Features from arrays: objects holds 'image' (store rows, or indices 0..n-1 when rows is None),
    'grounded', 'crop_emb', 'noun_emb'."""
    n, d = image_emb.shape
    if objects is None or len(objects.get(schema.OBJ_IMAGE, [])) == 0:
        empty = np.zeros((0, d), np.float32)
        return compute(recipe, image_emb, caption_emb, empty, empty, np.zeros(0, np.int64), np.zeros(0, bool))
    owner = np.asarray(objects[schema.OBJ_IMAGE], np.int64)
    if rows is not None:
        pos = {int(r): i for i, r in enumerate(rows)}
        owner = np.array([pos[int(o)] for o in owner], np.int64)
    return compute(recipe, image_emb, caption_emb, objects[schema.CROP_EMB], objects[schema.NOUN_EMB], owner,
                   np.asarray(objects[schema.GROUNDED], bool))


def record_features(recipe: str, records) -> np.ndarray:
    """Features of in-memory ImageRecords (status 'ok'), as prediction computes them."""
    image_emb = np.array([r.image_emb for r in records], np.float32)
    caption_emb = np.array([r.caption_emb for r in records], np.float32)
    d = image_emb.shape[1]
    owner, grounded, crops, nouns = [], [], [], []
    for i, r in enumerate(records):
        for o in r.objects:
            owner.append(i)
            grounded.append(o.box is not None)
            crops.append(o.crop_emb if o.crop_emb is not None else np.zeros(d, np.float32))
            nouns.append(o.noun_emb)
    objects = {schema.OBJ_IMAGE: np.array(owner, np.int64), schema.GROUNDED: np.array(grounded, bool),
               schema.CROP_EMB: np.array(crops, np.float32).reshape(-1, d),
               schema.NOUN_EMB: np.array(nouns, np.float32).reshape(-1, d)}
    return records_features(recipe, image_emb, caption_emb, objects)
