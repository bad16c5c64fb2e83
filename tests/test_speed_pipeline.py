"""Issue 14, featurize: the prepare/forward split, the overlapped pipeline, per-model batch sizes,
--ground-size and the OWLv2 grounder, with tiny random models on the CPU."""

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from item.cli import app
from item.errors import InputError
from item.featurize.inputs.discover import InputRow
from item.featurize.models.grounders import load_grounder
from item.featurize.models.grounding import collate_pixels
from item.featurize.models.loading import compat_for, load_models, models_info
from item.featurize.models.presets import resolve_models
from item.featurize.run.config import FeaturizeConfig
from item.featurize.run.local import featurize_rows
from item.store import StoreReader, StoreWriter, validate

CAPTIONS = ["a dog on a red sofa next to a cat", None, "two men riding bikes on a road", None,
            "a bowl of fruit on a table", None, "a boat on a lake under a bridge", None, None]
SIZES = [(64, 48), (40, 90), (120, 30), (50, 50), (33, 77), (80, 60), (200, 40), (45, 45), (90, 64)]


@pytest.fixture(scope="module")
def models():
    return load_models(resolve_models("tiny-random"), "cpu")


def make_rows(folder, n=len(SIZES)):
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        w, h = SIZES[i]
        arr = np.random.default_rng(i).integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        path = folder / f"{i:02d}.png"
        Image.fromarray(arr).save(path)
        rows.append(InputRow(path=str(path), label="real" if i % 2 else "fake", generator="g", split="train",
                             caption=CAPTIONS[i % len(CAPTIONS)], origin="test"))
    return rows


def featurize(rows, root, models, **cfg):
    config = FeaturizeConfig(**{"workers": 0, "batch_size": 3, **cfg})
    with StoreWriter(root, compat=compat_for(models, config), models=models_info(models), recipe=config.recipe,
                     shard_size=4) as w:
        featurize_rows(rows, w, models, config)
    return root


def columns(root) -> dict:
    """Every stored column, rows in id order."""
    with StoreReader(root) as r:
        meta = r.metadata()
        order = np.argsort(meta["id"])
        # object_start is where a row's objects sit in the shard: layout, not content (a resumed run's
        # shards end elsewhere)
        out = {f"meta:{k}": list(np.asarray(v)[order]) for k, v in meta.items() if k != "object_start"}
        for col in ("image_emb", "caption_emb", "misalignment"):
            out[col] = r.read(col)[order]
        objs = r.objects(order)
        for col in ("noun", "box", "score", "crop_emb", "noun_emb", "grounded"):
            out[f"obj:{col}"] = objs[col]
    return out


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert np.array_equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


@pytest.mark.slow  # two stores featurized and compared (about 23 CPU s)
def test_overlap_stores_the_same_bits(tmp_path, models):
    rows = make_rows(tmp_path / "imgs")
    plain = columns(featurize(rows, tmp_path / "plain", models, overlap=False))
    overlapped = columns(featurize(rows, tmp_path / "overlap", models, overlap=True))
    assert_same(plain, overlapped)
    assert len(plain["obj:noun"]) > 0 and plain["obj:grounded"].any()  # the object path ran
    assert {"tiny-random", "given"} == set(plain["meta:caption_source"])  # captioned and given rows both
    assert validate(tmp_path / "overlap").ok


def test_overlap_keeps_resume_and_interrupts_working(tmp_path, models):
    rows = make_rows(tmp_path / "imgs")
    full = columns(featurize(rows, tmp_path / "full", models, overlap=True))
    part = tmp_path / "part"
    config = FeaturizeConfig(workers=0, batch_size=3, overlap=True)

    def stop(n):
        if n == 2:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        with StoreWriter(part, compat=compat_for(models, config), models=models_info(models),
                         recipe=config.recipe, shard_size=3) as w:
            featurize_rows(rows, w, models, config, after_batch=stop)
    with StoreReader(part) as r:
        assert 0 < r.n_images < len(rows)
    assert_same(full, columns(featurize(rows, part, models, overlap=True)))


def test_preparation_in_worker_processes_stores_the_same_bits(tmp_path, models):
    rows = make_rows(tmp_path / "imgs", 6)
    in_main = columns(featurize(rows, tmp_path / "main", models, workers=0))
    in_workers = columns(featurize(rows, tmp_path / "workers", models, workers=1))
    assert_same(in_main, in_workers)


@pytest.mark.slow  # two stores featurized and compared (about 23 CPU s)
def test_new_batch_sizes_give_the_same_rows(tmp_path, models):
    # Image batch, caption batch and CLIP batch vary; grounding stays one image a forward on both sides,
    # because a Grounding DINO batch pads its images to one size, which changes its outputs.
    rows = make_rows(tmp_path / "imgs")
    small = columns(featurize(rows, tmp_path / "a", models, batch_size=2, caption_batch_size=1,
                              clip_batch_size=1, ground_batch_size=1))
    large = columns(featurize(rows, tmp_path / "b", models, batch_size=9, caption_batch_size=64,
                              clip_batch_size=256, ground_batch_size=1))
    for k in small:
        if k in ("image_emb", "caption_emb", "misalignment", "obj:crop_emb", "obj:noun_emb", "obj:box", "obj:score"):
            # Another batch shape may change the last bits of a float32 forward on the CPU; stored values
            # are float16, so they agree to float16 rounding.
            np.testing.assert_allclose(small[k], large[k], atol=2e-3, rtol=0, err_msg=k)
        elif isinstance(small[k], np.ndarray):
            assert np.array_equal(small[k], large[k]), k
        else:
            assert small[k] == large[k], k


