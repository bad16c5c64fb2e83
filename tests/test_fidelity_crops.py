"""Crops keep the whole box; boxes in the grounder's padding are no boxes; padding is bounded in memory;
the project's box selection agrees with transformers' own Grounding DINO post-processing.

Tiny random models (seeded): boxes and embeddings mean nothing; only geometry and bookkeeping are tested.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from item.featurize.crops import PAD_COLOUR, square_crop, square_region
from item.featurize.models.grounders import load_grounder
from item.featurize.models.grounding import MIN_BOX_AREA, not_groundable
from item.featurize.models.loading import load_models
from item.featurize.models.presets import resolve_models
from item.featurize.run.config import FeaturizeConfig
from item.featurize.run.local import featurize_images


@pytest.mark.parametrize("box,size,want", [
    ((10, 40, 20, 70), (100, 100), (0, 40, 30, 70)),  # widened around its centre
    ((90, 10, 100, 30), (100, 100), (80, 10, 100, 30)),  # clamped at the right edge, not padded
    ((0, 0, 60, 600), (200, 600), (-200, 0, 400, 600)),  # image narrower than the side: padded both ends
    ((5.2, 5.3, 5.9, 5.8), (10, 10), (5, 5, 6, 6)),  # sub-pixel box: one pixel
])
def test_square_region(box, size, want):
    assert square_region(box, *size) == want


def test_square_region_always_holds_the_whole_box():
    rng = np.random.default_rng(0)
    for _ in range(500):
        w, h = rng.integers(1, 400, 2)
        x0, x1 = sorted(rng.uniform(0, w, 2))
        y0, y1 = sorted(rng.uniform(0, h, 2))
        left, top, right, bottom = square_region((x0, y0, x1, y1), w, h)
        side = right - left
        assert side == bottom - top >= 1
        assert left <= x0 and top <= y0 and right >= x1 - 1e-9 and bottom >= y1 - 1e-9
        # padding only along an axis the image cannot fill
        assert (left >= 0 and right <= w) or side > w
        assert (top >= 0 and bottom <= h) or side > h


def test_tall_thin_crop_keeps_its_content():
    # a 60x600 object: CLIP's centre crop of the raw box would keep only its middle 60x60
    img = Image.new("RGB", (200, 600), (0, 0, 0))
    img.paste((255, 0, 0), (70, 0, 130, 100))  # top of the object red
    img.paste((0, 0, 255), (70, 500, 130, 600))  # bottom blue
    crop = square_crop(img, (70, 0, 130, 600))
    assert crop.size == (600, 600)
    arr = np.asarray(crop)
    assert (arr[50, 300] == (255, 0, 0)).all() and (arr[550, 300] == (0, 0, 255)).all()  # both ends kept
    assert (arr[300, 10] == PAD_COLOUR).all() and (arr[300, 590] == PAD_COLOUR).all()  # padded, not stretched
    assert (arr[300, 250] == (0, 0, 0)).all()  # real image beside the box, not padding


@pytest.fixture(scope="module")
def tiny():
    return load_models(resolve_models("tiny-random"), "cpu")


def test_stored_crops_are_square_crops_through_clip(tmp_path, tiny):
    rng = np.random.default_rng(3)
    paths = []
    for i, size in enumerate([(160, 48), (40, 150)]):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    recs = featurize_images(paths, models=tiny, config=FeaturizeConfig(workers=0),
                            captions={p: "a dog next to a car and a tree" for p in paths})
    checked = 0
    for p, r in zip(paths, recs):
        img = Image.open(p).convert("RGB")
        for o in r.objects:
            if o.box is None:
                continue
            want = tiny.clip.encode_images(tiny.clip.preprocess(square_crop(img, o.box))[None])[0]
            np.testing.assert_allclose(o.crop_emb, want, atol=1e-5)
            x0, y0, x1, y1 = o.box
            assert 0 <= x0 < x1 <= img.width and 0 <= y0 < y1 <= img.height
            assert (x1 - x0) * (y1 - y0) >= min(MIN_BOX_AREA, img.width * img.height) - 1e-3
            checked += 1
    assert checked >= 3


def test_boxes_lying_in_the_padding_never_count():
    """A 400x20 image is padded to 400x134 before grounding. The query the detector likes best for 'dog' lies
    in the padding: it is no box (it used to be clamped into a 1-pixel strip at the image's edge and count as
    grounded); the best query inside the image wins. A noun whose only query lies in the padding is ungrounded."""
    import torch

    from item.featurize.models.grounding_dino import select_boxes

    p = torch.tensor([[0.95, 0.10],   # query 0: 'dog' very likely, box in the padding
                      [0.60, 0.10],   # query 1: 'dog' less likely, box inside the image
                      [0.10, 0.90]])  # query 2: 'car', box in the padding
    spans = torch.tensor([[True, False], [False, True]])  # token 0 is 'dog', token 1 is 'car'
    rel = torch.tensor([[0.5, 0.9, 0.2, 0.1],    # y from 114 to 127 of 134: below the 20-pixel image
                        [0.5, 0.05, 0.2, 0.1],   # y from 0 to 13: inside
                        [0.3, 0.8, 0.1, 0.2]])   # y from 94 to 121: below
    dog, car = select_boxes(p, rel, torch.tensor([True, True]), spans, (400, 20), (400.0, 134.0), 0.3, 0.25)
    assert car is None
    assert dog is not None and dog.score == pytest.approx(0.60)
    assert dog.y1 <= 20 and (dog.x1 - dog.x0) * (dog.y1 - dog.y0) >= MIN_BOX_AREA
    assert (dog.x0, dog.x1) == pytest.approx((160.0, 240.0))


def test_grounded_boxes_of_an_elongated_image_lie_in_it(tiny):
    rng = np.random.default_rng(5)
    img = Image.fromarray(rng.integers(0, 255, (20, 400, 3), dtype=np.uint8))
    for b in tiny.grounder.ground([img], [["dog", "car", "tree", "man", "bike", "road", "sky", "boat"]])[0]:
        if b is not None:
            assert b.y1 <= 20 and (b.x1 - b.x0) * (b.y1 - b.y0) >= MIN_BOX_AREA


def test_no_aspect_ratio_is_refused_before_the_grounders_processor_sizes_it():
    assert not_groundable(640, 480) == ""
    assert not_groundable(400, 20) == ""
    assert not_groundable(1, 50000) == ""  # the grounder's own floor decides (test_grounder_families)
    assert "empty image" in not_groundable(0, 10)


def test_huge_padding_is_refused_with_modest_memory_through_the_cli(tmp_path):
    """A 1x50000 PNG with groundable nouns once took 9.9 GB (the detector padded it to 16667x50000)."""
    img = tmp_path / "strip.png"
    Image.new("RGB", (1, 50000), (200, 10, 10)).save(img)
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label", "caption"], [str(img), "real", "a red pole next to a dog"]])
    store = tmp_path / "s"
    script = textwrap.dedent(f"""
        import resource, sys
        from typer.testing import CliRunner
        from item.cli import app
        r = CliRunner().invoke(app, ["featurize", {str(manifest)!r}, "--store", {str(store)!r}, "--models",
                                     "tiny-random", "--captioner", "none", "--workers", "0"])
        print("EXIT", r.exit_code)
        # VmHWM, this process's own peak: ru_maxrss survives exec, so it would report the (larger) pytest
        # process this one was forked from
        hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")]
        print("RSS_KB", hwm[0].split()[1] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        sys.stdout.write(r.output[-2000:])
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"))
    out = res.stdout
    assert "EXIT 0" in out, out + res.stderr[-2000:]
    rss_gb = int(out.split("RSS_KB")[1].split()[0]) / 2**20
    assert rss_gb < 3.0, f"peak RSS {rss_gb:.1f} GB"
    from item.store import StoreReader
    from item.store import schema

    with StoreReader(store) as r:
        meta = r.metadata([schema.STATUS, schema.REASON, schema.NOUNS])
        objs = r.objects(columns=[schema.GROUNDED])
    assert meta[schema.STATUS][0] == "ok"
    assert json.loads(meta[schema.NOUNS][0]) == ["pole", "dog"]
    # transformers' own processor has no pixels left on the short side (it raises): not grounded, said so
    assert "not grounded: after the processor's resize" in meta[schema.REASON][0]
    assert not objs[schema.GROUNDED].any()


def test_owlv2_does_not_pad_a_strip_to_a_square_of_gigabytes():
    from item.featurize.models.grounders import load_grounder
    from item.featurize.models.owlv2 import MAX_PAD_SIDE

    g = load_grounder("owlv2-tiny-random", box_threshold=0.0)
    assert g.prepare(Image.new("RGB", (1, MAX_PAD_SIDE + 1))) is None  # Owlv2Processor would take 3 GB+
    assert g.prepare(Image.new("RGB", (1, 2000))) is not None  # 2000x2000 padded: what the reference does
    assert str(MAX_PAD_SIDE) in g.too_small


def test_box_selection_agrees_with_transformers_post_processing():
    """Second path: transformers' documented post_process_grounded_object_detection on the same forward.

    With thresholds t (box) and t (text), a noun the project grounds must come back from transformers as a
    box labelled with that noun at the same pixel coordinates (box format conversion, scaling and token
    spans are all checked this way), and a noun the project leaves ungrounded has no such box."""
    import torch

    g = load_grounder("tiny-random", box_threshold=0.5, text_threshold=0.5)
    rng = np.random.default_rng(11)
    img = Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8))
    nouns = ["dog", "car", "tree"]
    ours = g.ground([img], [nouns])[0]
    prompt = "dog . car . tree ."
    inputs = g.processor(images=img, text=prompt, return_tensors="pt")
    with torch.inference_mode():
        out = g.model(**inputs)
    res = g.processor.post_process_grounded_object_detection(
        out, inputs["input_ids"], threshold=0.5, text_threshold=0.5, target_sizes=[(img.height, img.width)])[0]
    grounded = 0
    for noun, box in zip(nouns, ours):
        theirs = [b.clamp(min=0).tolist() for b, lab in zip(res["boxes"], res["text_labels"]) if noun in re.findall(r"[a-z]+", lab)]
        theirs = [[min(b[0], 120), min(b[1], 90), min(b[2], 120), min(b[3], 90)] for b in theirs]
        big = [b for b in theirs if (b[2] - b[0]) * (b[3] - b[1]) >= MIN_BOX_AREA]
        if box is None:
            assert not big, f"{noun}: transformers finds {big}, the project none"
            continue
        grounded += 1
        assert any(np.allclose([box.x0, box.y0, box.x1, box.y1], b, atol=1e-3) for b in theirs), (noun, box, theirs)
    assert grounded >= 1


