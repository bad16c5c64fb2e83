"""The classify stage through its public API and the real CLI: recipes, train/eval, predict,
neighbours, report and demo, on hand-written, synthetic and tiny-random featurized stores."""

import csv
import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score
from typer.testing import CliRunner

from item.classify.features import store_features
from item.classify.heads import load_head
from item.cli import app
from item.misalignment import compute, feature_size
from item.store import ImageRecord, ObjectRecord, StoreReader, StoreWriter
from item.store.synthetic import synthetic_compat, synthetic_records, write_synthetic_store

D = 32
N = 600
FAST_MLP = ["--hidden", "32", "--batch-size", "64", "--max-epochs", "60"]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(*args):
    r = cli(*args)
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    return r


def one_error_line(r, *words):
    assert r.exit_code == 1, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def write_records(root, records, d=D, compat=None, shard_size=4096):
    compat = compat or synthetic_compat(d, feature_size("hierarchical", d))
    with StoreWriter(root, compat=compat, models={"clip": {"model": compat["clip_model"], "random_weights": True}},
                     recipe="hierarchical", shard_size=shard_size) as w:
        for rec in records:
            w.add(rec)
    return root


def hier_records(n=N, d=D, **kw):
    return synthetic_records(n, d, misalignment_fn=functools.partial(compute, "hierarchical"),
                             misalignment_dim=feature_size("hierarchical", d), **kw)


def synth_store(root, n=N, d=D, **kw):
    return Path(write_synthetic_store(root, n, d, misalignment_fn=functools.partial(compute, "hierarchical"),
                                      misalignment_dim=feature_size("hierarchical", d), **kw))


@pytest.fixture(scope="module")
def signal_store(tmp_path_factory):
    return synth_store(tmp_path_factory.mktemp("signal") / "s", signal=1.0, seed=1)


@pytest.fixture(scope="module")
def noise_store(tmp_path_factory):
    return synth_store(tmp_path_factory.mktemp("noise") / "s", signal=0.0, seed=2)


@pytest.fixture(scope="module")
def logistic_head(signal_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("heads") / "logistic"
    ok("train", signal_store, "--out", out, "--head", "logistic")
    return out


# -- recipes against hand-computed numpy -----------------------------------------------------------
def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x)


def test_recipes_equal_hand_computed_numpy(tmp_path):
    d = 4
    rng = np.random.default_rng(0)

    def vec():  # multiples of 1/8 in [-2, 2]: exact in the store's float16, never all zero
        v = rng.integers(-16, 17, size=d) / 8.0
        v[0] = v[0] or 1.0
        return v.astype(np.float32)

    # image 0: two grounded objects and one ungrounded; 1: no objects; 2: only an ungrounded object;
    # 3: one grounded object. Two shards (shard_size 3), so rows cross a shard boundary.
    layout = [[True, False, True], [], [False], [True]]
    recs = []
    for i, objs in enumerate(layout):
        objects = [ObjectRecord(noun=f"n{j}", noun_emb=vec(), box=(0.0, 0.0, 5.0, 5.0) if g else None,
                                score=0.5 if g else 0.0, crop_emb=vec() if g else None)
                   for j, g in enumerate(objs)]
        recs.append(ImageRecord(id=f"{i:064x}", path=f"/x/{i}.png", label="real", split="train",
                                image_emb=vec(), caption_emb=vec(),
                                misalignment=np.zeros(feature_size("hierarchical", d), np.float32), objects=objects))
    root = write_records(tmp_path / "s", recs, d=d, shard_size=3)

    def expected(rec, recipe):
        u0, v0 = _unit(rec.image_emb), _unit(rec.caption_emb)
        glob = np.r_[u0 - v0, u0 @ v0]
        pairs = [(_unit(o.crop_emb), _unit(o.noun_emb)) for o in rec.objects if o.box is not None]
        if pairs:
            cos = np.array([u @ v for u, v in pairs])
            loc = np.r_[np.mean([u - v for u, v in pairs], axis=0), cos.min(), cos.mean(), cos.max(), len(pairs)]
        else:
            loc = np.zeros(d + 4)
        return {"global": glob, "local": loc, "hierarchical": np.r_[glob, loc], "visual": u0}[recipe]

    rows = np.array([3, 0, 2, 1, 0])  # scrambled, across shards, one row twice
    with StoreReader(root) as reader:
        assert len(reader.shards) == 2
        for recipe in ("global", "local", "hierarchical", "visual"):
            got = store_features(reader, recipe, rows)
            assert got.dtype == np.float32 and got.shape == (rows.size, feature_size(recipe, d))
            want = np.array([expected(recs[r], recipe) for r in rows])
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=recipe)
            # an image whose only object is ungrounded has count 0 and zero local columns
            if recipe == "local":
                assert got[2, -1] == 0 and not got[2].any()
                assert got[1, -1] == 2 and got[0, -1] == 1


# -- a store made by featurize with tiny random models --------------------------------------------
def _image(path: Path, seed: int, size=(64, 48)):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def feat(tmp_path_factory):
    """A 16-image featurized store (2 generators x real/fake x train/val/test), its head, its images."""
    base = tmp_path_factory.mktemp("feat")
    rows, k = [], 0
    for gen in ("gen_a", "gen_b"):
        for split, n in (("train", 2), ("val", 1), ("test", 1)):
            for label in ("real", "fake"):
                for _ in range(n):
                    p = _image(base / "img" / gen / label / f"{k}.png", seed=k, size=(64 + 8 * k, 48))
                    rows.append({"path": str(p), "label": label, "generator": gen, "split": split})
                    k += 1
    with open(base / "m.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "generator", "split"])
        w.writeheader()
        w.writerows(rows)
    store = base / "store"
    ok("featurize", base / "m.csv", "--store", store, "--models", "tiny-random", "--workers", "0")
    head = base / "head"
    ok("train", store, "--out", head, "--head", "logistic")
    return {"store": store, "head": head, "rows": rows, "base": base}


def test_featurize_misalignment_column_matches_recipe(feat):
    with StoreReader(feat["store"]) as reader:
        rows = reader.select()
        assert rows.size == 16 and reader.compat["recipe"] == "hierarchical"
        stored = reader.read("misalignment", rows)
        recomputed = store_features(reader, "hierarchical", rows)
    # Same recipe, same layout; the only gap is float16 rounding of the stored embeddings (see below).
    np.testing.assert_allclose(stored, recomputed, rtol=0, atol=2e-3)


@pytest.mark.xfail(strict=True, reason="featurize computes `misalignment` from float32 embeddings, then stores "
                   "them as float16: the column differs from the recipe over stored embeddings by ~2e-4 "
                   "(fix in item/featurize/pipeline.py: round embeddings to float16 before compute())")
def test_featurize_misalignment_column_is_exact(feat):
    with StoreReader(feat["store"]) as reader:
        rows = reader.select()
        np.testing.assert_allclose(reader.read("misalignment", rows),
                                   store_features(reader, "hierarchical", rows), rtol=0, atol=1e-6)