def test_grounder_prepare_and_forward_equal_the_one_call_path(models):
    g = models.grounder
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)) for w, h in SIZES[:5]]
    nouns = [["dog", "sofa"], ["man"], [], ["bowl", "fruit", "table"], ["boat"]]
    prepared = [pickle.loads(pickle.dumps(g.prepare(im))) for im in images]  # as from a worker process
    # the batch the image processor makes of the images as they are, padding and mask included
    ref = g.processor.image_processor(images=images, return_tensors="pt")
    pix, mask = collate_pixels(prepared)
    assert torch.equal(pix, ref["pixel_values"]) and torch.equal(mask, ref["pixel_mask"].to(mask.dtype))
    assert g.ground(images, nouns) == g.ground_prepared(prepared, nouns)
    assert [len(b) for b in g.ground(images, nouns)] == [2, 1, 0, 3, 1]


def test_captioner_prepare_and_forward_equal_the_one_call_path(models):
    c = models.captioner
    rng = np.random.default_rng(4)
    images = [Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)) for w, h in SIZES[:4]]
    prepared = [pickle.loads(pickle.dumps(c.prepare(im))) for im in images]
    ref = c.processor(images=images, return_tensors="pt")["pixel_values"]
    assert torch.equal(torch.stack(prepared), ref)
    assert c.caption(images) == c.caption_prepared(prepared)
    assert c.caption_prepared([]) == []


def test_ground_size_is_recorded_and_a_store_refuses_another(tmp_path):
    rows = make_rows(tmp_path / "imgs", 4)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,caption\n" + "".join(f"{r.path},real,{r.caption or 'a cat on a mat'}\n"
                                                        for r in rows))
    store = tmp_path / "s"
    base = ["featurize", str(manifest), "--store", str(store), "--models", "tiny-random", "--workers", "0"]
    r = CliRunner().invoke(app, base + ["--ground-size", "96", "--json"])
    assert r.exit_code == 0, r.output
    with StoreReader(store) as rd:
        assert json.loads(rd.manifest["compat"]["ground_input"])["shortest_edge"] == 96  # the store's identity
        assert rd.models["grounder"]["ground_size"] == 96
        objs = rd.objects(rd.select())
        meta = rd.metadata()
        assert objs["grounded"].any()
        for row, box in zip(objs["image"], objs["box"]):
            if np.isfinite(box).all():
                assert 0 <= box[0] < box[2] <= meta["width"][row] and 0 <= box[1] < box[3] <= meta["height"][row]
    r = CliRunner().invoke(app, base + ["--ground-size", "128"])
    assert r.exit_code == 1 and "ground_input" in r.output
    r = CliRunner().invoke(app, base)  # the tiny grounder's own size (128) is not 96 either
    assert r.exit_code == 1 and "ground_input" in r.output


def test_ground_size_limits():
    with pytest.raises(InputError, match="at least"):
        load_grounder("tiny-random", ground_size=8)
    with pytest.raises(InputError, match="own input size"):
        load_grounder("owlv2-tiny-random", ground_size=128)


def test_owlv2_grounder_through_the_cli(tmp_path):
    rows = make_rows(tmp_path / "imgs", 5)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,caption\n" + "".join(f"{r.path},fake,{r.caption or 'a cat on a mat'}\n"
                                                        for r in rows))
    store = tmp_path / "s"
    base = ["featurize", str(manifest), "--store", str(store), "--models", "tiny-random", "--workers", "0"]
    r = CliRunner().invoke(app, base + ["--grounder", "owlv2-tiny-random", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n_written"] == 5
    with StoreReader(store) as rd:
        assert rd.manifest["compat"]["grounder"] == "owlv2-tiny-random"
        g = rd.models["grounder"]
        assert g["family"] == "owlv2" and g["random_weights"] and "not measured" in g["quality"]
        objs = rd.objects(rd.select())
        meta = rd.metadata()
        # threshold 0.0 for random weights: a noun is ungrounded only when its best box lies in the padding
        assert objs["grounded"].any()
        for row, box, grounded in zip(objs["image"], objs["box"], objs["grounded"]):
            if grounded:
                assert 0 <= box[0] < box[2] <= meta["width"][row] and 0 <= box[1] < box[3] <= meta["height"][row]
    assert validate(store).ok
    # another grounder never shares the store
    r = CliRunner().invoke(app, base)
    assert r.exit_code == 1 and "grounder" in r.output


def test_owlv2_loads_from_a_saved_folder_with_the_same_boxes(tmp_path):
    from item.featurize.models.owlv2 import build_owlv2

    model, processor = build_owlv2("owlv2-tiny-random")
    folder = tmp_path / "owl"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    from_folder = load_grounder(str(folder), box_threshold=0.0)
    by_name = load_grounder("owlv2-tiny-random", box_threshold=0.0)
    assert from_folder.family == "owlv2" and from_folder.info["random_weights"]
    rng = np.random.default_rng(5)
    images = [Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)) for w, h in SIZES[:3]]
    nouns = [["dog", "cat"], [], ["a very long noun phrase that is cut"]]
    assert from_folder.ground(images, nouns) == by_name.ground(images, nouns)
    assert resolve_models("default", grounder=str(folder)).box_threshold == 0.1