def test_padding_takes_the_clip_tags_own_mean(tmp_path):
    """Crops are padded with the CLIP model's own normalisation mean: OpenAI's (the old colour, so the same
    bits and crop_mode) for OpenAI-mean tags; another mean is named in crop_mode and pads the crops."""
    from item.featurize.crops import CROP_MODE, crop_mode_for, pad_colour
    from item.featurize.models.loading import compat_for

    openai_mean = (0.48145466, 0.4578275, 0.40821073)
    assert pad_colour(openai_mean) == PAD_COLOUR == pad_colour(None)
    assert crop_mode_for(pad_colour(openai_mean)) == CROP_MODE
    assert pad_colour((0.5, 0.5, 0.5)) == (127, 127, 127)
    assert crop_mode_for((127, 127, 127)) == f"{CROP_MODE} pad=127,127,127"

    models = load_models(resolve_models("tiny-random"), "cpu")
    assert compat_for(models, FeaturizeConfig())["crop_mode"] == CROP_MODE  # the tiny CLIP has OpenAI's mean
    # a model whose preprocessing normalises with another mean (as SigLIP's tags do: 0.5 each)
    models.clip.info = {**models.clip.info, "preprocess": {**models.clip.info["preprocess"], "mean": [0.5] * 3}}
    assert compat_for(models, FeaturizeConfig())["crop_mode"] == f"{CROP_MODE} pad=127,127,127"
    p = tmp_path / "tall.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 255, (150, 12, 3), dtype=np.uint8)).save(p)
    rec, = featurize_images([str(p)], models=models, config=FeaturizeConfig(workers=0),
                            captions={str(p): "a dog next to a car and a tree"})
    img = Image.open(p).convert("RGB")
    padded = [o for o in rec.objects if o.box is not None and square_region(o.box, *img.size)[0] < 0]
    assert padded, "no box taller than the image is wide: nothing was padded"
    for o in padded:
        crop = square_crop(img, o.box, (127, 127, 127))
        assert (np.asarray(crop)[:, 0] == 127).all()  # the left edge lies outside the image: padding
        want = models.clip.encode_images(models.clip.preprocess(crop)[None])[0]
        np.testing.assert_allclose(o.crop_emb, want, atol=1e-5)
        old = models.clip.encode_images(models.clip.preprocess(square_crop(img, o.box))[None])[0]
        assert np.abs(old - want).max() > 1e-4  # the colour changes the bits
