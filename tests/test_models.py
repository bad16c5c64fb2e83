"""Model wrappers of the featurize stage: presets, tiny random models, local loading, offline errors."""

from __future__ import annotations

import os
import pickle
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from PIL import Image, ImageDraw

from item.errors import InputError, ModelLoadError
from item.featurize.models.presets import PRESETS, ModelSpec, resolve_models


def _images() -> list[Image.Image]:
    a = Image.new("RGB", (64, 48), (200, 30, 30))
    ImageDraw.Draw(a).rectangle((10, 10, 40, 30), fill=(20, 200, 40))
    b = Image.new("RGB", (37, 90), (10, 10, 120))
    ImageDraw.Draw(b).ellipse((5, 20, 30, 70), fill=(250, 250, 0))
    c = Image.effect_noise((120, 80), 60).convert("RGB")
    return [a, b, c]


@pytest.fixture(scope="module")
def clip():
    from item.featurize.models.clip import load_clip

    return load_clip(PRESETS["tiny-random"].clip_model, PRESETS["tiny-random"].clip_pretrained)


@pytest.fixture(scope="module")
def captioner():
    from item.featurize.models.blip import load_captioner

    return load_captioner("tiny-random")


@pytest.fixture(scope="module")
def grounder():
    from item.featurize.models.grounders import load_grounder

    spec = PRESETS["tiny-random"]
    return load_grounder(spec.grounder, box_threshold=spec.box_threshold, text_threshold=spec.text_threshold)


# ------------------------------------------------------------------ presets


def test_presets_registry_and_overrides():
    assert {"default", "small", "tiny-random", "small-random", "default-random"} <= set(PRESETS)
    d = resolve_models()
    assert (d.clip_model, d.clip_pretrained) == ("ViT-L-14", "openai")
    assert d.captioner == "Salesforce/blip-image-captioning-large"
    assert d.grounder == "IDEA-Research/grounding-dino-tiny" and not d.random_weights
    s = resolve_models("small")
    assert (s.clip_model, s.captioner) == ("ViT-B-32", "Salesforce/blip-image-captioning-base")
    t = resolve_models("tiny-random")
    assert t.random_weights and (t.box_threshold, t.text_threshold) == (0.0, 0.0)
    assert resolve_models("default-random").clip_model == "ViT-L-14" and resolve_models("default-random").random_weights

    o = resolve_models("small", clip="ViT-B-16", pretrained="/w/clip.safetensors", captioner="none")
    assert (o.clip_model, o.clip_pretrained, o.captioner, o.grounder) == (
        "ViT-B-16", "/w/clip.safetensors", "none", "IDEA-Research/grounding-dino-tiny")
    assert resolve_models("default", pretrained="").random_weights  # random-init CLIP is recorded as random
    real_grounder = resolve_models("tiny-random", grounder="/models/gdino")
    assert real_grounder.box_threshold == 0.35 and real_grounder.text_threshold == 0.25
    with pytest.raises(Exception):  # frozen
        d.clip_model = "x"  # type: ignore[misc]
    assert isinstance(d, ModelSpec)


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(InputError) as err:
        resolve_models("huge")
    msg = str(err.value)
    assert "huge" in msg and all(name in msg for name in PRESETS)


# ------------------------------------------------------------------ CLIP


def test_clip_tiny_shapes_norms_and_info(clip):
    images = _images()
    pixels = __import__("torch").stack([clip.preprocess(im) for im in images])
    size = clip.info["image_size"]
    assert pixels.shape == (3, 3, size[0], size[1]) and str(pixels.dtype) == "torch.float32"
    emb = clip.encode_images(pixels)
    assert emb.shape == (3, clip.embed_dim) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(emb[0], emb[1])  # different images, different embeddings

    text_emb, truncated = clip.encode_texts(["a red dog", "a man riding a bike"])
    assert text_emb.shape == (2, clip.embed_dim) and text_emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(text_emb, axis=1), 1.0, atol=1e-5)
    assert truncated.dtype == bool and not truncated.any()

    info = clip.info
    assert info["random_weights"] is True and info["embed_dim"] == clip.embed_dim == 32
    assert set(info["preprocess"]) >= {"size", "mean", "std", "interpolation", "resize_mode"}
    assert len(info["preprocess_hash"]) == 64
    import json

    assert json.loads(json.dumps(info)) == info


