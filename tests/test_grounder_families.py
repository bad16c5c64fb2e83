"""Issue 20: the OmDet-Turbo and MM-Grounding-DINO grounder families, the `fast` presets, and stage timers
that synchronise the GPU only when asked. Tiny random models on the CPU."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from item.cli import app
from item.errors import InputError
from item.featurize import FeaturizeConfig, resolve_models
from item.featurize.models.grounders import GROUNDER_FAMILIES, grounder_family, load_grounder
from item.store import StoreReader, validate

SIZES = [(64, 48), (40, 90), (120, 30), (50, 50), (90, 64)]
CAPTIONS = ["a dog on a red sofa next to a cat", "two men riding bikes on a road", "a bowl of fruit on a table",
            "a boat on a lake under a bridge", "a man holding a kite on the beach"]


def make_manifest(tmp_path, n=len(SIZES)):
    folder = tmp_path / "imgs"
    folder.mkdir()
    lines = ["path,label,caption"]
    for i in range(n):
        w, h = SIZES[i]
        arr = np.random.default_rng(i).integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        path = folder / f"{i:02d}.png"
        Image.fromarray(arr).save(path)
        lines.append(f"{path},{'real' if i % 2 else 'fake'},{CAPTIONS[i]}")
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.mark.parametrize("grounder,family", [("omdet-tiny-random", "omdet-turbo"),
                                             ("mm-gdino-tiny-random", "mm-grounding-dino")])
def test_new_grounder_writes_a_store_that_names_its_family(tmp_path, grounder, family):
    manifest = make_manifest(tmp_path)
    store = tmp_path / "s"
    base = ["featurize", str(manifest), "--store", str(store), "--models", "tiny-random", "--workers", "0"]
    r = CliRunner().invoke(app, base + ["--grounder", grounder, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n_written"] == len(SIZES)
    with StoreReader(store) as rd:
        compat = rd.manifest["compat"]
        assert compat["grounder"] == grounder
        assert compat["box_threshold"] == 0.0 and compat["text_threshold"] == 0.0
        g = rd.models["grounder"]
        assert g["family"] == family and g["random_weights"] and "not measured" in g["quality"]
        assert g["box_threshold"] == 0.0
        objs = rd.objects(rd.select())
        meta = rd.metadata()
        assert objs["grounded"].any()
        for row, box, grounded in zip(objs["image"], objs["box"], objs["grounded"]):
            if grounded:
                assert 0 <= box[0] < box[2] <= meta["width"][row] and 0 <= box[1] < box[3] <= meta["height"][row]
    assert validate(store).ok
    info = CliRunner().invoke(app, ["store", "info", str(store), "--json"])
    assert info.exit_code == 0
    assert json.loads(info.stdout)["models"]["grounder"]["family"] == family
    text = CliRunner().invoke(app, ["store", "info", str(store)])
    assert text.exit_code == 0 and f"{grounder} [{family}]" in text.stdout
    assert "box_threshold=0.0" in text.stdout
    # a resume under another grounder (family) is refused, naming what differs
    for other in ("tiny-random", "owlv2-tiny-random"):
        r = CliRunner().invoke(app, base + ["--grounder", other])
        assert r.exit_code == 1 and "grounder" in r.output
    # the same grounder resumes: nothing left to do
    r = CliRunner().invoke(app, base + ["--grounder", grounder, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n_already_done"] == len(SIZES)


def test_families_are_listed_and_recognised():
    assert {"omdet-turbo", "mm-grounding-dino"} <= set(GROUNDER_FAMILIES)
    assert grounder_family("omdet-tiny-random") == "omdet-turbo"
    assert grounder_family("omlab/omdet-turbo-swin-tiny-hf") == "omdet-turbo"
    assert grounder_family("mm-gdino-random") == "mm-grounding-dino"
    assert grounder_family("openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det") == "mm-grounding-dino"
    assert grounder_family("iSEE-Laboratory/llmdet_tiny") == "mm-grounding-dino"
    assert grounder_family("IDEA-Research/grounding-dino-tiny") == "grounding-dino"
    # every family's random names count as random (presets.RANDOM_MODEL_NAMES is written out by hand)
    from item.featurize.models.grounders import random_grounder_names
    from item.featurize.models.presets import is_random

    assert all(is_random(n) for n in random_grounder_names())


def test_real_grounder_ids_bring_their_family_thresholds():
    om = resolve_models("default", grounder="omlab/omdet-turbo-swin-tiny-hf")
    assert (om.box_threshold, om.text_threshold) == (0.3, 0.0)
    mm = resolve_models("fast", grounder="openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det")
    assert (mm.box_threshold, mm.text_threshold) == (0.4, 0.3)  # transformers MM Grounding DINO example
    gd = resolve_models("fast", grounder="IDEA-Research/grounding-dino-tiny")
    assert (gd.box_threshold, gd.text_threshold) == (0.35, 0.25)


def test_fast_presets():
    fast = resolve_models("fast")
    assert fast.grounder == "omlab/omdet-turbo-swin-tiny-hf" and not fast.random_weights
    assert (fast.box_threshold, fast.text_threshold) == (0.3, 0.0)
    fr = resolve_models("fast-random")
    assert fr.grounder == "omdet-random" and fr.random_weights
    assert fr.clip_model == fast.clip_model and fr.clip_pretrained == ""
    with pytest.raises(InputError, match="fast-random"):
        resolve_models("no-such-preset")


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)) for w, h in SIZES[:n]]


def test_omdet_boxes_do_not_depend_on_the_batch():
    g = load_grounder("omdet-tiny-random", box_threshold=0.0)
    images = _images(4)
    nouns = [["dog", "cat"], ["man"], ["bowl", "fruit", "table"], ["boat", "lake"]]
    together = g.ground(images, nouns)
    alone = [g.ground([im], [ns])[0] for im, ns in zip(images, nouns)]
    assert sum(b is not None for bs in together for b in bs) >= 4
    for a, b in zip(together, alone):
        for x, y in zip(a, b):
            assert (x is None) == (y is None)
            if x is not None:
                assert np.allclose([x.x0, x.y0, x.x1, x.y1, x.score], [y.x0, y.y0, y.x1, y.y1, y.score], atol=1e-4)


def test_omdet_caches_noun_embeddings_across_images():
    g = load_grounder("omdet-tiny-random", box_threshold=0.0)
    images = _images(2)
    first = g.ground(images[:1], [["dog", "cat"]])
    assert (g.text_hits, g.text_misses) == (0, 2)
    g.ground(images[1:2], [["cat", "sofa"]])
    assert (g.text_hits, g.text_misses) == (1, 3)
    # cached embeddings give the same boxes as a fresh model
    fresh = load_grounder("omdet-tiny-random", box_threshold=0.0)
    again = g.ground(images[:1], [["dog", "cat"]])
    assert again == fresh.ground(images[:1], [["dog", "cat"]]) == first


def test_omdet_selection_rule():
    from item.featurize.models.omdet import select_omdet

    rel = torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.2, 0.2, 0.2, 0.2], [0.5, 0.5, 0.001, 0.001]])
    scores = torch.tensor([[0.9, 0.2], [0.3, 0.31], [0.95, 0.1]])
    # query 2 scores highest for noun 0 but its box is under MIN_BOX_AREA pixels: no box
    boxes = select_omdet(scores, rel, (100, 100), n_queries=3, box_threshold=0.3)
    assert boxes[0] is not None and boxes[0].score == pytest.approx(0.9)
    assert (boxes[0].x0, boxes[0].x1) == pytest.approx((30.0, 70.0))
    # strictly above the threshold, as transformers' post-processing keeps them
    assert boxes[1] is not None and boxes[1].score == pytest.approx(0.31)
    assert select_omdet(scores, rel, (100, 100), 3, box_threshold=0.31)[1] is None
    # only the image's top n_queries (query, noun) pairs survive: noun 1's best (0.31) is 3rd of 6
    assert select_omdet(scores, rel, (100, 100), n_queries=2, box_threshold=0.0)[1] is None
    assert select_omdet(scores, rel, (100, 100), n_queries=3, box_threshold=0.0)[1] is not None


def test_mm_grounding_dino_uses_the_grounding_dino_selection():
    # MM-Grounding-DINO is Grounding DINO's grounder (prompt, spans, select_boxes) over another model class,
    # so a change of Grounding DINO's rule changes both families at once.
    from item.featurize.models.grounding_dino import Grounder
    from item.featurize.models.mm_grounding_dino import MMGroundingDinoGrounder

    g = load_grounder("mm-gdino-tiny-random", box_threshold=0.0, text_threshold=0.0)
    assert isinstance(g, MMGroundingDinoGrounder) and isinstance(g, Grounder)
    assert type(g.model).__name__ == "MMGroundingDinoForObjectDetection"
    assert MMGroundingDinoGrounder.ground_prepared is Grounder.ground_prepared
    images = _images(3)
    nouns = [["dog", "red sofa"], ["man"], ["bowl", "fruit"]]
    as_gdino = Grounder(g.model, g.processor, dict(g.info), "cpu", 0.0, 0.0)
    got = g.ground(images, nouns)
    assert got == as_gdino.ground(images, nouns)
    assert any(b is not None for bs in got for b in bs)


def test_profile_stages_times_every_stage_and_stores_the_same_bits(tmp_path):
    assert FeaturizeConfig().profile_stages is False  # the timed runs never wait for the whole device
    manifest = make_manifest(tmp_path, n=3)
    out = {}
    for flag in ([], ["--profile-stages"]):
        store = tmp_path / f"s{len(flag)}"
        r = CliRunner().invoke(app, ["featurize", str(manifest), "--store", str(store), "--models", "tiny-random",
                                     "--workers", "0", "--json"] + flag)
        assert r.exit_code == 0, r.output
        assert {"ground", "clip_image", "clip_text"} <= set(json.loads(r.stdout)["stage_seconds"])
        with StoreReader(store) as rd:
            out[len(flag)] = (rd.read("image_emb", rd.select()), rd.objects(rd.select())["box"])
    assert np.array_equal(out[0][0], out[1][0]) and np.array_equal(out[0][1], out[1][1])


@pytest.mark.slow
def test_fast_random_preset_runs_through_the_cli(tmp_path):
    manifest = make_manifest(tmp_path, n=2)
    store = tmp_path / "s"
    r = CliRunner().invoke(app, ["featurize", str(manifest), "--store", str(store), "--models", "fast-random",
                                 "--workers", "0", "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n_written"] == 2
    with StoreReader(store) as rd:
        assert rd.manifest["compat"]["grounder"] == "omdet-random"
        assert rd.models["grounder"]["family"] == "omdet-turbo"
        assert rd.objects(rd.select())["grounded"].any()


def test_omdet_runs_at_full_precision_after_autocast_on_the_same_loaded_grounder():
    # transformers caches each class / task embedding in the dtype it was computed in: before the caches were
    # kept per precision, the fp32 pass after an autocast pass failed ("mat1 and mat2 must have the same dtype")
    # or reused low-precision embeddings. CPU bfloat16 autocast stands in for CUDA fp16.
    images = _images(3, seed=5)
    nouns = [["dog", "cat"], ["man", "kite", "beach"], ["bowl"]]
    exact = load_grounder("omdet-tiny-random", box_threshold=0.0).ground(images, nouns)
    g = load_grounder("omdet-tiny-random", box_threshold=0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = g.ground(images, nouns)
    assert g.ground(images, nouns) == exact  # every noun cached in bf16 already: recomputed in fp32
    # part of the nouns seen in bf16, part new: still the fp32 answers, and autocast again reuses its own cache
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert g.ground(images, nouns) == low
    fresh = load_grounder("omdet-tiny-random", box_threshold=0.0)
    mixed = [["dog", "sofa"], ["man", "road", "beach"], ["lake"]]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g.ground(images, mixed[:1] + [[]] * 2)
    assert g.ground(images, mixed) == fresh.ground(images, mixed)
    assert any(b is not None for bs in exact for b in bs)


def _gdino_with_queries(folder, num_queries: int):
    """The tiny Grounding DINO with ``num_queries`` proposals, saved as a local checkpoint folder."""
    from transformers import GroundingDinoForObjectDetection

    from item.featurize.models import tiny

    _, processor = tiny.build_grounding_dino("tiny-random")
    config = tiny.grounding_dino_config("tiny-random")
    config.num_queries = num_queries
    with tiny.seeded(11):
        model = GroundingDinoForObjectDetection(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


def test_an_image_is_grounded_exactly_where_transformers_grounding_dino_can_run_it(tmp_path):
    # Reference: transformers' own processor + forward. A two-stage Grounding DINO takes num_queries proposals
    # by torch.topk over its encoder's feature cells, so an input with fewer cells raises inside the model;
    # every other size and aspect ratio runs. ITEM grounds an image exactly when the reference runs it (no
    # aspect-ratio limit of its own). With 100 queries the tiny build's floor lies among small inputs.
    model, processor = _gdino_with_queries(tmp_path / "gd", 100)
    g = load_grounder(str(tmp_path / "gd"), box_threshold=0.0, text_threshold=0.0)
    agree = ran = refused = 0
    for w, h in [(192, 8), (192, 12), (192, 16), (192, 24), (192, 33), (192, 40), (192, 48), (192, 64), (8, 192),
                 (40, 192), (2000, 40), (4000, 100), (30, 1), (1, 30), (400, 20), (100, 100)]:
        img = Image.fromarray(np.random.default_rng(w * h).integers(0, 255, (h, w, 3), dtype=np.uint8))
        inputs = processor(images=img, text="a dog . a cat .", return_tensors="pt")
        try:
            with torch.inference_mode():
                model(**inputs)
            reference_runs = True
        except (RuntimeError, ValueError):  # topk past the cells, or a GroupNorm over one value per group
            reference_runs = False
        prepared = g.prepare(img)
        item_grounds = prepared is not None and not g.input_problem(prepared)
        agree += item_grounds == reference_runs
        ran += reference_runs
        refused += not reference_runs
    assert agree == 16 and ran >= 4 and refused >= 4, (agree, ran, refused)


def test_images_the_detector_cannot_take_are_counted_and_every_other_ratio_grounded(tmp_path):
    # 19:1, a small image and 21:1 are all grounded now (the 20:1 limit of gdino-noun-mean-2 is gone); an
    # input under the reference's floor (60 queries here: 192x3 px has 45 cells) is not grounded and counted.
    _gdino_with_queries(tmp_path / "gd", 60)
    folder = tmp_path / "imgs"
    folder.mkdir()
    lines = ["path,label,caption"]
    for i, (w, h) in enumerate([(950, 50), (25, 20), (2100, 100), (1900, 30)]):  # 19:1, small, 21:1, 63:1
        path = folder / f"{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        lines.append(f"{path},real,a dog next to a cat")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    r = CliRunner().invoke(app, ["featurize", str(tmp_path / "m.csv"), "--store", str(tmp_path / "s"), "--models",
                                 "tiny-random", "--grounder", str(tmp_path / "gd"), "--box-threshold", "0",
                                 "--text-threshold", "0", "--workers", "0", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n_not_grounded"] == 1
    with StoreReader(tmp_path / "s") as rd:
        assert rd.manifest["compat"]["box_selection"] == "gdino-noun-mean-3"
        objs, meta = rd.objects(rd.select()), rd.metadata()
        grounded = {int(meta["width"][row]) for row, gr in zip(objs["image"], objs["grounded"]) if gr}
        assert grounded == {950, 25, 2100}
        reasons = {int(w): str(x) for w, x in zip(meta["width"], meta["reason"])}
        assert "too few for its 60 queries" in reasons[1900]