"""Misalignment recipes against a hand-written per-image loop."""

import time

import numpy as np
import pytest

from item import misalignment
from item.errors import InputError


def _unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _loop_reference(recipe, image_emb, caption_emb, crop_emb, noun_emb, object_image, grounded):
    """The definition, written the slow obvious way: one image at a time."""
    rows = []
    for i in range(image_emb.shape[0]):
        u0, v0 = _unit(image_emb[i]), _unit(caption_emb[i])
        glob = list(u0 - v0) + [float(u0 @ v0)]
        diffs, coss = [], []
        for j in range(len(object_image)):
            if object_image[j] == i and grounded[j]:
                ui, vi = _unit(crop_emb[j]), _unit(noun_emb[j])
                diffs.append(ui - vi)
                coss.append(float(ui @ vi))
        if diffs:
            loc = list(np.mean(diffs, axis=0)) + [min(coss), float(np.mean(coss)), max(coss), len(coss)]
        else:
            loc = [0.0] * image_emb.shape[1] + [0.0, 0.0, 0.0, 0]
        rows.append({"global": glob, "local": loc, "hierarchical": glob + loc, "visual": list(u0)}[recipe])
    return np.array(rows, dtype=np.float32)


@pytest.fixture
def tiny():
    rng = np.random.default_rng(0)
    n_images, d = 4, 6
    image_emb = rng.normal(size=(n_images, d)).astype(np.float16)
    caption_emb = rng.normal(size=(n_images, d)).astype(np.float16)
    # image 0: two grounded + one ungrounded; image 1: none at all; image 2: only an ungrounded one;
    # image 3: three grounded, listed out of order between other images' objects.
    object_image = np.array([0, 3, 0, 2, 3, 0, 3], dtype=np.int64)
    grounded = np.array([True, True, True, False, True, False, True])
    n_objects = len(object_image)
    crop_emb = rng.normal(size=(n_objects, d)).astype(np.float16)
    noun_emb = rng.normal(size=(n_objects, d)).astype(np.float16)
    return image_emb, caption_emb, crop_emb, noun_emb, object_image, grounded


@pytest.mark.parametrize("recipe", ["global", "local", "hierarchical", "visual"])
def test_recipes_equal_per_image_loop(tiny, recipe):
    got = misalignment.compute(recipe, *tiny)
    want = _loop_reference(recipe, *tiny)
    assert got.dtype == np.float32
    assert got.shape == (4, misalignment.feature_size(recipe, 6))
    assert len(misalignment.feature_names(recipe, 6)) == got.shape[1]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_zero_grounded_and_ungrounded_ignored(tiny):
    loc = misalignment.compute("local", *tiny)
    names = misalignment.feature_names("local", 6)
    count = loc[:, names.index("local_count")]
    assert count.tolist() == [2, 0, 0, 3]
    assert not loc[1].any() and not loc[2].any()
    # Changing the ungrounded object's embeddings must not change anything.
    image_emb, caption_emb, crop_emb, noun_emb, object_image, grounded = tiny
    crop2 = crop_emb.copy()
    crop2[~grounded] = 7.0
    np.testing.assert_array_equal(
        misalignment.compute("local", image_emb, caption_emb, crop2, noun_emb, object_image, grounded), loc
    )


def test_feature_size_and_names():
    assert misalignment.DEFAULT_RECIPE in misalignment.RECIPES
    assert set(misalignment.RECIPES) == {"global", "local", "hierarchical", "visual"}
    assert misalignment.feature_size("hierarchical", 768) == 1541
    assert misalignment.feature_size("global", 768) == 769
    assert misalignment.feature_size("local", 768) == 772
    assert misalignment.feature_size("visual", 768) == 768
    names = misalignment.feature_names("hierarchical", 3)
    assert len(set(names)) == len(names) == 11
    assert names[3] == "global_cos" and names[-1] == "local_count"


def test_unknown_recipe_lists_valid():
    with pytest.raises(InputError, match="hierarchical") as err:
        misalignment.feature_size("nope", 8)
    assert "global" in str(err.value) and "visual" in str(err.value)
    with pytest.raises(InputError):
        misalignment.compute("nope", np.zeros((1, 2)), np.zeros((1, 2)), None, None, None, None)


def test_bad_inputs_refused(tiny):
    image_emb, caption_emb, crop_emb, noun_emb, object_image, grounded = tiny
    with pytest.raises(InputError, match="outside"):
        misalignment.compute("local", image_emb, caption_emb, crop_emb, noun_emb, object_image + 1, grounded)
    with pytest.raises(InputError):
        misalignment.compute("global", image_emb, caption_emb[:3], crop_emb, noun_emb, object_image, grounded)
    with pytest.raises(InputError):
        misalignment.compute("local", image_emb, caption_emb, crop_emb[:3], noun_emb, object_image, grounded)


def test_pair_scores_and_zero_vectors():
    u = np.array([[1, 0], [3, 4], [0, 0]], dtype=np.float16)
    v = np.array([[2, 0], [4, -3], [1, 1]], dtype=np.float16)
    s = misalignment.pair_scores(u, v)
    assert s.dtype == np.float32
    np.testing.assert_allclose(s, [1.0, 0.0, 0.0], atol=1e-6)
    assert np.isfinite(misalignment.compute("global", u, v, None, None, None, None)).all()


def test_no_objects_at_all():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 4)).astype(np.float32)
    empty = np.zeros((0, 4), np.float32)
    out = misalignment.compute("hierarchical", x, x, empty, empty, np.zeros(0, np.int64), np.zeros(0, bool))
    assert out.shape == (3, 13)
    assert not out[:, 5:].any()
    np.testing.assert_allclose(out[:, 4], 1.0, rtol=1e-6)


def test_vectorised_speed_1e5_images():
    rng = np.random.default_rng(2)
    n_images, d = 100_000, 32
    n_objects = 300_000
    image_emb = rng.normal(size=(n_images, d)).astype(np.float16)
    caption_emb = rng.normal(size=(n_images, d)).astype(np.float16)
    crop_emb = rng.normal(size=(n_objects, d)).astype(np.float16)
    noun_emb = rng.normal(size=(n_objects, d)).astype(np.float16)
    object_image = rng.integers(0, n_images, n_objects)
    grounded = rng.random(n_objects) < 0.8
    t0 = time.perf_counter()
    out = misalignment.compute("hierarchical", image_emb, caption_emb, crop_emb, noun_emb, object_image, grounded)
    elapsed = time.perf_counter() - t0
    assert out.shape == (n_images, 2 * d + 5)
    counts = out[:, -1]
    np.testing.assert_array_equal(counts, np.bincount(object_image[grounded], minlength=n_images))
    assert elapsed < 5.0, elapsed