def test_clip_truncation_flag(clip):
    long_text = " ".join(["dog"] * 80)  # 80 tokens + start/end > 77
    edge = " ".join(["dog"] * 75)  # exactly 77 with start/end: not truncated
    _, truncated = clip.encode_texts([long_text, edge, "cat"])
    assert truncated.tolist() == [True, False, False]


def test_clip_deterministic_and_preprocess_picklable(clip):
    from item.featurize.models.clip import load_clip

    again = load_clip(PRESETS["tiny-random"].clip_model, "")
    im = _images()[2]
    x = clip.preprocess(im)[None]
    np.testing.assert_array_equal(clip.encode_images(x), again.encode_images(x))
    np.testing.assert_array_equal(clip.encode_texts(["a cat"])[0], again.encode_texts(["a cat"])[0])
    assert again.info["preprocess_hash"] == clip.info["preprocess_hash"]
    for fn in (clip.preprocess, clip.transform):
        restored = pickle.loads(pickle.dumps(fn))
        assert (restored(im) == clip.preprocess(im)).all()


# ------------------------------------------------------------------ captioner


def test_captioner_deterministic_strings(captioner):
    from item.featurize.models.blip import load_captioner

    images = _images()
    first = captioner.caption(images)
    assert len(first) == 3 and all(isinstance(c, str) and c and c == c.strip() for c in first)
    assert all(len(c.split()) >= 2 for c in first)  # word-like: the tiny vocabulary is whole words
    assert captioner.caption(images) == first
    assert load_captioner("tiny-random").caption(images) == first  # seeded: same weights on every build
    assert captioner.caption([]) == []
    assert captioner.info["random_weights"] is True
    assert all(d["do_sample"] is False for d in captioner.info["decodings"].values())
    assert captioner.decoding == "authors" and captioner.info["decodings"]["authors"]["prompt"] == "a picture of "


# ------------------------------------------------------------------ grounder


def test_grounder_one_entry_per_noun_inside_image(grounder):
    from item.featurize.models.grounding import Box

    images = _images()
    nouns = [["man", "bike", "traffic light"], [], ["dog", "dog"]]
    result = grounder.ground(images, nouns)
    assert [len(r) for r in result] == [3, 0, 2]
    for im, boxes in zip(images, result):
        w, h = im.size
        for box in boxes:
            assert isinstance(box, Box)  # thresholds 0.0: every noun is grounded
            assert 0 <= box.x0 < box.x1 <= w and 0 <= box.y0 < box.y1 <= h
            assert 0.0 <= box.score <= 1.0
    assert result[2][0] == result[2][1]  # the same noun twice gets the same box
    assert grounder.ground(images, nouns) == result  # deterministic


def test_grounder_thresholds_leave_nouns_ungrounded(grounder):
    from item.featurize.models.grounding_dino import Grounder

    strict = Grounder(grounder.model, grounder.processor, dict(grounder.info), "cpu", 1.01, 1.01)
    assert strict.ground(_images()[:1], [["man", "bike"]]) == [[None, None]]
    with pytest.raises(InputError):
        grounder.ground(_images()[:2], [["man"]])


def test_grounder_noun_score_comes_from_its_token_span(grounder):
    """Each noun's score is the mean probability over its own tokens (found by character offsets) on its best
    query (MMDetection's convert_grounding_to_cls_scores; Grounding DINO's COCO evaluation)."""
    import torch

    from item.featurize.models.grounding_dino import build_prompt

    image = _images()[0]
    nouns = ["red car", "tree"]
    prompt, spans = build_prompt(nouns)
    assert prompt == "red car . tree ." and [prompt[s:e] for s, e in spans] == nouns
    boxes = grounder.ground([image], [nouns])[0]
    tok = grounder.processor.tokenizer([prompt], return_tensors="pt")
    pix = grounder.processor.image_processor(images=[image], return_tensors="pt")
    with torch.inference_mode():
        probs = grounder.model(**tok, **pix).logits.sigmoid()[0]
    ids = tok["input_ids"][0].tolist()
    tokens = grounder.processor.tokenizer.convert_ids_to_tokens(ids)
    car_idx = [tokens.index("red"), tokens.index("car")]
    tree_idx = [tokens.index("tree")]
    assert boxes[0].score == pytest.approx(probs[:, car_idx].mean(-1).amax().item(), abs=1e-5)
    assert boxes[1].score == pytest.approx(probs[:, tree_idx].mean(-1).amax().item(), abs=1e-5)


