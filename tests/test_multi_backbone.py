"""Heads over several backbones (issue 28): `item train A B`, `item eval A B`, `item predict`, `item report`
and the Python API on two stores of the same tiny images under two tiny CLIP configs of different widths
(32-d and 48-d), the second store holding two test images fewer; `item reproduce --backbone`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from item.cli import app
from item.misalignment import feature_size
from item.store import StoreReader
from tests._schemas import assert_valid

FAST = ["--hidden", "16", "--max-epochs", "30", "--patience", "5", "--batch-size", "16"]
RANDOM = "RANDOM WEIGHTS"
CAPTION = "a dog on a red couch"


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(*args):
    r = cli(*args)
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    return r


def one_error_line(r, *words, code=1):
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr, r.exception)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def wide_clip(folder: Path, width: int = 48) -> Path:
    """A tiny CLIP checkpoint of another embedding width than the tiny preset's 32, with its
    open_clip_config.json beside it (marked random): featurize loads it with --pretrained FILE."""
    import open_clip
    from safetensors.torch import save_file

    from item.featurize.models import tiny

    name = f"item-tiny-clip-{width}"
    cfg = {**tiny.TINY_CLIP_CFG, "embed_dim": width}
    if name not in open_clip.list_models():
        (folder / "cfg").mkdir(parents=True, exist_ok=True)
        (folder / "cfg" / f"{name}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(folder / "cfg")
    with tiny.seeded(1):
        model = open_clip.create_model(name, pretrained=None)
    ckpt = folder / "weights" / "open_clip_model.safetensors"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    (ckpt.parent / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": cfg, "preprocess_cfg": dict(model.visual.preprocess_cfg), "item_random_weights": True}))
    return ckpt


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Stores A (tiny CLIP, 32-d, 20 images) and B (a 48-d tiny CLIP, the same images but the last two), a head
    H trained on A B and a head HA on A alone."""
    base = tmp_path_factory.mktemp("multi")
    rng = np.random.default_rng(0)
    rows, k = [], 0
    for gen in ("gen_a", "gen_b"):
        for split, n in (("train", 2), ("val", 2), ("test", 1)):
            for label in ("real", "fake"):
                for _ in range(n):
                    p = base / "img" / f"{k}.png"
                    p.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(rng.integers(0, 255, (40 + k % 7, 48, 3), dtype=np.uint8)).save(p)
                    rows.append({"path": str(p), "label": label, "generator": gen, "split": split, "caption": CAPTION})
                    k += 1
    ckpt = wide_clip(base / "clip48")
    a, b = base / "A", base / "B"
    ok("featurize", write_csv(base / "a.csv", rows), "--store", a, "--models", "tiny-random", "--workers", "0")
    ok("featurize", write_csv(base / "b.csv", rows[:-2]), "--store", b, "--models", "tiny-random",
       "--clip", "item-tiny-clip", "--pretrained", ckpt, "--workers", "0")
    train = ok("train", a, b, "--out", base / "H", *FAST)
    ok("train", a, "--out", base / "HA", *FAST)
    return {"base": base, "A": a, "B": b, "H": base / "H", "HA": base / "HA", "ckpt": ckpt, "rows": rows,
            "train": train}


def _eval_json(*args):
    return json.loads(ok("eval", *args, "--json").stdout)


# -- train -------------------------------------------------------------------------------------------
def test_train_joins_by_image_id_prints_the_counts_and_names_both_backbones(two):
    lines = two["train"].stdout.splitlines()
    assert lines[0].startswith(RANDOM)  # the banner stays first
    assert lines[1] == (f"joined 18 images of 2 stores by image id; dropped (not in every store): {two['A']} 2 of 20 "
                        f"ok rows, {two['B']} 0 of 18 ok rows")
    info = json.loads((two["H"] / "head.json").read_text())
    assert info["feature_size"] == feature_size("hierarchical", 32) + feature_size("hierarchical", 48)
    assert info["join"]["n_joined"] == 18 and [s["dropped"] for s in info["join"]["stores"]] == [2, 0]
    (pa, pb) = info["stores"]
    for part, store, dim in ((pa, two["A"], 32), (pb, two["B"], 48)):
        with StoreReader(store) as r:
            assert part["store_fingerprint"] == r.fingerprint
        assert part["store"] == str(store.resolve())
        assert part["compat"]["embed_dim"] == dim and part["backbone"]["embed_dim"] == dim
        assert part["backbone"]["clip_model"] == "item-tiny-clip"
    assert pa["backbone"]["pretrained"] == "" and pa["backbone"]["label"] == "item-tiny-clip/random"
    assert pb["backbone"]["pretrained"].endswith("open_clip_model.safetensors")
    assert pa["feature_columns"] == [0, 69] and pb["feature_columns"] == [69, 170]
    assert "compat" not in info and info["random_weights"] is True
    assert any("features 69..169" in ln and "48-d" in ln for ln in lines)


