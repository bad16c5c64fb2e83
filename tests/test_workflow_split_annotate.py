"""Issue 15: the researcher's workflow through the real CLI: featurize a manifest without splits,
`item store split`, train, eval, predict on the manifest; `item store annotate` without a model;
the metadata overlay read by every reader; heads that remember their captions and their rows."""

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from item.cli import app
from item.store import StoreReader, validate

SHARED = Path(__file__).resolve().parents[2] / "shared" / "samples"  # ../shared/samples beside the clone
SHIPPED = Path(__file__).resolve().parents[1] / "item" / "samples"
FAST = ["--hidden", "16", "--max-epochs", "30", "--patience", "5", "--batch-size", "16"]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(*args):
    r = cli(*args)
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    return r


def one_error_line(r, *words, code=1):
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def image(path: Path, seed: int, size=(48, 40)) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def no_models(monkeypatch):
    """Make every model loader fail loudly: whatever still works loads no model."""
    import item.featurize.models.blip as captioner
    import item.featurize.models.clip as encoder
    import item.featurize.models.grounders as grounder
    import item.featurize.models.loading as loading

    def refuse(*a, **k):
        raise AssertionError("a model was loaded")

    for mod, name in ((encoder, "load_clip"), (captioner, "load_captioner"), (grounder, "load_grounder"),
                      (loading, "load_models")):
        monkeypatch.setattr(mod, name, refuse)


def shard_digests(store: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((store / "shards").iterdir())}


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """The Done-when flow: featurize the shared samples manifest (no split column), then split it."""
    base = tmp_path_factory.mktemp("flow")
    if (SHARED / "manifest.csv").is_file():  # the Done-when's manifest: no split column
        manifest = SHARED / "manifest.csv"
    else:  # without ../shared: the shipped samples' manifest, its split column dropped
        rows = list(csv.DictReader(open(SHIPPED / "manifest.csv")))
        manifest = write_csv(base / "manifest.csv", [{**{k: v for k, v in r.items() if k != "split"},
                                                      "path": str(SHIPPED / r["path"])} for r in rows])
    assert "split" not in next(csv.DictReader(open(manifest)))
    store = base / "store"
    r = ok("featurize", manifest, "--store", store, "--models", "tiny-random", "--workers", "0")
    return {"base": base, "store": store, "featurize": r, "manifest": manifest}


# -- the Done-when flow -------------------------------------------------------------------------------
def test_done_when_flow(flow):
    store, base = flow["store"], flow["base"]
    # no split column: train says exactly which command assigns splits
    line = one_error_line(cli("train", store, "--out", base / "nohead"), "no splits", f"item store split {store}",
                          "--train-split all")
    assert not (base / "nohead").exists(), line
    r = ok("store", "split", store, "--val", "0.2", "--test", "0.2", "--seed", "0", "--json")
    split = json.loads(r.stdout)
    assert split["overlay_version"] == 1
    counts = {(c["split"], c["label"]): c["n"] for c in split["counts"]}
    assert {s for s, _ in counts} == {"train", "val", "test"} and all(n > 0 for n in counts.values())
    head = base / "head"
    meta = json.loads(ok("train", store, "--out", head, "--json", *FAST).stdout)
    assert meta["train_split"] == "train" and meta["overlay"]["version"] == 1
    doc = json.loads(ok("eval", store, "--head", head, "--json").stdout)
    assert list(doc)[:2] == ["random_weights", "warnings"] and doc["random_weights"] is True
    assert doc["rows"] and doc["split"] == "test"
    # predict on the manifest: its captions are used, so every row scores exactly as from the store
    manifest = flow["manifest"]
    n_rows = len(list(csv.DictReader(open(manifest))))
    pred = json.loads(ok("predict", manifest, "--head", head, "--json").stdout)
    assert pred["random_weights"] is True
    with StoreReader(store) as reader:
        meta_rows = reader.metadata(["id", "caption", "caption_source"])
        row_of = {i: k for k, i in enumerate(meta_rows["id"])}
    from item.classify.train import score_rows

    rows = [row_of[r["id"]] for r in pred["rows"]]
    scores, _, _ = score_rows(store, head, rows)
    assert len(pred["rows"]) == n_rows and all(r["status"] == "ok" for r in pred["rows"])
    for r, s, row in zip(pred["rows"], scores, rows):
        assert r["caption"] == meta_rows["caption"][row]
        assert (r["caption_source"] == "given") == (meta_rows["caption_source"][row] == "given")
        assert r["p_fake"] == pytest.approx(float(s), abs=1e-6)
    first = next(csv.DictReader(open(manifest)))
    one = write_csv(base / "one.csv", [{"path": str(Path(manifest).parent / first["path"]),
                                        "caption": first.get("caption") or "a photo"}])
    text = ok("predict", one, "--head", head).stdout
    assert text.splitlines()[0].startswith("RANDOM WEIGHTS") and (first.get("caption") or "a photo") in text