# ------------------------------------------------------------------ local paths


def test_save_and_load_tiny_models_from_local_paths(tmp_path, clip, captioner, grounder):
    from item.featurize.models.blip import load_captioner
    from item.featurize.models.clip import load_clip
    from item.featurize.models.grounders import load_grounder
    from item.featurize.models.tiny import save_tiny_models

    paths = save_tiny_models(tmp_path / "models")
    assert os.path.isfile(paths["clip_pretrained"])
    assert os.path.isdir(paths["captioner"]) and os.path.isdir(paths["grounder"])

    local_clip = load_clip(paths["clip_model"], paths["clip_pretrained"])
    images = _images()
    x = __import__("torch").stack([local_clip.preprocess(im) for im in images])
    np.testing.assert_array_equal(local_clip.encode_images(x), clip.encode_images(x))
    np.testing.assert_array_equal(local_clip.encode_texts(["a dog"])[0], clip.encode_texts(["a dog"])[0])
    assert local_clip.info["weights"].startswith("sha256:") and local_clip.info["random_weights"] is True
    assert local_clip.info["preprocess_hash"] == clip.info["preprocess_hash"]
    # a folder holding the checkpoint works too
    folder_clip = load_clip(paths["clip_model"], os.path.dirname(paths["clip_pretrained"]))
    assert folder_clip.info["weights"] == local_clip.info["weights"]

    local_cap = load_captioner(paths["captioner"])
    assert local_cap.caption(images) == captioner.caption(images)
    assert local_cap.info["random_weights"] is True and "weights_sha256" in local_cap.info

    local_gd = load_grounder(paths["grounder"], box_threshold=0.0, text_threshold=0.0)
    nouns = [["man", "bike"], ["sky"], ["dog"]]
    assert local_gd.ground(images, nouns) == grounder.ground(images, nouns)
    assert local_gd.info["random_weights"] is True


# ------------------------------------------------------------------ offline errors


@pytest.mark.parametrize("kind", ["clip", "captioner", "grounder"])
def test_missing_weights_offline_fail_fast_one_line(kind, monkeypatch, tmp_path):
    from item.featurize.models.blip import load_captioner
    from item.featurize.models.clip import load_clip
    from item.featurize.models.grounders import load_grounder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    load = {
        "clip": lambda: load_clip("ViT-B-32", "openai"),
        "captioner": lambda: load_captioner("item-test/no-such-captioner"),
        "grounder": lambda: load_grounder("item-test/no-such-grounder"),
    }[kind]
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as err:
        load()
    assert time.perf_counter() - start < 10
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / "hf") in msg  # where it looked
    assert "HF_HOME" in msg and "network" in msg  # what fixes it
    assert {"clip": "--pretrained", "captioner": "--captioner", "grounder": "--grounder"}[kind] in msg
    assert {"clip": "ViT-B-32", "captioner": "no-such-captioner", "grounder": "no-such-grounder"}[kind] in msg


def test_missing_local_paths_are_one_line_errors(tmp_path):
    from item.featurize.models.blip import load_captioner
    from item.featurize.models.clip import load_clip
    from item.featurize.models.grounders import load_grounder

    missing = str(tmp_path / "nope")
    for load in (lambda: load_clip("ViT-B-32", missing + ".safetensors"), lambda: load_captioner(missing),
                 lambda: load_grounder(missing)):
        with pytest.raises(ModelLoadError) as err:
            load()
        assert missing in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError):
        load_clip("ViT-Nope-1", "openai")
    with pytest.raises(ModelLoadError) as err:
        load_clip("ViT-B-32", "no-such-tag")
    assert "openai" in str(err.value)  # lists the known tags


def test_tiny_builders_are_fast_and_offline(clip, captioner, grounder):
    """Building all three tiny models (imports already paid by the fixtures) takes well under a few seconds."""
    from item.featurize.models.blip import load_captioner
    from item.featurize.models.clip import load_clip
    from item.featurize.models.grounders import load_grounder

    start = time.perf_counter()
    load_clip("item-tiny-clip", "")
    load_captioner("tiny-random")
    load_grounder("tiny-random")
    assert time.perf_counter() - start < 5.0
