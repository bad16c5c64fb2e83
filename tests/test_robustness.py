"""Issue 13: train-time augmentation as rows of their own (never evaluated), and `item robustness`:
one head on perturbed copies of a test set, each in its own store, plotted in the report."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from item.cli import app
from item.store import StoreReader
from tests._protocol_trees import images
from tests._schemas import assert_valid

RANDOM = "RANDOM WEIGHTS"


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(*args):
    r = cli(*args)
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    return r


@pytest.fixture(scope="module")
def augmented(tmp_path_factory):
    base = tmp_path_factory.mktemp("aug")
    data = base / "data"
    for split in ("train", "val", "test"):
        for gen in ("gen_a", "gen_b"):
            for lab in ("0_real", "1_fake"):
                images(data / split / gen / lab, 2, size=(48, 40))
    store = base / "store"
    first = ok("featurize", data, "--store", store, "--models", "tiny-random", "--workers", "0", "--augment", "jpeg:75")
    again = ok("featurize", data, "--store", store, "--models", "tiny-random", "--workers", "0", "--augment", "jpeg:75")
    head = base / "head"
    ok("train", store, "--out", head, "--hidden", "16", "--max-epochs", "20")
    return data, store, head, first, again


@pytest.mark.slow  # the module's augmented store: featurized clean and augmented
def test_augmented_copies_are_rows_of_their_own(augmented):
    data, store, _, first, again = augmented
    assert "augmentation jpeg:75: 8 training copies written" in first.stderr
    assert "augmentation jpeg:75: 0 training copies written" in again.stderr  # resumed: nothing twice
    with StoreReader(store) as r:
        assert r.counts["n_images"] == 24 + 8
        meta = r.metadata(["id", "perturbation", "split", "path"])
        copies = np.flatnonzero(meta["perturbation"] == "jpeg:75")
        assert copies.size == 8 and set(meta["split"][copies]) == {"train"}
        assert r.compat["perturbation"] == ""  # the store's own setting is unchanged
        ids = meta["id"].astype(str)
        for c in copies:
            base_id, spec = ids[c].split("+")
            assert spec == "jpeg:75"
            orig = int(np.flatnonzero(ids == base_id)[0])
            assert meta["path"][orig] == meta["path"][c] and meta["perturbation"][orig] == ""
            emb = r.read("image_emb", np.array([orig, c]))
            assert not np.allclose(emb[0], emb[1])  # encoded from the perturbed pixels


@pytest.mark.slow  # the module's augmented store: featurized clean and augmented
def test_copies_train_but_never_validate_or_test(augmented, tmp_path):
    _, store, head, _, _ = augmented
    info = json.loads((head / "head.json").read_text())
    assert info["n_train"] == 16 and info["n_val"] == 8  # 8 train images + 8 copies; val: originals only
    # A hold-out drawn from the training rows keeps each copy with its original.
    h2 = tmp_path / "h2"
    ok("train", store, "--out", h2, "--val-split", "", "--val-fraction", "0.25", "--hidden", "16", "--max-epochs", "10")
    info2 = json.loads((h2 / "head.json").read_text())
    assert info2["n_val"] == 2 and info2["n_train"] == 2 * (8 - 2)
    doc = json.loads(ok("eval", store, "--head", head, "--json").stdout)
    mean = next(r for r in doc["rows"] if r["generator"] == "mean")
    assert mean["n_real"] + mean["n_fake"] == 8  # the test split, no copy
    doc = json.loads(ok("eval", store, "--head", head, "--split", "all", "--json").stdout)
    mean = next(r for r in doc["rows"] if r["generator"] == "mean")
    assert mean["n_real"] + mean["n_fake"] == 24  # every original row, still no copy


def test_augment_needs_training_rows(tmp_path):
    images(tmp_path / "flat", 2)
    r = cli("featurize", tmp_path / "flat", "--store", tmp_path / "s", "--models", "tiny-random", "--workers", "0",
            "--label", "real", "--augment", "blur:1")
    assert r.exit_code == 1 and "training rows only" in r.stderr


@pytest.mark.slow  # the module's augmented store: featurized clean and augmented
def test_robustness_sweep_writes_stores_tables_and_plots(augmented, tmp_path):
    data, _, head, _, _ = augmented
    work = tmp_path / "rob"
    r = ok("robustness", data / "test", "--head", head, "--work", work, "--perturb", "jpeg:50,blur:1")
    assert r.stdout.splitlines()[0].startswith(RANDOM)
    doc = assert_valid(json.loads((work / "robustness.json").read_text()), "cli_robustness")
    assert doc["perturbations"] == ["", "jpeg:50", "blur:1.0"]
    assert list(doc["results"]) == ["none", "jpeg:50", "blur:1.0"]
    for spec, by in doc["results"].items():
        assert set(by) == {"gen_a", "gen_b", "mean"}
        assert by["gen_a"]["n_real"] == 2 and by["gen_a"]["n_fake"] == 2
        assert 0.0 <= by["mean"]["acc"] <= 1.0
    for folder, spec in (("clean", ""), ("jpeg-50", "jpeg:50"), ("blur-1.0", "blur:1.0")):
        with StoreReader(work / "stores" / folder) as s:
            assert s.compat["perturbation"] == spec and s.counts["n_images"] == 8
            assert set(s.metadata(["perturbation"])["perturbation"]) == {spec}
    html = (work / "report.html").read_text()
    assert html.split("<body>", 1)[1].lstrip().startswith('<p class="banner">RANDOM WEIGHTS')
    assert "Accuracy and AP against each perturbation" in html
    assert 'alt="accuracy and AP of head against each perturbation, per generator"' in html
    md = (work / "robustness.md").read_text()
    assert md.startswith(RANDOM) and "| jpeg:50 |" in md and "| blur:1.0 |" in md
    bad = cli("robustness", data / "test", "--head", head, "--work", work, "--perturb", "sharpen:2")
    assert bad.exit_code == 2 and "unknown perturbation" in bad.stderr


def test_robustness_on_a_protocol_set_reports_its_row_with_its_pairing(augmented, tmp_path):
    """Issue 22: progan's test set spans category folders (cat, horse); it is one row, as in the benchmark."""
    from tests._protocol_trees import ufd_tree

    _, _, head, _, _ = augmented
    root = ufd_tree(tmp_path / "ufd")
    work = tmp_path / "rob"
    r = ok("robustness", root, "--protocol", "ufd", "--set", "progan", "--head", head, "--work", work,
           "--perturb", "jpeg:50", "--json")
    doc = json.loads(r.stdout)
    for spec, by in doc["results"].items():
        assert set(by) == {"progan", "mean"}, by
        assert by["progan"]["n_real"] == 4 and by["progan"]["n_fake"] == 4  # 2 categories x 2 images
    assert "UniversalFakeDetect test set progan" in doc["source"]
    # A diffusion set: its fakes against the shared LAION reals, named as the protocol pairs them.
    doc = json.loads(ok("robustness", root, "--protocol", "ufd", "--set", "ldm_200", "--head", head, "--work",
                        tmp_path / "rob2", "--perturb", "jpeg:50", "--json").stdout)
    row = doc["results"]["none"]["ldm_200"]
    assert row["reals"] == "laion" and row["n_real"] == 2 and row["n_fake"] == 2
    assert doc["config"]["reals"] == {"ldm_200": "laion"}
    bad = cli("robustness", root, "--protocol", "ufd", "--set", "nope", "--head", head, "--work", tmp_path / "x")
    assert bad.exit_code == 1 and "not a test set of ufd" in bad.stderr and "ldm_200" in bad.stderr
    bad = cli("robustness", root, "--protocol", "ufd", "--head", head, "--work", tmp_path / "x")
    assert bad.exit_code == 1 and "--protocol and --set go together" in bad.stderr
