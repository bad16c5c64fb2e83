"""An image whose source names no generator is `unknown` everywhere (issue 32): in what featurize stores,
in `store info` (which says the rule), `eval`'s table, `store export`, `neighbors --generator`, and in
stores written before the rule (they hold '' or '-'). `neighbors --generator X` with an X the store does
not hold lists the generators it does hold."""

import csv
import dataclasses
import functools
import json
import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from item.cli import app
from item.manifests import GENERATOR_RULE, UNKNOWN_GENERATOR, generator_name
from item.misalignment import compute, feature_size
from item.store import StoreReader
from item.store.synthetic import synthetic_compat, synthetic_records
from item.store.writer import StoreWriter
from tests._schemas import assert_valid

D = 16


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(*args):
    r = cli(*args)
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    return r


def _old_store(root, blank=("", "-")):
    """A store as earlier versions wrote it: rows of `gen_a`, and rows stored with no generator name
    ('' as featurize wrote it, '-' as some tables showed it), every label and split represented."""
    recs = []
    for i, rec in enumerate(synthetic_records(120, D, generators=("gen_a", "none"), seed=3, signal=0.5,
                                              misalignment_fn=functools.partial(compute, "hierarchical"),
                                              misalignment_dim=feature_size("hierarchical", D))):
        if rec.generator == "none":
            rec = dataclasses.replace(rec, generator=blank[i % len(blank)])
        recs.append(rec)
    compat = synthetic_compat(D, feature_size("hierarchical", D))
    with StoreWriter(root, compat=compat, models={"clip": {"model": "synthetic", "random_weights": True}},
                     recipe="hierarchical") as w:
        for rec in recs:
            w.add(rec)
    return root


def test_generator_name_rule():
    assert generator_name("") == generator_name("-") == generator_name(None) == generator_name("  ") == "unknown"
    assert generator_name("progan") == "progan" and UNKNOWN_GENERATOR == "unknown"


def test_old_store_reads_unknown_everywhere(tmp_path):
    store = _old_store(tmp_path / "s")
    with StoreReader(store) as r:
        gens = set(r.metadata(["generator"])["generator"])
        assert gens == {"gen_a", "unknown"}
        assert r.select(generator="unknown").size == r.select(generator="").size == r.select(generator="-").size > 0

    info = json.loads(ok("store", "info", store, "--json").stdout)
    assert_valid(info, "cli_store_info")
    assert {g["generator"] for g in info["groups"]} == {"gen_a", "unknown"}
    assert info["generator_rule"] == GENERATOR_RULE and info["n_unknown_generator"] == 60
    text = ok("store", "info", store).stdout
    assert "generators       --generator when given" in text and "60 ok rows have none and read as 'unknown'" in text

    ok("train", store, "--out", tmp_path / "h", "--kind", "logistic")
    table = json.loads(ok("eval", store, "--head", tmp_path / "h", "--json").stdout)
    assert [r["generator"] for r in table["rows"]] == ["gen_a", "unknown", "mean"]
    assert "unknown" in ok("eval", store, "--head", tmp_path / "h").stdout

    ok("store", "export", store, "--out", tmp_path / "m.csv")
    with open(tmp_path / "m.csv", newline="") as f:
        assert {row["generator"] for row in csv.DictReader(f)} == {"gen_a", "unknown"}

    prof = json.loads(ok("neighbors", store, "--generator", "unknown", "-k", "3", "--json").stdout)
    assert prof["generator"] == "unknown" and prof["n_queries"] == 30
    # '-' (what the old tables showed) names the same rows
    assert json.loads(ok("neighbors", store, "--generator", "-", "-k", "3", "--json").stdout)["n_queries"] == 30


def test_neighbors_unknown_generator_lists_the_stores_generators(tmp_path):
    store = _old_store(tmp_path / "s", blank=("",))
    r = cli("neighbors", store, "--generator", "midjourney")
    assert r.exit_code == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == ["error: no rows of generator 'midjourney'; generators: gen_a, unknown"]


def _png(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


@pytest.mark.parametrize("source", ["folder", "manifest"])
def test_featurize_stores_unknown_for_a_source_without_generators(tmp_path, source):
    data = tmp_path / "data"
    paths = [_png(data / ("0_real" if i % 2 else "1_fake") / f"{i}.png", i) for i in range(4)]
    src = data
    if source == "manifest":  # a manifest without a generator column
        src = tmp_path / "m.csv"
        src.write_text("path,label\n" + "".join(f"{p},{'real' if i % 2 else 'fake'}\n" for i, p in enumerate(paths)))
    r = ok("featurize", src, "--store", tmp_path / "s", "--models", "tiny-random", "--workers", "0")
    assert re.search(r"^unknown\s+fake\s+2$", r.stderr, re.M) and re.search(r"^unknown\s+real\s+2$", r.stderr, re.M)
    with StoreReader(tmp_path / "s") as rd:
        assert set(rd.metadata(["generator"])["generator"]) == {"unknown"}
    info = json.loads(ok("store", "info", tmp_path / "s", "--json").stdout)
    assert {g["generator"] for g in info["groups"]} == {"unknown"} and info["n_unknown_generator"] == 4
    # featurizing it again names no generator either: nothing to annotate, nothing warned
    again = ok("featurize", src, "--store", tmp_path / "s", "--models", "tiny-random", "--workers", "0")
    assert "given other" not in again.stderr
