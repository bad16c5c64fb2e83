"""Misalignment features: how badly an image agrees with its caption in CLIP space.

This module is the project's definition (DESIGN.md, "Misalignment features"); pure numpy, so the
featurize stage (which writes the default recipe into the store) and the classify stage (which may
compute any recipe from the stored raw embeddings) share one implementation.

With u an image-side embedding (image_emb or crop_emb) and v its text-side partner (caption_emb or
noun_emb), both L2-normalised in float32:

- pair vector ``u - v`` and pair score ``cos(u, v)``;
- ``global``: ``[u0 - v0 (embed_dim), cos(u0, v0) (1)]`` for (image_emb, caption_emb);
- ``local``: ``[mean of (ui - vi) over the image's grounded objects (embed_dim),
  min, mean, max of their cos (3), number of grounded objects (1)]``.
  An image with no grounded object gets zeros in every local column and a count of 0; the count
  column lets a head tell "no objects" apart from "objects that agree perfectly";
- ``hierarchical``: global followed by local (the default);
- ``visual``: image_emb alone, L2-normalised (the UnivFD-style baseline, no text at all).

Ungrounded objects (``grounded == False``) are ignored. A zero-norm embedding stays a zero vector
after normalisation (its cosine is 0) instead of producing NaN.
"""

from __future__ import annotations

import numpy as np

from item.errors import InputError

RECIPES: dict[str, str] = {
    "global": "image vs caption: pair vector u0 - v0 and cos(u0, v0)",
    "local": "crops vs nouns: mean pair vector over grounded objects, min/mean/max cos, object count",
    "hierarchical": "global followed by local (the default)",
    "visual": "image_emb alone, L2-normalised (UnivFD-style baseline, no text)",
}
DEFAULT_RECIPE = "hierarchical"

_EPS = 1e-12


def _check_recipe(recipe: str) -> None:
    if recipe not in RECIPES:
        raise InputError(f"unknown feature recipe {recipe!r}. Available: {', '.join(RECIPES)}")


def _check_dim(embed_dim: int) -> int:
    if isinstance(embed_dim, bool) or int(embed_dim) != embed_dim or embed_dim < 1:
        raise InputError(f"embed_dim must be a positive integer, got {embed_dim!r}")
    return int(embed_dim)


def feature_size(recipe: str, embed_dim: int) -> int:
    """Number of columns ``compute(recipe, ...)`` returns for embeddings of width ``embed_dim``."""
    _check_recipe(recipe)
    d = _check_dim(embed_dim)
    return {"global": d + 1, "local": d + 4, "hierarchical": 2 * d + 5, "visual": d}[recipe]


def feature_names(recipe: str, embed_dim: int) -> list[str]:
    """Column names, in order, of ``compute(recipe, ...)``; ``len == feature_size(recipe, embed_dim)``."""
    _check_recipe(recipe)
    d = _check_dim(embed_dim)
    glob = [f"global_diff_{i}" for i in range(d)] + ["global_cos"]
    loc = [f"local_diff_mean_{i}" for i in range(d)] + [
        "local_cos_min",
        "local_cos_mean",
        "local_cos_max",
        "local_count",
    ]
    if recipe == "global":
        return glob
    if recipe == "local":
        return loc
    if recipe == "hierarchical":
        return glob + loc
    return [f"image_{i}" for i in range(d)]


def _normalise(x: np.ndarray, name: str) -> np.ndarray:
    """(n, d) any float -> (n, d) float32 with unit rows (zero rows stay zero)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise InputError(f"{name} must be 2-D (rows, embed_dim), got shape {x.shape}")
    x = x.astype(np.float32, copy=True)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    x /= np.maximum(norms, _EPS)[:, None]
    return x


def pair_scores(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Cosine of each row pair.

    u, v: (m, embed_dim) float16/float32, re-normalised here in float32.
    Returns (m,) float32.
    """
    u = _normalise(u, "u")
    v = _normalise(v, "v")
    if u.shape != v.shape:
        raise InputError(f"u and v must have the same shape, got {u.shape} and {v.shape}")
    return np.einsum("ij,ij->i", u, v).astype(np.float32, copy=False)


