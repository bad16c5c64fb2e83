"""Seeded synthetic stores for tests and benchmarks: embeddings shaped like real ones, no model needed.

Image embeddings are a mixture of clusters on the unit sphere (approximate indexes have structure
to exploit, unlike uniform noise). Captions and nouns are drawn near their image and crops, less
near for fakes when ``signal`` > 0, which plants the misalignment clue the heads should find.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from item.store import schema
from item.store.writer import ImageRecord, ObjectRecord, StoreWriter

SPLITS = ("train", "val", "test")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def synthetic_compat(embed_dim: int, misalignment_dim: int, recipe: str = "hierarchical") -> dict:
    return {"clip_model": "synthetic", "clip_pretrained": "", "embed_dim": embed_dim, "preprocess_hash": "synthetic",
            "captioner": "synthetic", "grounder": "synthetic", "recipe": recipe,
            "misalignment_dim": misalignment_dim, "random_weights": True, "perturbation": "", "max_objects": 8, "alignment": "",
            **{k: "synthetic" for k in schema.IDENTITY_KEYS}}


def synthetic_records(n_images: int, embed_dim: int, *, generators=("gen_a", "gen_b"), seed: int = 0,
                      max_objects: int = 4, signal: float = 1.0, n_clusters: int = 64,
                      misalignment_fn: Callable | None = None, misalignment_dim: int = 8,
                      split_fractions=(0.6, 0.2, 0.2)) -> Iterator[ImageRecord]:
    """Yield ``n_images`` seeded ImageRecords; labels alternate real/fake, generators cycle.

    ``misalignment_fn(image_emb, caption_emb, crop_emb, noun_emb, object_image, grounded) -> (1, m)``
    computes each row's misalignment vector (default: a seeded random vector of ``misalignment_dim``).
    """
    rng = np.random.default_rng(seed)
    centers = _unit(rng.normal(size=(n_clusters, embed_dim)))
    cuts = np.cumsum(split_fractions)
    for i in range(n_images):
        fake = i % 2 == 1
        gen = generators[(i // 2) % len(generators)]
        u = rng.random()
        split = SPLITS[int(np.searchsorted(cuts, u, side="right"))] if u < cuts[-1] else SPLITS[-1]
        img = _unit(centers[rng.integers(n_clusters)] + 0.35 * rng.normal(size=embed_dim) / np.sqrt(embed_dim) * 4)
        align = 0.85 - (0.35 * signal if fake else 0.0)
        cap = _unit(align * img + (1 - align) * _unit(rng.normal(size=embed_dim)))
        n_obj = int(rng.integers(0, max_objects + 1))
        objects = []
        for j in range(n_obj):
            crop = _unit(img + 0.8 * _unit(rng.normal(size=embed_dim)))
            noun = _unit(align * crop + (1 - align) * _unit(rng.normal(size=embed_dim)))
            grounded = rng.random() > 0.2
            box = (float(j), float(j), float(j + 10), float(j + 12)) if grounded else None
            objects.append(ObjectRecord(noun=f"thing{j}", noun_emb=noun, box=box,
                                        score=float(rng.random()) if grounded else 0.0,
                                        crop_emb=crop if grounded else None))
        if misalignment_fn is None:
            mis = rng.normal(size=misalignment_dim).astype(np.float32)
        else:
            crops = np.array([o.crop_emb if o.crop_emb is not None else np.zeros(embed_dim, np.float32)
                              for o in objects], np.float32).reshape(-1, embed_dim)
            nouns = np.array([o.noun_emb for o in objects], np.float32).reshape(-1, embed_dim)
            mis = misalignment_fn(img[None], cap[None], crops, nouns, np.zeros(n_obj, np.int64),
                                  np.array([o.box is not None for o in objects], bool))[0]
        yield ImageRecord(
            id=f"{seed:08x}{i:056x}", path=f"/synthetic/{gen}/{'fake' if fake else 'real'}/{i:07d}.png",
            label="fake" if fake else "real", generator=gen, split=split, caption=f"synthetic caption {i}",
            caption_encoded=f"synthetic caption {i}",
            caption_source="synthetic", nouns=[o.noun for o in objects], width=256, height=256, format="PNG",
            image_emb=img, caption_emb=cap, misalignment=mis, objects=objects)


def write_synthetic_store(root, n_images: int, embed_dim: int, *, shard_size: int = 4096,
                          misalignment_fn: Callable | None = None, misalignment_dim: int = 8,
                          recipe: str = "hierarchical", **kwargs) -> str:
    """Write a synthetic store through the public writer; returns its path."""
    compat = synthetic_compat(embed_dim, misalignment_dim, recipe)
    models = {"clip": {"model": "synthetic", "random_weights": True}}
    with StoreWriter(root, compat=compat, models=models, recipe=recipe, shard_size=shard_size) as w:
        for rec in synthetic_records(n_images, embed_dim, misalignment_fn=misalignment_fn,
                                     misalignment_dim=misalignment_dim, **kwargs):
            w.add(rec)
    return str(root)


def write_synthetic_store_fast(root, n_images: int, embed_dim: int, *, recipe: str = "hierarchical",
                               shard_size: int = 16384, seed: int = 0, signal: float = 1.0, n_clusters: int = 64,
                               max_objects: int = 4, generators=("gen_a", "gen_b"),
                               split_fractions=(0.6, 0.2, 0.2), align_spread: float = 0.0,
                               log: Callable | None = None) -> str:
    """The distribution of ``synthetic_records`` (clusters on the sphere, fakes less aligned with their caption
    and nouns when ``signal`` > 0, 0..max_objects objects, 80% grounded) drawn a shard at a time with numpy,
    each shard's misalignment computed by ``item.misalignment.compute(recipe)`` in one call: a million rows in
    minutes instead of hours. Another random stream than ``write_synthetic_store`` (not the same rows).

    ``align_spread``: the standard deviation of a per-image (and per-object) jitter of the alignment. At 0 the
    image-caption cosine is a function of the label alone and any ``signal`` separates the classes
    perfectly; above 0 the classes overlap and a head's AUROC measures how well it combines the cues.
    ``recipe=None``: images only (no objects, a seeded 8-float misalignment vector), for lookup benchmarks.
    """
    from item.misalignment import compute, feature_size

    if recipe is None:
        max_objects = 0

    rng = np.random.default_rng(seed)
    centers = _unit(rng.normal(size=(n_clusters, embed_dim)))
    cuts = np.cumsum(split_fractions)

    def noise(m):
        return _unit(rng.normal(size=(m, embed_dim)).astype(np.float32))

    mis_dim = feature_size(recipe, embed_dim) if recipe else 8
    compat = synthetic_compat(embed_dim, mis_dim, recipe or "hierarchical")
    models = {"clip": {"model": "synthetic", "random_weights": True}}
    with StoreWriter(root, compat=compat, models=models, recipe=recipe or "hierarchical", shard_size=shard_size) as w:
        for start in range(0, n_images, shard_size):
            m = min(shard_size, n_images - start)
            i = np.arange(start, start + m)
            fake = i % 2 == 1
            img = _unit(centers[rng.integers(n_clusters, size=m)]
                        + 1.4 / np.sqrt(embed_dim) * rng.normal(size=(m, embed_dim)))
            align = (0.85 - 0.35 * signal * fake).astype(np.float32)[:, None]
            a_img = np.clip(align + align_spread * rng.normal(size=(m, 1)), 0.05, 0.99).astype(np.float32)
            cap = _unit(a_img * img + (1 - a_img) * noise(m))
            n_obj = rng.integers(0, max_objects + 1, size=m)
            owner = np.repeat(np.arange(m), n_obj)
            crop = _unit(img[owner] + 0.8 * noise(owner.size))
            a_obj = np.clip(align[owner] + align_spread * rng.normal(size=(owner.size, 1)), 0.05, 0.99)
            noun = _unit(a_obj * crop + (1 - a_obj) * noise(owner.size))
            grounded = rng.random(owner.size) > 0.2
            if recipe:
                mis = compute(recipe, img, cap, np.where(grounded[:, None], crop, 0).astype(np.float32), noun,
                              owner, grounded)
            else:
                mis = rng.normal(size=(m, 8)).astype(np.float32)
            u = rng.random(m)
            splits = np.array(SPLITS)[np.minimum(np.searchsorted(cuts, u, side="right"), len(SPLITS) - 1)]
            first = np.r_[0, np.cumsum(n_obj)]
            recs = []
            for j in range(m):
                k = int(i[j])
                gen = generators[(k // 2) % len(generators)]
                objects = []
                for o in range(first[j], first[j + 1]):
                    g = bool(grounded[o])
                    objects.append(ObjectRecord(noun=f"thing{o - first[j]}", noun_emb=noun[o],
                                                box=(0.0, 0.0, 10.0, 12.0) if g else None, score=0.5 if g else 0.0,
                                                crop_emb=crop[o] if g else None))
                label = "fake" if fake[j] else "real"
                recs.append(ImageRecord(
                    id=f"{seed:08x}{k:056x}", path=f"/synthetic/{gen}/{label}/{k:07d}.png", label=label,
                    generator=gen, split=str(splits[j]), caption=f"synthetic caption {k}",
                    caption_encoded=f"synthetic caption {k}", caption_source="synthetic",
                    nouns=[o.noun for o in objects], width=256, height=256, format="PNG", image_emb=img[j],
                    caption_emb=cap[j], misalignment=mis[j], objects=objects))
            w.add_batch(recs)
            if log:
                log(f"synthetic store {root}: {start + m} / {n_images} rows")
    return str(root)
