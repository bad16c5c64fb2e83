"""The featurize stage end to end with tiny random models, on made-up images and on the shipped samples."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from item import faults
from item.cli import app
from item.featurize import FeaturizeConfig, featurize_store, load_models, resolve_models
from item.featurize.inputs.discover import discover
from item.store import StoreReader, validate

SAMPLES = Path(__file__).resolve().parents[1] / "item" / "samples"


@pytest.fixture(scope="module")
def models():
    return load_models(resolve_models("tiny-random"), "cpu")


def make_image(path: Path, seed: int, size=(64, 48), fmt=None):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def run(rows, root, models, **cfg):
    config = FeaturizeConfig(**{"workers": 0, "batch_size": 4, "shard_size": 5, **cfg})
    return featurize_store(rows, root, models=models, config=config)


def test_samples_manifest_cli(tmp_path):
    store = tmp_path / "s"
    r = CliRunner().invoke(app, ["featurize", str(SAMPLES / "manifest.csv"), "--store", str(store),
                                 "--models", "tiny-random", "--workers", "0", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["n_written"] == 37 and summary["n_duplicates"] == 1 and summary["n_skipped"] == 0
    assert set(summary["stage_seconds"]) >= {"caption", "ground", "clip_image", "clip_text", "decode"}
    assert validate(store).ok
    with StoreReader(store) as rd:
        meta = rd.metadata()
        assert rd.random_weights and rd.models["clip"]["random_weights"]
        assert set(meta["label"]) == {"real", "fake"}
        assert "SDXL-Turbo" in set(meta["generator"])
        assert all(c for c in meta["caption"])  # every image got a caption from the (tiny) captioner
        assert set(meta["caption_source"]) == {"tiny-random"}
        assert len(rd.aliases()["path"]) == 1
    # the same command again resumes: nothing is encoded twice
    r = CliRunner().invoke(app, ["featurize", str(SAMPLES / "manifest.csv"), "--store", str(store),
                                 "--models", "tiny-random", "--workers", "0", "--json"])
    again = json.loads(r.stdout)
    assert again["n_written"] == 0 and again["n_already_done"] == 38 and again["n_duplicates"] == 0
    r = CliRunner().invoke(app, ["store", "validate", str(store)])
    assert r.exit_code == 0, r.output


@pytest.mark.slow  # 37 sample images featurized (about 36 CPU s)
def test_given_captions_are_stored_as_given(tmp_path, models):
    """The shipped samples with their reference captions given (COCO's, for the real photos)."""
    import csv

    with open(SAMPLES / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(tmp_path / "m.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "generator", "split", "caption"])
        for r in rows:
            w.writerow([str(SAMPLES / r["path"]), r["label"], r["generator"], r["split"], r["reference_caption"]])
    disc = discover([str(tmp_path / "m.csv")])
    summary = run(disc.rows, tmp_path / "s", models)
    assert summary.n_written == 37  # 38 rows, two of them the same bytes
    with StoreReader(tmp_path / "s") as rd:
        meta = rd.metadata()
        given = meta["caption_source"] == "given"
        assert given.sum() == sum(1 for r in rows if r["reference_caption"])  # used as they are
        assert "A row of white toilets sitting on top of a dirt ground." in set(meta["caption"][given])


@pytest.mark.parametrize("layout", ["forensynths", "real-fake", "genimage", "per-generator", "flat"])
def test_folder_layouts(tmp_path, models, layout):
    src = tmp_path / "data"
    seed = 0
    expected = {}
    if layout == "forensynths":
        for gen in ("progan", "stylegan"):
            for lab, folder in (("real", "0_real"), ("fake", "1_fake")):
                for i in range(2):
                    p = make_image(src / gen / "car" / folder / f"{i}.png", seed := seed + 1)
                    expected[str(p)] = (lab, gen)
    elif layout == "real-fake":
        for lab in ("real", "fake"):
            for i in range(3):
                p = make_image(src / lab / f"{i}.jpg", seed := seed + 1)
                expected[str(p)] = (lab, "unknown")
    elif layout == "genimage":
        for gen in ("midjourney", "sdv4"):
            for sp in ("train", "val"):
                for lab, folder in (("real", "nature"), ("fake", "ai")):
                    p = make_image(src / gen / sp / folder / "a.png", seed := seed + 1)
                    expected[str(p)] = (lab, gen)
    elif layout == "per-generator":
        for gen, (fr, ff) in {"dalle": ("real", "fake"), "glide": ("0_real", "1_fake")}.items():
            for lab, folder in (("real", fr), ("fake", ff)):
                p = make_image(src / gen / folder / "x.webp", seed := seed + 1, fmt="WEBP")
                expected[str(p)] = (lab, gen)
    else:
        for i in range(4):
            p = make_image(src / f"img{i}.bmp", seed := seed + 1)
            expected[str(p)] = ("fake", "mygen")
    args = ["featurize", str(src), "--store", str(tmp_path / "s"), "--models", "tiny-random", "--workers", "0"]
    if layout == "flat":
        args += ["--label", "fake", "--generator", "mygen"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    with StoreReader(tmp_path / "s") as rd:
        meta = rd.metadata()
        got = {p: (lab, g) for p, lab, g in zip(meta["path"], meta["label"], meta["generator"])}
        if layout == "genimage":
            assert set(meta["split"]) == {"train", "val"}
    assert got == expected


def test_interrupted_run_resumes_to_the_same_rows(tmp_path, models, monkeypatch):
    src = tmp_path / "imgs"
    for i in range(13):
        make_image(src / "real" / f"{i:02d}.png", i, size=(40 + i, 30 + 2 * i))
    (src / "real" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rows = discover([str(src)]).rows
    full = tmp_path / "full"
    run(rows, full, models)

    part = tmp_path / "part"
    # The second batch fails after the models ran (ITEM_FAULT's 'batch' point), before its rows are written.
    monkeypatch.setattr(faults, "_hits", {})
    monkeypatch.setenv("ITEM_FAULT", "batch:2:raise=EIO")
    with pytest.raises(OSError, match="ITEM_FAULT"):
        run(rows, part, models, shard_size=3)
    monkeypatch.delenv("ITEM_FAULT")
    with StoreReader(part) as rd:
        assert 0 < rd.n_images < len(rows)
    summary = run(rows, part, models, shard_size=3)
    assert summary.n_already_done > 0
    with StoreReader(full) as a, StoreReader(part) as b:
        ma, mb = a.metadata(), b.metadata()
        order_a, order_b = np.argsort(ma["id"]), np.argsort(mb["id"])
        for col in ("id", "path", "caption", "nouns", "status", "reason", "width", "height"):
            assert list(ma[col][order_a]) == list(mb[col][order_b]), col
        for col in ("image_emb", "caption_emb", "misalignment"):
            assert np.array_equal(a.read(col)[order_a], b.read(col)[order_b]), col
        oa, ob = a.objects(order_a), b.objects(order_b)
        for col in ("noun", "box", "crop_emb", "noun_emb", "grounded"):
            assert np.array_equal(oa[col], ob[col]), col
    assert validate(part).ok


def test_unreadable_files_are_skipped_and_counted(tmp_path, models):
    src = tmp_path / "fake"
    make_image(src / "good.png", 1)
    (src / "empty.jpg").write_bytes(b"")
    (src / "page.jpg").write_text("<html>not an image</html>")
    (src / "dir.png").mkdir()
    r = CliRunner().invoke(app, ["featurize", str(tmp_path), "--store", str(tmp_path / "s"),
                                 "--models", "tiny-random", "--workers", "0"])
    assert r.exit_code == 0, r.output
    with StoreReader(tmp_path / "s") as rd:
        assert rd.counts["n_ok"] == 1
        assert rd.counts["skipped_by_reason"] == {"empty-file": 1, "not-an-image": 1}
    info = json.loads(CliRunner().invoke(app, ["store", "info", str(tmp_path / "s"), "--json"]).stdout)
    assert info["n_skipped"] == 2 and info["skipped_by_reason"]["empty-file"] == 1


def test_boxes_inside_images_and_deterministic(tmp_path, models):
    src = tmp_path / "real"
    for i, size in enumerate([(97, 31), (16, 200), (300, 300)]):
        make_image(src / f"{i}.png", i, size=size)
    rows = discover([str(src)]).rows
    run(rows, tmp_path / "a", models)
    run(rows, tmp_path / "b", models)
    with StoreReader(tmp_path / "a") as a, StoreReader(tmp_path / "b") as b:
        meta = a.metadata()
        objs = a.objects()
        assert objs["grounded"].any()
        for img, box, g in zip(objs["image"], objs["box"], objs["grounded"]):
            if g:
                w, h = meta["width"][img], meta["height"][img]
                assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h
        assert np.array_equal(a.read("image_emb"), b.read("image_emb"))
        assert np.array_equal(a.read("misalignment"), b.read("misalignment"))
        assert np.array_equal(objs["crop_emb"], b.objects()["crop_emb"])


def test_perturbation_is_applied_and_recorded(tmp_path, models):
    src = tmp_path / "real"
    make_image(src / "a.png", 3, size=(64, 64))
    rows = discover([str(src)]).rows
    run(rows, tmp_path / "clean", models)
    run(rows, tmp_path / "jpeg", models, perturb="jpeg:50+resize:0.5")
    with StoreReader(tmp_path / "clean") as c, StoreReader(tmp_path / "jpeg") as j:
        assert j.metadata()["perturbation"][0] == "jpeg:50+resize:0.5"
        assert j.metadata()["width"][0] == 32 and c.metadata()["width"][0] == 64
        assert not np.array_equal(c.read("image_emb"), j.read("image_emb"))
        assert j.compat["perturbation"] == "jpeg:50+resize:0.5"


def test_other_models_refused_in_same_store(tmp_path):
    src = tmp_path / "real"
    make_image(src / "a.png", 3)
    store = tmp_path / "s"
    base = ["featurize", str(src), "--store", str(store), "--models", "tiny-random", "--workers", "0"]
    assert CliRunner().invoke(app, base).exit_code == 0
    r = CliRunner().invoke(app, base + ["--max-objects", "3"])
    assert r.exit_code == 1 and "max_objects" in r.output
    r = CliRunner().invoke(app, base + ["--max-objects", "3", "--overwrite"])
    assert r.exit_code == 0, r.output


def test_captioner_none_needs_captions(tmp_path):
    make_image(tmp_path / "a.png", 1)
    (tmp_path / "m.csv").write_text("path,label,caption\na.png,real,a dog on a couch\n")
    r = CliRunner().invoke(app, ["featurize", str(tmp_path / "m.csv"), "--store", str(tmp_path / "s"),
                                 "--models", "tiny-random", "--captioner", "none", "--workers", "0"])
    assert r.exit_code == 0, r.output
    with StoreReader(tmp_path / "s") as rd:
        assert rd.metadata()["caption"][0] == "a dog on a couch"
        assert rd.nouns(0) == ["dog", "couch"]
    (tmp_path / "m2.csv").write_text("path,label\na.png,real\n")
    r = CliRunner().invoke(app, ["featurize", str(tmp_path / "m2.csv"), "--store", str(tmp_path / "s2"),
                                 "--models", "tiny-random", "--captioner", "none", "--workers", "0"])
    assert r.exit_code == 1 and "captioner none" in r.output


def test_missing_pretrained_weights_is_one_line(tmp_path):
    make_image(tmp_path / "real" / "a.png", 1)
    r = CliRunner().invoke(app, ["featurize", str(tmp_path), "--store", str(tmp_path / "s"),
                                 "--models", "small", "--workers", "0"])
    assert r.exit_code == 1
    err = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "Traceback" not in r.output


def test_extreme_sizes_are_featurized(tmp_path, models):
    src = tmp_path / "real"
    for i, size in enumerate([(1, 1), (10000, 10), (10, 3000), (32, 32), (5, 7)]):
        make_image(src / f"{i}.png", i, size=size)
    rows = discover([str(src)]).rows
    summary = run(rows, tmp_path / "s", models)
    assert summary.n_written == 5 and summary.n_skipped == 0
    with StoreReader(tmp_path / "s") as rd:
        meta, objs = rd.metadata(), rd.objects()
        assert sorted(zip(meta["width"], meta["height"])) == sorted([(1, 1), (10000, 10), (10, 3000), (32, 32), (5, 7)])
        for img, box, g in zip(objs["image"], objs["box"], objs["grounded"]):
            if g:
                assert 0 <= box[0] < box[2] <= meta["width"][img] and 0 <= box[1] < box[3] <= meta["height"][img]
    assert validate(tmp_path / "s").ok


def test_models_saved_to_disk_load_through_the_cli(tmp_path, models):
    """A checkpoint saved by the test goes through the same loading path pretrained weights take."""
    from item.featurize.models.tiny import save_tiny_models

    paths = save_tiny_models(tmp_path / "weights")
    make_image(tmp_path / "data" / "real" / "a.png", 5)
    make_image(tmp_path / "data" / "fake" / "b.png", 6)
    store = tmp_path / "s"
    r = CliRunner().invoke(app, ["featurize", str(tmp_path / "data"), "--store", str(store), "--workers", "0",
                                 "--clip", paths["clip_model"], "--pretrained", paths["clip_pretrained"],
                                 "--captioner", paths["captioner"], "--grounder", paths["grounder"],
                                 "--box-threshold", "0", "--text-threshold", "0"])
    assert r.exit_code == 0, r.output
    run(discover([str(tmp_path / "data")]).rows, tmp_path / "ref", models)
    with StoreReader(store) as a, StoreReader(tmp_path / "ref") as b:
        assert a.random_weights  # the saved weights are the random tiny ones, and the store says so
        assert a.models["clip"]["weights"].startswith("sha256:")
        np.testing.assert_allclose(a.read("image_emb"), b.read("image_emb"), atol=1e-3)
        assert list(a.metadata()["caption"]) == list(b.metadata()["caption"])


def test_decoding_workers_give_the_same_rows(tmp_path, models):
    src = tmp_path / "fake"
    for i in range(6):
        make_image(src / f"{i}.jpg", i)
    rows = discover([str(src)]).rows
    run(rows, tmp_path / "w1", models, workers=1)
    run(rows, tmp_path / "w0", models)
    with StoreReader(tmp_path / "w1") as a, StoreReader(tmp_path / "w0") as b:
        assert list(a.metadata()["id"]) == list(b.metadata()["id"])
        assert np.array_equal(a.read("misalignment"), b.read("misalignment"))


def test_json_stdout_holds_only_the_document_when_libraries_print(tmp_path):
    """`--json`: output that libraries write to stdout while the run works (Ray relays its workers' and
    raylet's messages there, at the file-descriptor level too) goes to stderr; stdout parses as one JSON."""
    import os
    import subprocess
    import sys

    for label, seed in (("real", 1), ("fake", 2)):
        make_image(tmp_path / "data" / label / f"{label}.png", seed)
    driver = (
        "import os, sys, item.featurize as f\n"
        "real = f.featurize_store\n"
        "def noisy(*a, **k):\n"
        "    print('(raylet) a library printing on stdout')\n"
        "    sys.stdout.flush()\n"
        "    os.write(1, b'(pid=1) written to file descriptor 1\\n')\n"
        "    return real(*a, **k)\n"
        "f.featurize_store = noisy\n"
        "from item.cli import app\n"
        "sys.argv = ['item'] + sys.argv[1:]\n"
        "app()\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-c", driver, "featurize", str(tmp_path / "data"), "--store",
                        str(tmp_path / "s"), "--models", "tiny-random", "--workers", "0", "--json"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["n_written"] == 2
    assert "a library printing on stdout" in r.stderr and "written to file descriptor 1" in r.stderr