def test_a_registered_backbone_is_recorded_by_its_name():
    from item.classify.joined import backbone_record

    rec = backbone_record({"clip_model": "PE-Core-L-14-336", "clip_pretrained": "meta", "embed_dim": 1024})
    assert rec["name"] == rec["label"] == "pe-core-l14"
    assert backbone_record({"clip_model": "ViT-B-16", "clip_pretrained": "laion2b_s34b_b88k"})["name"] is None


def test_one_store_trains_exactly_as_before(two):
    r = ok("train", two["A"], "--out", two["base"] / "HA2", *FAST)
    assert "joined" not in r.stdout
    info = json.loads((two["HA"] / "head.json").read_text())
    assert "stores" not in info and "join" not in info
    for key in ("compat", "models", "store_fingerprint", "store", "overlay"):
        assert key in info
    again = json.loads((two["base"] / "HA2" / "head.json").read_text())
    assert again["weights_sha256"] == info["weights_sha256"] and again["threshold"] == info["threshold"]


def test_stores_that_disagree_on_a_label_are_refused_naming_the_image(two, tmp_path):
    copy = tmp_path / "B"
    shutil.copytree(two["B"], copy)
    first = two["rows"][0]
    ok("store", "annotate", copy, write_csv(tmp_path / "l.csv", [{"path": first["path"], "label": "fake"}]))
    with StoreReader(two["A"]) as r:
        want_id = str(r.metadata(["id"], rows=[0])["id"][0])
    line = one_error_line(cli("train", two["A"], copy, "--out", tmp_path / "h", *FAST), want_id, "label", "'real'",
                          "'fake'")
    assert str(copy) in line
    one_error_line(cli("train", two["A"], two["A"], "--out", tmp_path / "h"), "given twice")


# -- eval ----------------------------------------------------------------------------------------------
def test_eval_takes_the_same_stores_in_any_order(two):
    doc = assert_valid(_eval_json(two["A"], two["B"], "--head", two["H"]), "cli_eval")
    assert doc["join"]["n_joined"] == 18
    assert doc["backbones"]["H"][0] == "item-tiny-clip/random" and len(doc["backbones"]["H"]) == 2
    swapped = _eval_json(two["B"], two["A"], "--head", two["H"])
    assert swapped["rows"] == doc["rows"] and swapped["thresholds"] == doc["thresholds"]
    text = ok("eval", two["A"], two["B"], "--head", two["H"]).stdout.splitlines()
    assert text[0].startswith(RANDOM) and text[1].startswith("joined 18 images of 2 stores")


def test_eval_scores_are_the_heads_own_on_the_joined_features(two):
    from item.classify.heads import load_head
    from item.classify.joined import open_join
    from item.classify.train import evaluate

    res = evaluate([two["A"], two["B"]], [str(two["H"])], "test")["H"]
    head, info = load_head(two["H"])
    with open_join([two["A"], two["B"]]) as join:
        X = join.features("hierarchical", res["rows"])
        ids_a = join.first.metadata(["id"], rows=res["rows"])["id"]
        ids_b = join.readers[1].metadata(["id"], rows=join.to_rows(1, res["rows"]))["id"]
    assert list(ids_a) == list(ids_b)  # the same images, matched by content id
    np.testing.assert_allclose(res["scores"], head.predict_proba(X)[:, 1])


def test_a_missing_extra_or_wrong_store_is_one_line_naming_it(two, tmp_path):
    from item.store.synthetic import write_synthetic_store

    one_error_line(cli("eval", two["A"], "--head", two["H"]), "needs a store of backbone",
                   "open_clip_model.safetensors", "48-d", str(two["B"].resolve()))
    one_error_line(cli("eval", two["A"], two["B"], "--head", two["HA"]), f"store {two['B']}",
                   "read by none of the heads", "HA: item-tiny-clip/random")
    wrong = Path(write_synthetic_store(tmp_path / "wrong", 20, 48))
    one_error_line(cli("eval", two["A"], wrong, "--head", two["H"]), "needs a store of backbone", "48-d",
                   f"{wrong} is synthetic/random")
    one_error_line(cli("predict", two["rows"][0]["path"], "--head", two["H"]), "--model-path")
    one_error_line(cli("report", two["A"], "--head", two["H"], "--out", tmp_path / "r.html"), "needs a store")


