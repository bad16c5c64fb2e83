"""Issue 13: comparable numbers. Accuracy at 0.5 beside the validation threshold, an oracle column
that says it saw the test labels, and `item eval --reals GEN=REALGEN` for shared real pools."""

import dataclasses
import functools
import itertools
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from item.classify import metrics
from item.classify.pairing import parse_reals, real_pools
from item.cli import app
from item.errors import InputError
from item.misalignment import compute, feature_size
from item.store import StoreWriter
from item.store.synthetic import synthetic_compat, synthetic_records

D = 32


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_oracle_accuracy_is_the_best_threshold_by_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(1, 25))
        scores = np.round(rng.random(n), 1)  # ties on purpose
        labels = rng.integers(0, 2, n)
        cuts = np.r_[np.unique(scores), np.inf]
        brute = max(np.mean((scores >= t) == (labels == 1)) for t in cuts)
        assert metrics.oracle_accuracy(scores, labels) == pytest.approx(brute)


def test_table_rows_carry_acc_at_05_and_the_oracle():
    gens = np.array(["g"] * 6)
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.3, 0.45, 0.4, 0.6, 0.9])
    row = metrics.per_generator_table(scores, labels, gens, threshold=0.2)[0]
    assert row["acc"] == pytest.approx(4 / 6) and row["real_acc"] == pytest.approx(1 / 3)  # 0.3, 0.45 called fake
    assert row["acc_05"] == pytest.approx(5 / 6) and row["real_acc_05"] == 1.0 and row["fake_acc_05"] == pytest.approx(2 / 3)
    assert row["oracle_acc"] == pytest.approx(5 / 6)
    mean = metrics.per_generator_table(scores, labels, gens, 0.2)[-1]
    assert mean["generator"] == "mean" and mean["oracle_acc"] == row["oracle_acc"] and mean["acc_05"] == row["acc_05"]


def test_parse_and_resolve_reals():
    assert parse_reals("ldm_*=laion, guided=imagenet") == {"ldm_*": "laion", "guided": "imagenet"}
    assert parse_reals(None) == {}
    for bad in ("ldm", "=laion", "ldm=", "a=b,a=c"):
        with pytest.raises(InputError):
            parse_reals(bad)
    gens = np.array(["laion", "laion", "ldm_200", "ldm_100", "guided", "imagenet"])
    labels = np.array([0, 0, 1, 1, 1, 0])
    pools, kinds = real_pools(labels, gens, {"ldm_*": "laion", "ldm_100": "imagenet", "guided": "imagenet"})
    assert pools["ldm_200"].tolist() == [0, 1] and pools["ldm_100"].tolist() == [5]  # exact beats pattern
    assert kinds == {"ldm_200": "laion", "ldm_100": "imagenet", "guided": "imagenet"}
    with pytest.raises(InputError, match="generators with fakes: guided, ldm_100, ldm_200"):
        real_pools(labels, gens, {"dalle": "laion"})
    with pytest.raises(InputError, match="generators with reals: imagenet, laion"):
        real_pools(labels, gens, {"guided": "coco"})


@pytest.fixture(scope="module")
def shared_real_store(tmp_path_factory):
    """UFD-shaped rows: 'progan' with its own reals, 'ldm_200' fakes with no reals, 'laion' reals only."""
    root = tmp_path_factory.mktemp("shared") / "store"
    recs = synthetic_records(480, D, generators=("progan", "ldm_200", "laion"), seed=3,
                             misalignment_fn=functools.partial(compute, "hierarchical"),
                             misalignment_dim=feature_size("hierarchical", D))
    keep = [r for r in recs if not (r.generator == "ldm_200" and r.label == "real")
            and not (r.generator == "laion" and r.label == "fake")]
    compat = synthetic_compat(D, feature_size("hierarchical", D))
    with StoreWriter(root, compat=compat, models={"clip": {"model": "synthetic", "random_weights": True}},
                     recipe="hierarchical") as w:
        for r in keep:
            w.add(r)
    head = root.parent / "head"
    r = cli("train", root, "--out", head, "--hidden", "16", "--max-epochs", "20")
    assert r.exit_code == 0, r.stderr
    return root, head


def test_eval_reals_pairs_fakes_with_a_named_real_pool(shared_real_store, tmp_path):
    store, head = shared_real_store
    plain = cli("eval", store, "--head", head, "--json")
    assert plain.exit_code == 0, plain.stderr
    rows = {r["generator"]: r for r in json.loads(plain.stdout)["rows"]}
    assert rows["ldm_200"]["reals"] == "pooled"  # progan's and laion's reals together
    paired = cli("eval", store, "--head", head, "--json", "--reals", "ldm_*=laion")
    assert paired.exit_code == 0, paired.stderr
    doc = json.loads(paired.stdout)
    rows2 = {r["generator"]: r for r in doc["rows"]}
    assert rows2["ldm_200"]["reals"] == "laion"
    assert rows2["progan"]["reals"] == "own" and rows2["progan"] == rows["progan"]
    from item.store import StoreReader

    with StoreReader(store) as r:
        test = r.select(split="test")
        meta = r.metadata(["generator", "label"])
        n_laion = int(np.sum((meta["generator"][test] == "laion") & (meta["label"][test] == "real")))
    assert rows2["ldm_200"]["n_real"] == n_laion < rows["ldm_200"]["n_real"]
    for key in ("acc_05", "real_acc_05", "fake_acc_05", "oracle_acc"):
        assert key in rows2["ldm_200"]
    # The text table: the oracle column says what it is; the legend says which number is the headline.
    txt = cli("eval", store, "--head", head, "--reals", "ldm_*=laion")
    assert "oracle_acc(test labels)" in txt.stdout and "headline" in txt.stdout
    csv_path = tmp_path / "t.csv"
    assert cli("eval", store, "--head", head, "--csv", csv_path).exit_code == 0
    assert "oracle_acc" in csv_path.read_text().splitlines()[0]
    bad = cli("eval", store, "--head", head, "--reals", "ldm_*=coco")
    assert bad.exit_code == 1 and "no real rows of generator 'coco'" in bad.stderr


def test_report_marks_the_oracle_column(shared_real_store, tmp_path):
    store, head = shared_real_store
    out = tmp_path / "r.html"
    r = cli("report", store, "--head", head, "--out", out)
    assert r.exit_code == 0, r.stderr
    html = out.read_text()
    assert "oracle acc (test labels)" in html and "acc@0.5" in html and "acc (val. threshold)" in html