def test_train_split_all_and_store_info(flow, tmp_path):
    store = flow["store"]
    if not (store / "overlay.json").is_file():
        ok("store", "split", store)
    meta = json.loads(ok("train", store, "--out", tmp_path / "h", "--train-split", "all", "--json", *FAST).stdout)
    with StoreReader(store) as reader:
        m = reader.metadata(["label", "split", "status"])
        labelled = np.isin(m["label"], ["real", "fake"]) & (m["status"] == "ok")
        n_val = int((labelled & (m["split"] == "val")).sum())
        assert meta["n_val"] == n_val and meta["n_train"] == int(labelled.sum()) - n_val
    d = json.loads(ok("store", "info", store, "--json").stdout)
    assert set(d["models"]) == {"clip", "captioner", "grounder"} and "nouns" in d["extractors"]
    assert "random_weights" not in d["models"] and d["overlay"]["version"] >= 1
    assert {g["split"] for g in d["groups"]} == {"train", "val", "test"}
    text = ok("store", "info", store).stdout
    assert "extractor nouns" in text and "model nouns" not in text and "model random_weights" not in text
    assert "metadata overlay version" in text


def test_split_is_seeded_stratified_and_refuses_to_overwrite(flow, tmp_path):
    store = tmp_path / "s"
    shutil.copytree(flow["store"], store)
    (store / "overlay.json").unlink(missing_ok=True)
    before = shard_digests(store)
    a = json.loads(ok("store", "split", store, "--seed", "3", "--json").stdout)
    first = StoreReader(store).metadata(["id", "split", "label", "generator"])
    one_error_line(cli("store", "split", store), "already have a split", "--overwrite")
    ok("store", "split", store, "--seed", "4", "--overwrite")
    ok("store", "split", store, "--seed", "3", "--overwrite")
    again = StoreReader(store).metadata(["id", "split"])
    assert list(again["split"]) == list(first["split"])  # same seed, same splits
    assert json.loads((store / "overlay.json").read_text())["version"] == 3 and a["overlay_version"] == 1
    # stratified: each label holds its share of val / test (rounding carried across small generators)
    for lab in ("real", "fake"):
        sel = first["label"] == lab
        n = int(sel.sum())
        assert int((first["split"][sel] == "test").sum()) == round(0.2 * n)
        assert int((first["split"][sel] == "val").sum()) == round(0.2 * n)
    big = first["generator"] == "camera"
    assert {"train", "val", "test"} <= set(first["split"][big])
    assert shard_digests(store) == before  # shards are never rewritten
    one_error_line(cli("store", "split", store, "--by", "colour", "--overwrite"), "colour", "generator")
    one_error_line(cli("store", "split", store, "--val", "0.6", "--test", "0.5", "--overwrite"), "--val")


# -- annotate -------------------------------------------------------------------------------------------
@pytest.fixture()
def small(tmp_path):
    """Six made-up images featurized with tiny-random models from a manifest without label or split."""
    paths = [image(tmp_path / "img" / f"{k}.png", k) for k in range(6)]
    manifest = write_csv(tmp_path / "m.csv", [{"path": str(p), "caption": f"a red car number {k}"}
                                               for k, p in enumerate(paths)])
    store = tmp_path / "store"
    r = ok("featurize", manifest, "--store", store, "--models", "tiny-random", "--captioner", "none",
           "--grounder", "none", "--workers", "0")
    return {"store": store, "paths": paths, "manifest": manifest, "featurize": r, "base": tmp_path}


def test_manifest_without_label_warns_once_with_the_count(small):
    err = small["featurize"].stderr
    hits = [ln for ln in err.splitlines() if "have no label" in ln]
    assert len(hits) == 1 and "6 of 6 inputs" in hits[0] and "item store annotate" in hits[0]


