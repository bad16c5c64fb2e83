"""An image's boxes, captions and embeddings do not depend on what shares its batch.

A detector forward pads its images to the largest of the batch; that padding once moved an image's box by
22 px when a 90x120 image shared its batch. Grounders now run one forward per group of equally shaped
inputs, so ``--ground-batch-size 4`` gives the boxes of one image at a time, for every grounder, and
featurize (a store), predict (many files at once) and serve (one upload at a time) store the same features.

Tiny random models (seeded): the boxes mean nothing; only their independence from the batch is tested. What is
left is float rounding (a group's prompts are padded to its longest); the bound the issue asks (1 px) is what
is asserted for boxes.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from item.cli import app
from item.featurize import FeaturizeConfig, featurize_images, load_models, resolve_models
from item.featurize.models.grounding import shape_groups
from item.store import StoreReader, schema

SIZES = [(120, 90), (90, 120), (64, 64), (200, 80), (120, 90), (50, 150), (120, 90), (64, 64)]
CAPTION = "a dog next to a car under a tree near a man"


def _images(n_seed: int = 0):
    rng = np.random.default_rng(n_seed)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]


def _boxes(boxes):
    return [None if b is None else (b.x0, b.y0, b.x1, b.y1) for b in boxes]


def _assert_same_boxes(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x is None) == (y is None)
        if x is not None:
            assert np.abs(np.array(x) - np.array(y)).max() <= 1.0, (x, y)


@pytest.fixture(scope="module")
def tiny():
    return load_models(resolve_models("tiny-random"), "cpu")


@pytest.mark.parametrize("grounder", ["tiny-random", "owlv2-tiny-random"])
def test_grounding_mixed_sizes_in_one_call_equals_one_image_at_a_time(grounder):
    from item.featurize.models.grounders import load_grounder

    g = load_grounder(grounder, box_threshold=0.0, text_threshold=0.0)
    images = _images()
    nouns = [["dog", "car", "tree"], ["man"], ["bike", "road"], ["sky", "boat", "cat", "house"]] * 2
    together = g.ground(images, nouns)
    for im, ns, boxes in zip(images, nouns, together):
        alone = g.ground([im], [ns])[0]
        _assert_same_boxes(_boxes(boxes), _boxes(alone))
        assert [b and b.score for b in boxes] == pytest.approx([b and b.score for b in alone], abs=1e-5)


def test_only_equal_shapes_share_a_forward():
    class P:
        def __init__(self, *shape):
            import torch

            self.pixel_values = torch.zeros(shape)

    prepared = [P(3, 8, 8), P(3, 8, 9), P(3, 8, 8), None, P(3, 8, 9)]
    assert shape_groups(prepared, [0, 1, 2, 4]) == [[0, 2], [1, 4]]


def test_featurize_ground_batch_size_4_equals_one_at_a_time(tiny):
    images = _images(1)
    caps = [CAPTION] * len(images)
    one = featurize_images(images, models=tiny, captions=caps,
                           config=FeaturizeConfig(workers=0, batch_size=8, ground_batch_size=1))
    four = featurize_images(images, models=tiny, captions=caps,
                            config=FeaturizeConfig(workers=0, batch_size=8, ground_batch_size=4))
    grounded = 0
    for a, b in zip(one, four):
        _assert_same_boxes([o.box for o in a.objects], [o.box for o in b.objects])
        grounded += sum(o.box is not None for o in a.objects)
        np.testing.assert_allclose(a.image_emb, b.image_emb, atol=1e-6)
        np.testing.assert_allclose(a.misalignment, b.misalignment, atol=1e-5)
    assert grounded >= len(images)  # thresholds 0.0: the object path is exercised


def test_captions_do_not_depend_on_the_batch(tiny):
    images = _images(2)
    together = featurize_images(images, models=tiny, config=FeaturizeConfig(workers=0, batch_size=8))
    alone = [featurize_images([im], models=tiny, config=FeaturizeConfig(workers=0, batch_size=1))[0] for im in images]
    assert [r.caption for r in together] == [r.caption for r in alone]
    for a, b in zip(together, alone):
        _assert_same_boxes([o.box for o in a.objects], [o.box for o in b.objects])


def test_featurize_predict_and_serve_store_the_same_features(tmp_path, tiny):
    """The CLI (a store, --ground-batch-size 4, one batch of mixed sizes), predict's path (all files in one
    call) and serve's (one upload at a time) give the same boxes, captions and embeddings for each image."""
    paths = []
    for i, im in enumerate(_images(3)):
        p = tmp_path / f"im{i}.png"
        im.save(p)
        paths.append(str(p))
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "caption"])
        w.writerows([[p, "real", CAPTION] for p in paths])
    store = tmp_path / "s"
    r = CliRunner().invoke(app, ["featurize", str(manifest), "--store", str(store), "--models", "tiny-random",
                                 "--workers", "0", "--device", "cpu", "--batch-size", "8", "--ground-batch-size", "4",
                                 "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["ground_batch_size"] == 4
    with StoreReader(store) as rd:
        meta = rd.metadata([schema.PATH, schema.CAPTION])
        rows = [list(meta[schema.PATH]).index(p) for p in paths]
        image_emb = rd.read(schema.IMAGE_EMB, rows)
        objs = rd.objects(columns=[schema.OBJ_IMAGE, schema.BOX, schema.GROUNDED])
        assert rd.manifest["runs"][-1]["ground_batch_size"] == 4
    predicted = featurize_images(paths, models=tiny, captions=[CAPTION] * len(paths),
                                 config=FeaturizeConfig(workers=0, batch_size=16))
    served = [featurize_images([p], models=tiny, captions=[CAPTION], config=FeaturizeConfig(workers=0, batch_size=1))[0]
              for p in paths]
    for k, (row, a, b) in enumerate(zip(rows, predicted, served)):
        mine = objs[schema.OBJ_IMAGE] == row
        stored = [tuple(bx) if g else None for bx, g in zip(objs[schema.BOX][mine], objs[schema.GROUNDED][mine])]
        _assert_same_boxes(stored, [o.box for o in a.objects])
        _assert_same_boxes(stored, [o.box for o in b.objects])
        np.testing.assert_allclose(image_emb[k], a.image_emb, atol=2e-3)  # the store keeps float16
        np.testing.assert_allclose(a.image_emb, b.image_emb, atol=1e-6)
        assert a.caption == b.caption == meta[schema.CAPTION][row]