def test_one_store_commands_refuse_a_head_over_several_in_one_line(two, tmp_path):
    from item.classify.train import check_head_fits
    from item.errors import IncompatibleError

    info = json.loads((two["H"] / "head.json").read_text())
    with StoreReader(two["A"]) as r, pytest.raises(IncompatibleError, match="trained on 2 stores, one per backbone"):
        check_head_fits(info, r.compat, "store A")  # what `item serve` checks its heads with
    one_error_line(cli("robustness", two["rows"][0]["path"], "--head", two["H"], "--work", tmp_path / "w"),
                   "reads 2 stores", "give a head trained on one store")


def test_eval_each_shows_every_backbone_alone_beside_the_fused_head(two):
    doc = _eval_json(two["A"], two["B"], "--head", two["H"], "--head", two["HA"], "--each")
    label_b = doc["backbones"]["H"][1]
    assert doc["heads"] == ["H", "H[item-tiny-clip/random]", f"H[{label_b}]", "HA"]
    # The 32-d backbone alone, trained on the fused head's joined rows: the join dropped only test images of A, so it
    # is the head trained on A alone (same rows, recipe, kind, seed), threshold fixed on the same validation rows.
    by = {h: [r for r in doc["rows"] if r["head"] == h] for h in doc["heads"]}
    assert doc["thresholds"]["H[item-tiny-clip/random]"] == doc["thresholds"]["HA"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "head"} for r in rows]  # noqa: E731
    assert strip(by["H[item-tiny-clip/random]"]) == strip(by["HA"])
    assert doc["backbones"][f"H[{label_b}]"] == [label_b]
    text = ok("eval", two["A"], two["B"], "--head", two["H"], "--each").stdout
    assert text.startswith(RANDOM) and "split test: 3 heads side by side" in text
    assert f"H[{label_b}] (threshold" in text


def test_eval_each_needs_the_stores_the_head_was_trained_on(two, tmp_path):
    moved = tmp_path / "H"
    shutil.copytree(two["H"], moved)
    info = json.loads((moved / "head.json").read_text())
    info["stores"][1]["store"] = str(tmp_path / "gone")
    (moved / "head.json").write_text(json.dumps(info))
    ok("eval", two["A"], two["B"], "--head", moved)  # the fused head needs only the stores given
    one_error_line(cli("eval", two["A"], two["B"], "--head", moved, "--each"), "--each", str(tmp_path / "gone"),
                   "is not there")


def test_eval_each_on_a_one_store_head_says_there_is_nothing_to_split(two):
    r = ok("eval", two["A"], "--head", two["HA"], "--each")
    assert "no head reads several stores" in r.stderr


# -- predict -------------------------------------------------------------------------------------------
def test_predict_featurizes_with_each_backbone_and_gives_evals_scores(two, tmp_path):
    from item.classify.train import evaluate

    res = evaluate([two["A"], two["B"]], [str(two["H"])], "test")["H"]
    with StoreReader(two["A"]) as r:
        paths = [str(p) for p in r.metadata(["path"], rows=res["rows"])["path"]][:3]
    manifest = write_csv(tmp_path / "p.csv", [{"path": p, "caption": CAPTION} for p in paths])
    r = ok("predict", manifest, "--head", two["H"], "--model-path", two["ckpt"], "--json")
    doc = assert_valid(json.loads(r.stdout), "cli_predict")
    assert doc["random_weights"] is True
    np.testing.assert_allclose([row["p_fake"] for row in doc["rows"]], res["scores"][:3], rtol=1e-5, atol=1e-6)
    assert "backbone 2 of 2" in r.stderr
    text = ok("predict", manifest, "--head", two["H"], "--model-path", two["ckpt"])
    assert text.stdout.startswith(RANDOM)


def test_a_second_backbone_from_objects_from_trains_evaluates_and_predicts(two, tmp_path):
    """The intended path to a second backbone: `featurize --objects-from A` reuses A's captions and boxes."""
    from item.classify.train import evaluate

    b = tmp_path / "B"
    ok("featurize", write_csv(tmp_path / "b.csv", two["rows"]), "--store", b, "--objects-from", two["A"],
       "--clip", "item-tiny-clip", "--pretrained", two["ckpt"], "--workers", "0")
    r = ok("train", two["A"], b, "--out", tmp_path / "H", *FAST)
    assert "joined 20 images of 2 stores" in r.stdout
    info = json.loads((tmp_path / "H" / "head.json").read_text())
    assert info["stores"][1]["models"]["objects_from"]["store"] == str(two["A"].resolve())
    res = evaluate([two["A"], b], [str(tmp_path / "H")], "test")["H"]
    with StoreReader(two["A"]) as reader:
        paths = [str(p) for p in reader.metadata(["path"], rows=res["rows"][:2])["path"]]
    manifest = write_csv(tmp_path / "p.csv", [{"path": p, "caption": CAPTION} for p in paths])
    doc = json.loads(ok("predict", manifest, "--head", tmp_path / "H", "--model-path", two["ckpt"], "--json").stdout)
    np.testing.assert_allclose([row["p_fake"] for row in doc["rows"]], res["scores"][:2], rtol=1e-5, atol=1e-6)