def test_annotate_changes_labels_and_splits_without_any_model(small, monkeypatch):
    store, paths, base = small["store"], small["paths"], small["base"]
    before = shard_digests(store)
    moved = shutil.copy(paths[5], base / "elsewhere.png")  # same bytes at a new path: matched by content
    rows = [{"path": str(p), "label": "fake" if k % 2 else "real", "split": "test" if k < 2 else "train",
             "generator": "gen_x" if k % 2 else ""} for k, p in enumerate(paths[:5])]
    rows.append({"path": str(moved), "label": "1", "split": "val", "generator": "gen_y"})
    rows.append({"path": str(base / "never-featurized.png"), "label": "fake", "split": "train", "generator": ""})
    manifest = write_csv(base / "labels.csv", rows)
    no_models(monkeypatch)
    r = ok("store", "annotate", store, manifest, "--json")
    res = json.loads(r.stdout)
    assert res["n_rows"] == 7 and res["n_matched"] == 6 and res["n_changed"] == 6
    assert res["matched_by"] == {"path": 5, "content": 1} and res["overlay_version"] == 1
    assert [d["path"] for d in res["not_in_store"]] == [str(base / "never-featurized.png")]
    text = cli("store", "annotate", store, manifest)
    assert "never-featurized.png" in text.stderr and "not in the store" in text.stderr
    with StoreReader(store) as reader:
        m = reader.metadata(["path", "label", "split", "generator"])
        by_path = {Path(p).name: (lab, s, g) for p, lab, s, g in zip(m["path"], m["label"], m["split"], m["generator"])}
    assert by_path["0.png"] == ("real", "test", "unknown") and by_path["1.png"] == ("fake", "test", "gen_x")
    assert by_path["5.png"] == ("fake", "val", "gen_y")
    assert shard_digests(store) == before
    assert validate(store).ok
    export = base / "meta.csv"
    ok("store", "export", store, "--out", export)
    exported = {Path(r["path"]).name: r for r in csv.DictReader(open(export))}
    assert exported["3.png"]["label"] == "fake" and exported["3.png"]["split"] == "train"
    # the head trained after annotating records the overlay version it saw
    res2 = json.loads(ok("store", "annotate", store, write_csv(base / "l2.csv", [
        {"path": str(paths[4]), "label": "fake", "split": "val"}]), "--json").stdout)
    assert res2["overlay_version"] == 2 and res2["changed_by_field"] == {"label": 1, "split": 1}


def test_annotate_refuses_conflicts_and_validate_checks_the_overlay(small):
    store, paths, base = small["store"], small["paths"], small["base"]
    bad = write_csv(base / "bad.csv", [{"path": str(paths[0]), "label": "fake"}, {"path": str(paths[0]), "label": "real"}])
    one_error_line(cli("store", "annotate", store, bad), "different label")
    one_error_line(cli("store", "annotate", store, write_csv(base / "x.csv", [{"path": str(paths[0]), "label": "maybe"}])),
                   "maybe")
    one_error_line(cli("store", "annotate", store, write_csv(base / "y.csv", [{"path": str(paths[0]), "note": "x"}])),
                   "nothing to annotate")
    assert not (store / "overlay.json").exists()
    (store / "overlay.json").write_text(json.dumps({"format": "item-overlay", "schema_version": 1, "version": 1,
                                                     "rows": {"abc": {"label": "purple"}}, "history": []}))
    rep = validate(store)
    assert not rep.ok and any("overlay.json" in p and "purple" in p for p in rep.problems)
    r = cli("store", "validate", store)
    assert r.exit_code == 1 and "overlay.json" in r.stdout
    one_error_line(cli("store", "info", store), "overlay.json")


def test_featurize_rerun_with_other_metadata_points_to_annotate(small):
    store, paths, base = small["store"], small["paths"], small["base"]
    manifest = write_csv(base / "fixed.csv", [{"path": str(p), "label": "real", "split": "train",
                                               "caption": f"a red car number {k}"} for k, p in enumerate(paths)])
    r = ok("featurize", manifest, "--store", store, "--models", "tiny-random", "--captioner", "none",
           "--grounder", "none", "--workers", "0")
    hits = [ln for ln in r.stderr.splitlines() if "already in the store" in ln and "annotate" in ln]
    assert len(hits) == 1 and "6 inputs" in hits[0] and "label, split" in hits[0], r.stderr
    assert f"item store annotate {store} {manifest}" in hits[0]
    ok("store", "annotate", store, manifest)
    r = ok("featurize", manifest, "--store", store, "--models", "tiny-random", "--captioner", "none",
           "--grounder", "none", "--workers", "0")
    assert "item store annotate" not in r.stderr  # metadata agrees now


def test_overwrite_drops_the_overlay(small):
    store, base = small["store"], small["base"]
    ok("store", "annotate", store, write_csv(base / "l.csv", [{"path": str(small["paths"][0]), "split": "test"}]))
    assert (store / "overlay.json").is_file()
    ok("featurize", small["manifest"], "--store", store, "--models", "tiny-random", "--captioner", "none",
       "--grounder", "none", "--workers", "0", "--overwrite")
    assert not (store / "overlay.json").exists()
    with StoreReader(store) as reader:
        assert set(reader.metadata(["split"])["split"]) == {""}