def _global(image_emb: np.ndarray, caption_emb: np.ndarray) -> np.ndarray:
    u = _normalise(image_emb, "image_emb")
    v = _normalise(caption_emb, "caption_emb")
    if u.shape != v.shape:
        raise InputError(f"image_emb {u.shape} and caption_emb {v.shape} must have the same shape")
    out = np.empty((u.shape[0], u.shape[1] + 1), dtype=np.float32)
    np.subtract(u, v, out=out[:, :-1])
    out[:, -1] = np.einsum("ij,ij->i", u, v)
    return out


def _local(n_images, embed_dim, crop_emb, noun_emb, object_image, grounded) -> np.ndarray:
    crop_emb = np.asarray(crop_emb)
    noun_emb = np.asarray(noun_emb)
    object_image = np.asarray(object_image)
    grounded = np.asarray(grounded)
    n_objects = object_image.shape[0] if object_image.ndim == 1 else -1
    if object_image.ndim != 1 or grounded.shape != (n_objects,):
        raise InputError(
            f"object_image and grounded must both have shape (n_objects,), got {object_image.shape} and {grounded.shape}"
        )
    if crop_emb.shape != (n_objects, embed_dim) or noun_emb.shape != (n_objects, embed_dim):
        raise InputError(
            f"crop_emb {crop_emb.shape} and noun_emb {noun_emb.shape} must both be (n_objects, embed_dim) = ({n_objects}, {embed_dim})"
        )
    if n_objects and not np.issubdtype(object_image.dtype, np.integer):
        raise InputError(f"object_image must hold integer image indices, got dtype {object_image.dtype}")
    if grounded.dtype != np.bool_:
        raise InputError(f"grounded must be a bool array, got dtype {grounded.dtype}")
    if n_objects and (object_image.min() < 0 or object_image.max() >= n_images):
        raise InputError(f"object_image holds indices outside 0..{n_images - 1}")

    out = np.zeros((n_images, embed_dim + 4), dtype=np.float32)
    keep = np.flatnonzero(grounded)
    if keep.size == 0:
        return out
    img = object_image[keep].astype(np.int64)
    # Group objects by image with a stable sort, then reduce each contiguous run: one pass, no per-image loop.
    order = np.argsort(img, kind="stable")
    img = img[order]
    rows = keep[order]
    u = _normalise(crop_emb[rows], "crop_emb")
    v = _normalise(noun_emb[rows], "noun_emb")
    diff = u - v
    cos = np.einsum("ij,ij->i", u, v)
    starts = np.flatnonzero(np.r_[True, img[1:] != img[:-1]])
    owners = img[starts]
    counts = np.diff(np.r_[starts, img.size]).astype(np.float32)
    # Sum in float64 so the mean does not depend on how many objects an image has; store float32.
    out[owners, :embed_dim] = np.add.reduceat(diff.astype(np.float64), starts, axis=0) / counts[:, None]
    out[owners, embed_dim] = np.minimum.reduceat(cos, starts)
    out[owners, embed_dim + 1] = np.add.reduceat(cos.astype(np.float64), starts) / counts
    out[owners, embed_dim + 2] = np.maximum.reduceat(cos, starts)
    out[owners, embed_dim + 3] = counts
    return out


def compute(recipe, image_emb, caption_emb, crop_emb, noun_emb, object_image, grounded) -> np.ndarray:
    """Misalignment feature matrix under ``recipe``.

    image_emb, caption_emb: (n_images, embed_dim) float16/float32.
    crop_emb, noun_emb: (n_objects, embed_dim) float16/float32.
    object_image: (n_objects,) int64, the row in 0..n_images-1 each object belongs to.
    grounded: (n_objects,) bool; objects with False are ignored.
    Returns (n_images, feature_size(recipe, embed_dim)) float32. The ``visual`` recipe reads only
    image_emb (the other arguments may be None); ``global`` does not read the object arguments.
    """
    _check_recipe(recipe)
    if recipe == "visual":
        return _normalise(image_emb, "image_emb")
    image_emb = np.asarray(image_emb)
    if image_emb.ndim != 2:
        raise InputError(f"image_emb must be (n_images, embed_dim), got shape {image_emb.shape}")
    n_images, embed_dim = image_emb.shape
    parts = []
    if recipe in ("global", "hierarchical"):
        parts.append(_global(image_emb, caption_emb))
    if recipe in ("local", "hierarchical"):
        parts.append(_local(n_images, embed_dim, crop_emb, noun_emb, object_image, grounded))
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