# -- report --------------------------------------------------------------------------------------------
def test_report_takes_the_stores_and_shows_the_backbones_side_by_side(two, tmp_path):
    out = tmp_path / "r.html"
    r = ok("report", two["A"], two["B"], "--head", two["H"], "--each", "--out", out)
    assert r.stdout.startswith(RANDOM) and "joined 18 images" in r.stderr
    page = out.read_text()
    assert page.index('<p class="banner">') < page.index("<h1>")
    assert "Heads side by side" in page and "H[item-tiny-clip/random]" in page
    assert "store 2 (item-tiny-clip/" in page and "store 1 (item-tiny-clip/random) fingerprint" in page


# -- the Python API ----------------------------------------------------------------------------------
def test_api_trains_and_evaluates_over_several_stores(two):
    import item
    from item.errors import IncompatibleError

    a, b = item.open_store(two["A"]), two["B"]
    with pytest.warns(Warning):
        head = item.train_head([a, b], hidden=(16,), max_epochs=30, patience=5, batch_size=16)
    assert [p["compat"]["embed_dim"] for p in head.info["stores"]] == [32, 48]
    assert head.info["join"]["n_joined"] == 18
    with pytest.warns(Warning):
        df = item.evaluate([a, b], head)
    assert list(df["generator"])[-1] == "mean" and df.attrs["join"]["n_joined"] == 18
    with pytest.warns(Warning):
        each = item.evaluate([b, a], head, each=True)
    assert each.columns.nlevels == 2 and "head[item-tiny-clip/random]" in each.columns.get_level_values(0)
    assert isinstance(each.attrs["threshold"], dict) and len(each.attrs["threshold"]) == 3
    with pytest.raises(IncompatibleError, match="needs a store of backbone"):
        item.evaluate(a, head)
    saved = item.load_head(head.save(two["base"] / "api-head"))
    assert len(saved.info["stores"]) == 2 and saved.backbones == head.backbones
    assert saved.backbones[0] == "item-tiny-clip/random" and "2 backbones" in repr(saved)


def test_a_joined_head_streams_when_its_rows_exceed_the_memory_budget(two, tmp_path):
    out = tmp_path / "h"
    ok("train", two["A"], two["B"], "--out", out, *FAST, "--max-memory", "20000")
    info = json.loads((out / "head.json").read_text())
    assert info["streamed"] is True and info["feature_size"] == 170
    doc = _eval_json(two["A"], two["B"], "--head", out)
    assert doc["rows"][-1]["generator"] == "mean"


# -- reproduce --backbone ----------------------------------------------------------------------------
def test_reproduce_refuses_an_unknown_backbone_in_one_line(tmp_path):
    one_error_line(cli("reproduce", "wildrf", "--root", tmp_path, "--work", tmp_path / "w", "--models", "tiny-random",
                       "--backbone", "nope"), "unknown backbone 'nope'", "pe-core-l14")


def test_reproduce_carries_each_backbone_in_one_table(tmp_path, monkeypatch):
    from item.featurize.models import backbones
    from tests._protocol_trees import wildrf_tree

    wide_clip(tmp_path / "cfg48")  # registers the 48-d tiny config with open_clip in this process
    monkeypatch.setitem(backbones.BACKBONES, "tiny-a", backbones.Backbone(
        "tiny-a", "item-tiny-clip", "", "test", "none", "the tiny preset's CLIP"))
    monkeypatch.setitem(backbones.BACKBONES, "tiny-b", backbones.Backbone(
        "tiny-b", "item-tiny-clip-48", "", "test", "none", "a 48-d tiny CLIP"))
    root = wildrf_tree(tmp_path / "data")
    work = tmp_path / "work"
    r = ok("reproduce", "wildrf", "--root", root, "--work", work, "--models", "tiny-random", "--heads", "visual",
           "--kind", "logistic", "--backbone", "tiny-a", "--backbone", "tiny-b", "--json")
    doc = assert_valid(json.loads(r.stdout), "cli_reproduce")
    assert list(doc["heads"]) == ["ITEM visual [tiny-a]", "ITEM visual [tiny-b]"]
    assert set(doc["backbones"]) == {"tiny-a", "tiny-b"}
    for name, dim in (("tiny-a", 32), ("tiny-b", 48)):
        with StoreReader(work / "backbones" / name / "stores" / "test") as reader:
            assert reader.embed_dim == dim
    assert all(set(row["item"]) == set(doc["heads"]) for row in doc["rows"])
    assert "Heads side by side" in (work / "report.html").read_text()
