"""issue 11: ``item train`` streams feature rows shard by shard when they exceed --max-memory."""

import functools
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from item.classify.features import store_features
from item.classify.heads import load_head
from item.classify.streaming import StoreRows, parse_memory
from item.cli import app
from item.errors import InputError
from item.misalignment import compute, feature_size
from item.store import StoreReader
from item.store.synthetic import write_synthetic_store

D = 32
FAST_MLP = ["--hidden", "32", "--batch-size", "128", "--lr", "0.01", "--max-epochs", "25", "--patience", "5"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream") / "s"
    # 37-row shards: chunks end at shard ends, so the stream crosses many shard boundaries
    write_synthetic_store(root, 600, D, shard_size=37, misalignment_fn=functools.partial(compute, "hierarchical"),
                          misalignment_dim=feature_size("hierarchical", D), signal=1.0, seed=3)
    return root


def train(store, out, *extra):
    r = CliRunner().invoke(app, ["train", str(store), "--out", str(out), *FAST_MLP, *map(str, extra), "--json"])
    assert r.exit_code == 0, (r.stdout, r.stderr)
    return json.loads(r.stdout)


@pytest.mark.parametrize("recipe", ["hierarchical", "global"])
def test_streamed_chunks_are_the_in_memory_features(store, recipe):
    with StoreReader(store) as rd:
        rows = rd.select(split="train")
        stream = StoreRows(rd, recipe, rows, max_chunk_rows=25)
        parts = list(stream)
        assert len(parts) > 10
        ends = np.cumsum([s["n_images"] for s in rd.manifest["shards"]])
        for a, b, _ in parts:  # no chunk spans two shards
            assert np.searchsorted(ends, rows[a], side="right") == np.searchsorted(ends, rows[b - 1], side="right")
        np.testing.assert_array_equal(np.concatenate([X for _, _, X in parts]), store_features(rd, recipe, rows))


def test_streamed_training_equals_in_memory_training(store, tmp_path):
    mem = train(store, tmp_path / "mem")
    streamed = train(store, tmp_path / "stream", "--max-memory", "40KB")
    assert mem["streamed"] is False and streamed["streamed"] is True
    a, _ = load_head(tmp_path / "mem")
    b, _ = load_head(tmp_path / "stream")
    # the same standardisation (two streamed float64 passes against numpy's)
    np.testing.assert_allclose(a.mean_, b.mean_, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a.scale_, b.scale_, rtol=1e-6, atol=1e-7)
    with StoreReader(store) as rd:
        rows = rd.select(split="test")
        X = store_features(rd, "hierarchical", rows)
        y = (rd.metadata(["label"])["label"][rows] == "fake").astype(int)
    pa, pb = a.predict_proba(X)[:, 1], b.predict_proba(X)[:, 1]
    # Rows are shuffled within chunks instead of across the set, so the weights differ a little: the heads
    # must agree on what they say (decisions, ranking), not to the last digit.
    da, db = pa >= mem["threshold"], pb >= streamed["threshold"]
    assert np.mean(da == db) >= 0.95
    assert np.mean(da == y) > 0.85 and abs(np.mean(da == y) - np.mean(db == y)) <= 0.05
    assert abs(mem["validation"]["auroc"] - streamed["validation"]["auroc"]) <= 0.03


def test_logistic_streams_under_a_small_budget_and_learns(store, tmp_path):
    """issue 24: the logistic head streams past --max-memory (it used to refuse) and learns what lbfgs learns."""
    def logistic(out, *extra):
        r = CliRunner().invoke(app, ["train", str(store), "--out", str(out), "--kind", "logistic", *extra, "--json"])
        assert r.exit_code == 0, (r.stdout, r.stderr)
        return json.loads(r.stdout)

    mem = logistic(tmp_path / "mem")
    streamed = logistic(tmp_path / "stream", "--max-memory", "40KB")
    assert mem["streamed"] is False and streamed["streamed"] is True
    assert streamed["training"]["n_iter"] >= 1
    a, _ = load_head(tmp_path / "mem")
    b, _ = load_head(tmp_path / "stream")
    assert type(a) is type(b) and b.coef_.shape == a.coef_.shape
    with StoreReader(store) as rd:
        rows = rd.select(split="test")
        X = store_features(rd, "hierarchical", rows)
        y = (rd.metadata(["label"])["label"][rows] == "fake").astype(int)
    pa, pb = a.predict_proba(X)[:, 1], b.predict_proba(X)[:, 1]
    # The same convex objective solved by minibatches instead of lbfgs: decisions and ranking agree.
    assert np.corrcoef(pa, pb)[0, 1] > 0.9
    da, db = pa >= mem["threshold"], pb >= streamed["threshold"]
    assert np.mean(da == db) >= 0.9
    assert np.mean(db == y) > 0.85
    assert abs(mem["validation"]["auroc"] - streamed["validation"]["auroc"]) <= 0.03


def test_parse_memory():
    assert parse_memory("512MB") == 512 * 10**6
    assert parse_memory("1.5GiB") == int(1.5 * 2**30)
    assert parse_memory("800000") == 800000
    assert parse_memory("auto") > 0
    with pytest.raises(InputError, match="--max-memory"):
        parse_memory("lots")


# -- issue 30 (8): one feature function for both paths, on the public synthetic store ----------------
@pytest.mark.parametrize("kind", ["logistic", "mlp"])
def test_streamed_and_in_memory_heads_of_one_recipe_see_the_same_features_on_the_public_synthetic_store(
        tmp_path, kind):
    """write_synthetic_store's default misalignment column is 8 floats, not the 69 of the hierarchical recipe
    it names: the in-memory path reads the column, and the streamed path used to size its rows by the recipe
    (a broadcast error between shapes (69,) and (8,)). Both take their width from features.feature_width."""
    from item.classify.features import feature_width, store_feature_width

    root = write_synthetic_store(tmp_path / "pub", 2000, D, shard_size=300, seed=5)
    with StoreReader(root) as rd:
        assert store_feature_width(rd, "hierarchical") == 8 == feature_width(rd.compat, "hierarchical")
        assert store_feature_width(rd, "global") == feature_size("global", D)
        rows = rd.select(split="train")
        streamed_rows = StoreRows(rd, "hierarchical", rows, max_chunk_rows=64)
        assert streamed_rows.n_features == store_features(rd, "hierarchical", rows[:5]).shape[1]
    extra = ["--kind", kind]
    mem = train(root, tmp_path / "mem", *extra)
    streamed = train(root, tmp_path / "stream", *extra, "--max-memory", "20K")
    assert mem["streamed"] is False and streamed["streamed"] is True
    a, ia = load_head(tmp_path / "mem")
    b, ib = load_head(tmp_path / "stream")
    assert ia["feature_size"] == ib["feature_size"] == 8
    # the same feature rows, seen through the standardisation each path computed from them (the column is
    # seeded noise, so the heads' decisions are not compared: there is nothing to agree on)
    np.testing.assert_allclose(a.mean_, b.mean_, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a.scale_, b.scale_, rtol=1e-6, atol=1e-7)
    # and both heads evaluate on the store they came from
    r = CliRunner().invoke(app, ["eval", str(root), "--head", str(tmp_path / "mem"), "--head", str(tmp_path / "stream"),
                                 "--json"])
    assert r.exit_code == 0, (r.stdout, r.stderr)


def test_streamed_logistic_on_a_recipe_the_store_computes(store, tmp_path):
    """The other side of the one function: a recipe other than the store's is computed, in both paths alike."""
    mem = train(store, tmp_path / "mem", "--kind", "logistic", "--recipe", "global")
    streamed = train(store, tmp_path / "stream", "--kind", "logistic", "--recipe", "global", "--max-memory", "20K")
    assert mem["streamed"] is False and streamed["streamed"] is True
    assert load_head(tmp_path / "mem")[1]["feature_size"] == load_head(tmp_path / "stream")[1]["feature_size"] \
        == feature_size("global", D)
