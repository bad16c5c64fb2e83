"""issue 11: featurize's front door: featurize_store, featurize_images, ModelSpec.from_store / from_head."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from item.cli import app
from item.errors import InputError
from item.featurize import FeaturizeConfig, ModelSpec, featurize_images, featurize_store, load_models, resolve_models
from item.store import StoreReader, validate


@pytest.fixture(scope="module")
def models():
    return load_models(resolve_models("tiny-random"), "cpu")


def make_images(folder: Path, n: int, seed: int = 0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 255, size=(24 + i % 5, 32 + i % 7, 3), dtype=np.uint8)
        p = folder / f"{i:03d}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def test_featurize_store_uses_shard_size_and_records_its_model_spec(tmp_path, models):
    make_images(tmp_path / "data" / "real", 7)
    store = tmp_path / "s"
    summary = featurize_store([tmp_path / "data"], store, models=models,
                              config=FeaturizeConfig(workers=0, batch_size=2, shard_size=3))
    assert summary.n_written == 7
    manifest = json.loads((store / "manifest.json").read_text())
    # Shards end between batches of 2 once 3 rows are buffered: 4 + 3 rows.
    assert [s["n_images"] for s in manifest["shards"]] == [4, 3]
    assert validate(store).ok
    spec = resolve_models("tiny-random")
    assert ModelSpec.from_store(store) == spec
    assert ModelSpec.from_store(store / "manifest.json") == spec
    assert ModelSpec.from_store(manifest) == spec


def test_model_spec_from_an_older_store_and_from_a_head(tmp_path, models):
    make_images(tmp_path / "data" / "real", 3)
    make_images(tmp_path / "data" / "fake", 3, seed=1)
    store = tmp_path / "s"
    featurize_store([tmp_path / "data"], store, models="tiny-random", config=FeaturizeConfig(workers=0))
    manifest = json.loads((store / "manifest.json").read_text())
    older = dict(manifest, models={k: v for k, v in manifest["models"].items() if k != "spec"})
    # A store written before the spec was recorded: rebuilt from its compat keys and grounder thresholds.
    assert ModelSpec.from_store(older) == resolve_models("tiny-random")
    r = CliRunner().invoke(app, ["train", str(store), "--out", str(tmp_path / "head"), "--kind", "logistic",
                                 "--train-split", "", "--val-split", ""])
    assert r.exit_code == 0, r.output
    assert ModelSpec.from_head(tmp_path / "head") == resolve_models("tiny-random")
    assert ModelSpec.from_head(tmp_path / "head" / "head.json") == resolve_models("tiny-random")
    bad = dict(manifest, models={**manifest["models"], "spec": {**manifest["models"]["spec"], "grounder": "none"}})
    with pytest.raises(InputError, match="grounder"):
        ModelSpec.from_store(bad)


def test_featurize_images_takes_paths_and_pil_images_and_equals_the_store(tmp_path, models):
    paths = make_images(tmp_path / "data" / "real", 4)
    store = tmp_path / "s"
    featurize_store([tmp_path / "data"], store, models=models, config=FeaturizeConfig(workers=0, batch_size=16))
    pil = Image.open(paths[1])
    pil.load()
    recs = featurize_images([paths[0], pil, str(paths[2]), paths[3]], models=models,
                            config=FeaturizeConfig(workers=0, batch_size=16))
    assert [r.status for r in recs] == ["ok"] * 4
    assert recs[1].path.endswith("001.png")  # a PIL image opened from a file keeps its file name
    with StoreReader(store) as rd:
        meta = rd.metadata()
        emb = rd.read("image_emb")
        row = {Path(p).name: i for i, p in enumerate(meta["path"])}
        for r, p in zip(recs, paths):
            i = row[p.name]
            assert r.caption == meta["caption"][i]
            # the store keeps float16; the same batch composition gives the same values
            np.testing.assert_array_equal(r.image_emb.astype(np.float16), emb[i])
        assert recs[0].id == meta["id"][row["000.png"]]
    # given captions (a list aligned with the inputs) replace the captioner's, None entries are captioned
    recs2 = featurize_images([paths[0], Image.fromarray(np.zeros((20, 20, 3), np.uint8))], models="tiny-random",
                             captions=["a dog on a sofa", None], config=FeaturizeConfig(workers=0))
    assert recs2[0].caption == "a dog on a sofa" and recs2[0].caption_source == "given"
    assert recs2[1].path == "<image 1>" and recs2[1].caption_source == "tiny-random"
    with pytest.raises(InputError, match="2 captions for 1 images"):
        featurize_images([paths[0]], models=models, captions=["a", "b"])


def test_unreadable_input_comes_back_skipped(tmp_path, models):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    recs = featurize_images([bad], models=models)
    assert recs[0].status == "skipped" and recs[0].reason


def test_engine_ray_without_ray_is_one_line(tmp_path, monkeypatch):
    make_images(tmp_path / "data", 2)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as without the extra
    r = CliRunner().invoke(app, ["featurize", str(tmp_path / "data"), "--store", str(tmp_path / "s"),
                                 "--models", "tiny-random", "--engine", "ray"])
    assert r.exit_code == 1
    assert 'pip install -e ".[ray]"' in r.output
    assert "Traceback" not in r.output


def test_unknown_engine_lists_the_valid_ones(tmp_path):
    make_images(tmp_path / "data", 1)
    r = CliRunner().invoke(app, ["featurize", str(tmp_path / "data"), "--store", str(tmp_path / "s"),
                                 "--models", "tiny-random", "--engine", "spark"])
    assert r.exit_code == 1 and "local, ray" in r.output
