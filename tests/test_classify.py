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
FAST_MLP = ["--hidden", "32", "--batch-size", "64", "--lr", "0.01", "--max-epochs", "100"]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(*args):
    r = cli(*args)
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    return r


def one_error_line(r, *words, code=1):
    assert r.exit_code == code, (r.stdout, r.stderr)
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
    ok("train", signal_store, "--out", out, "--kind", "logistic")
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
            got = store_features(reader, recipe, rows, recompute=True)
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
    ok("train", store, "--out", head, "--kind", "logistic")
    return {"store": store, "head": head, "rows": rows, "base": base}


def test_featurize_misalignment_column_matches_recipe(feat):
    with StoreReader(feat["store"]) as reader:
        rows = reader.select()
        assert rows.size == 16 and reader.compat["recipe"] == "hierarchical"
        stored = reader.read("misalignment", rows)
        recomputed = store_features(reader, "hierarchical", rows, recompute=True)
    # Same recipe, same layout; the only gap is float16 rounding of the stored embeddings (see below).
    np.testing.assert_allclose(stored, recomputed, rtol=0, atol=2e-3)


def test_featurize_misalignment_column_is_exact(feat):
    with StoreReader(feat["store"]) as reader:
        rows = reader.select()
        np.testing.assert_allclose(reader.read("misalignment", rows),
                                   store_features(reader, "hierarchical", rows, recompute=True), rtol=0, atol=1e-6)


# -- heads learn a planted signal, not noise -------------------------------------------------------
@pytest.mark.parametrize("kind", ["mlp", "logistic"])
def test_heads_learn_signal_and_not_noise(kind, signal_store, noise_store, tmp_path):
    extra = FAST_MLP if kind == "mlp" else []
    for store, good in ((signal_store, True), (noise_store, False)):
        head = tmp_path / f"{kind}-{good}"
        ok("train", store, "--out", head, "--head", kind, *extra)
        doc = json.loads(ok("eval", store, "--head", head, "--json").stdout)
        assert doc["split"] == "test" and doc["random_weights"] is True and doc["warnings"] == []
        rows = {r["generator"]: r for r in doc["rows"]}
        assert set(rows) == {"gen_a", "gen_b", "mean"}
        for g, r in rows.items():
            assert r["reals"] == "own" and r["n_real"] > 20 and r["n_fake"] > 20
            if good:
                assert r["auroc"] > 0.95, (g, r)
            else:
                assert r["auroc"] < 0.7, (g, r)


def _own_and_pooled_store(root):
    """gen_a's reals carry its name (UniversalFakeDetect layout); every other real is unpaired ('')."""
    recs = []
    for rec in hier_records(N, D, generators=("gen_a", "gen_b", "gen_c"), seed=5, signal=0.4):
        if rec.label == "real" and rec.generator != "gen_a":
            rec = dataclasses.replace(rec, generator="")
        recs.append(rec)
    return write_records(root, recs)


def test_eval_equals_sklearn_per_generator_own_and_pooled(tmp_path):
    store = _own_and_pooled_store(tmp_path / "s")
    head = tmp_path / "h"
    ok("train", store, "--out", head, "--kind", "logistic")
    model, info = load_head(head)
    threshold = info["threshold"]
    for split in ("test", "all"):
        doc = json.loads(ok("eval", store, "--head", head, "--split", split, "--json").stdout)
        assert doc["thresholds"] == {"h": threshold}
        with StoreReader(store) as reader:
            meta = reader.metadata(["label", "generator", "split"])
            rows = np.flatnonzero(np.isin(meta["label"].astype(str), ["real", "fake"])
                                  & ((meta["split"] == split) if split != "all" else True))
            p = model.predict_proba(store_features(reader, info["recipe"], rows))[:, 1]
        y = (meta["label"][rows] == "fake").astype(int)
        g = meta["generator"][rows].astype(str)
        got = {r["generator"]: r for r in doc["rows"]}
        assert list(got) == ["gen_a", "gen_b", "gen_c", "mean"]
        for gen in ("gen_a", "gen_b", "gen_c"):
            reals = (y == 0) & (g == gen) if gen == "gen_a" else (y == 0)
            assert got[gen]["reals"] == ("own" if gen == "gen_a" else "pooled")
            m = reals | ((y == 1) & (g == gen))
            assert got[gen]["n_real"] == int(reals.sum()) and got[gen]["n_fake"] == int(((y == 1) & (g == gen)).sum())
            assert got[gen]["auroc"] == pytest.approx(roc_auc_score(y[m], p[m]), abs=1e-12)
            assert got[gen]["ap"] == pytest.approx(average_precision_score(y[m], p[m]), abs=1e-12)
            pred = p[m] >= threshold
            assert got[gen]["acc"] == pytest.approx(np.mean(pred == (y[m] == 1)), abs=1e-12)
            assert got[gen]["real_acc"] == pytest.approx(np.mean(~pred[y[m] == 0]), abs=1e-12)
            assert got[gen]["fake_acc"] == pytest.approx(np.mean(pred[y[m] == 1]), abs=1e-12)
        assert got["mean"]["reals"] == "mixed"
        assert got["mean"]["auroc"] == pytest.approx(np.mean([got[x]["auroc"] for x in ("gen_a", "gen_b", "gen_c")]))
        # --split all holds the rows the head was fitted and thresholded on: said on stderr and in the JSON
        if split == "all":
            assert len(doc["warnings"]) == 1 and "optimistic" in doc["warnings"][0]
        else:
            assert doc["warnings"] == []


def test_test_labels_choose_nothing(tmp_path):
    """Two stores that differ only in the labels of their test rows give identical heads."""
    recs = list(hier_records(300, D, seed=7, signal=0.5))
    test_idx = [i for i, r in enumerate(recs) if r.split == "test"]
    labels = np.array([recs[i].label for i in test_idx])
    shuffled = list(recs)
    for i, lab in zip(test_idx, np.random.default_rng(0).permutation(labels[::-1])):
        shuffled[i] = dataclasses.replace(recs[i], label=str(lab))
    assert any(shuffled[i].label != recs[i].label for i in test_idx)
    a, b = write_records(tmp_path / "a", recs), write_records(tmp_path / "b", shuffled)
    for kind, extra in (("mlp", FAST_MLP), ("logistic", [])):
        ok("train", a, "--out", tmp_path / f"ha-{kind}", "--head", kind, *extra)
        ok("train", b, "--out", tmp_path / f"hb-{kind}", "--head", kind, *extra)
        ja = json.loads((tmp_path / f"ha-{kind}" / "head.json").read_text())
        jb = json.loads((tmp_path / f"hb-{kind}" / "head.json").read_text())
        assert ja["threshold"] == jb["threshold"] and ja["validation"] == jb["validation"]
        assert (tmp_path / f"ha-{kind}" / "head.safetensors").read_bytes() == \
            (tmp_path / f"hb-{kind}" / "head.safetensors").read_bytes()


def test_head_round_trip_train_generators_and_val_fraction(signal_store, logistic_head, tmp_path):
    from item.classify.metrics import binary_metrics

    model, info = load_head(logistic_head)
    assert info["threshold_from"] == "split 'val'" and info["store_fingerprint"]
    with StoreReader(signal_store) as reader:
        meta = reader.metadata(["label", "generator", "split"])
        val = reader.select(split="val")
        p = model.predict_proba(store_features(reader, "hierarchical", val))[:, 1]
        # the reloaded head reproduces the validation numbers computed in memory at training time
        assert binary_metrics(p, (meta["label"][val] == "fake").astype(int), info["threshold"]) == \
            pytest.approx(info["validation"])
        assert info["n_val"] == val.size and info["n_train"] == reader.select(split="train").size

        # --train-generators: gen_a's fakes and gen_a's own (paired) reals train the head; gen_b contributes
        # nothing, neither its fakes nor its reals; validation likewise
        out = tmp_path / "only-a"
        ok("train", signal_store, "--out", out, "--kind", "logistic", "--train-generators", "gen_a")
        ia = load_head(out)[1]
        train = reader.select(split="train")
        want = (meta["generator"][train] == "gen_a").sum()
        assert ia["n_train"] == want < train.size and ia["train_generators"] == ["gen_a"]
        assert ia["n_val"] == (meta["generator"][val] == "gen_a").sum()
    one_error_line(cli("train", signal_store, "--out", tmp_path / "x", "--train-generators", "gen_z"), "gen_z", "gen_a")

    # --train-split '' trains on every labelled row, yet never on the validation rows
    out = tmp_path / "every"
    ok("train", signal_store, "--out", out, "--kind", "logistic", "--train-split", "")
    ie = load_head(out)[1]
    with StoreReader(signal_store) as reader:
        assert ie["n_val"] == val.size and ie["n_train"] == reader.select(label=["real", "fake"]).size - val.size
    assert ie["train_config"]["train_split"] == "" and ie["train_config"]["seed"] == 0
    r = ok("eval", signal_store, "--head", out)
    assert "optimistic" in r.stderr

    # no validation split: --val-fraction of the training rows, and head.json says so
    recs = [dataclasses.replace(r, split="train" if r.split == "val" else r.split) for r in hier_records(200, D)]
    nov = write_records(tmp_path / "noval", recs)
    out = tmp_path / "frac"
    ok("train", nov, "--out", out, "--kind", "logistic", "--val-fraction", "0.25")
    fi = load_head(out)[1]
    n_train_split = sum(r.split == "train" for r in recs)
    assert "25% of the training rows" in fi["threshold_from"]
    assert fi["n_train"] + fi["n_val"] == n_train_split and abs(fi["n_val"] - 0.25 * n_train_split) <= 2
    # the validation rows must never be the training rows
    one_error_line(cli("train", nov, "--out", tmp_path / "y", "--val-split", "train"), "--val-split")
    one_error_line(cli("train", nov, "--out", tmp_path / "y", "--val-split", "", "--val-fraction", "1"),
                   "--val-fraction", code=2)  # out of the option's range: a usage error


def test_head_from_other_models_refused(signal_store, logistic_head, tmp_path):
    small = synth_store(tmp_path / "d16", n=40, d=16)
    one_error_line(cli("eval", small, "--head", logistic_head), "embed_dim", "32", "16")
    compat = dict(synthetic_compat(D, feature_size("hierarchical", D)), clip_model="ViT-B-32")
    other = write_records(tmp_path / "b32", hier_records(40, D), compat=compat)
    one_error_line(cli("eval", other, "--head", logistic_head), "clip_model", "ViT-B-32", "synthetic")
    one_error_line(cli("report", other, "--head", logistic_head, "--out", tmp_path / "r.html"), "clip_model")


# -- predict ----------------------------------------------------------------------------------------
def test_predict_matches_the_store_and_skips_unreadable_files(feat, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    picks = [0, 5, 11]
    for i in picks:
        (folder / f"{i}.png").write_bytes(Path(feat["rows"][i]["path"]).read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    doc = json.loads(ok("predict", folder, "--head", feat["head"], "--json").stdout)
    assert doc["random_weights"] is True
    out = doc["rows"]
    by_name = {Path(r["path"]).name: r for r in out}
    assert set(by_name) == {"0.png", "5.png", "11.png", "broken.png"}
    bad = by_name["broken.png"]
    assert bad["status"] == "skipped" and bad["reason"] and bad["p_fake"] is None and bad["label"] is None

    model, info = load_head(feat["head"])
    with StoreReader(feat["store"]) as reader:
        meta = reader.metadata(["path", "caption"])
        row_of = {Path(p).name: i for i, p in enumerate(meta["path"])}
        rows = [row_of[f"{i}.png"] for i in picks]
        want = model.predict_proba(store_features(reader, info["recipe"], rows))[:, 1]
        objs = reader.objects(rows)
        img, cap = reader.read("image_emb", rows), reader.read("caption_emb", rows)
    for k, (i, row) in enumerate(zip(picks, rows)):
        r = by_name[f"{i}.png"]
        # a new file scores exactly as the same image does from the store
        assert r["p_fake"] == pytest.approx(float(want[k]), abs=1e-6)
        assert r["label"] == ("fake" if r["p_fake"] >= info["threshold"] else "real")
        assert r["caption"] == meta["caption"][row] and r["threshold"] == info["threshold"]
        assert r["global_alignment"] == pytest.approx(float(_unit(img[k]) @ _unit(cap[k])), abs=2e-3)
        mine = objs["image"] == row
        assert [o["noun"] for o in r["objects"]] == list(objs["noun"][mine])
        for o, box, grounded, crop, noun in zip(r["objects"], objs["box"][mine], objs["grounded"][mine],
                                                objs["crop_emb"][mine], objs["noun_emb"][mine]):
            assert o["grounded"] == bool(grounded)
            if grounded:
                assert o["box"] == pytest.approx(list(box), abs=0.051)
                assert o["alignment"] == pytest.approx(float(_unit(crop) @ _unit(noun)), abs=2e-3)
            else:
                assert o["box"] is None and o["alignment"] is None
    # the table form shows the skipped file with its reason rather than failing
    text = ok("predict", folder, "--head", feat["head"]).stdout
    assert "broken.png" in text and "skipped" in text


# -- neighbours -------------------------------------------------------------------------------------
def _brute_force(store, query_vec, k, exclude=()):
    with StoreReader(store) as reader:
        rows = np.setdiff1d(reader.select(), np.array(list(exclude), np.int64))
        emb = reader.read("image_emb", rows).astype(np.float64)
    sims = (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ _unit(query_vec)
    order = np.argsort(-sims, kind="stable")[:k]
    return rows[order].tolist(), sims[order]


def test_neighbors_equal_brute_force_exact_and_indexed(tmp_path):
    store = synth_store(tmp_path / "s", n=300)
    with StoreReader(store) as reader:
        q = reader.read("image_emb", [17])[0]
    want_rows, want_sims = _brute_force(store, q, 5, exclude=[17])
    exact = json.loads(ok("neighbors", store, "17", "-k", "5", "--json").stdout)
    assert exact["method"] == "exact" and exact["row"] == 17
    assert [h["row"] for h in exact["neighbors"]] == want_rows
    np.testing.assert_allclose([h["similarity"] for h in exact["neighbors"]], want_sims, atol=1e-5)
    ok("store", "index", store, "--kind", "flat")
    indexed = json.loads(ok("neighbors", store, "17", "-k", "5", "--json").stdout)
    assert indexed["method"] == "index flat"
    assert [h["row"] for h in indexed["neighbors"]] == want_rows
    np.testing.assert_allclose([h["similarity"] for h in indexed["neighbors"]], want_sims, atol=1e-5)
    one_error_line(cli("neighbors", store, "300"), "out of range")
    one_error_line(cli("neighbors", store, "17", "--on", "pixels"), "pixels", "image")
    one_error_line(cli("neighbors", store, "17", "-k", "0"), "-k", code=2)


def test_neighbors_of_an_image_file(feat):
    row = 6
    path = feat["rows"][row]["path"]
    res = json.loads(ok("neighbors", feat["store"], path, "-k", "4", "--json").stdout)
    assert res["kind"] == "file" and res["method"] == "exact"
    with StoreReader(feat["store"]) as reader:
        q = reader.read("image_emb", [row])[0]
    want_rows, want_sims = _brute_force(feat["store"], q, 4, exclude=[row])
    # the file is in the store: its own row is left out of its neighbours, and the answer says so
    assert res["stored_row"] == row and res["excluded"] == [row]
    assert [h["row"] for h in res["neighbors"]] == want_rows
    np.testing.assert_allclose([h["similarity"] for h in res["neighbors"]], want_sims, atol=2e-3)


def test_generator_profile_finds_the_planted_neighbour(tmp_path):
    rng = np.random.default_rng(3)
    centers = {g: _unit(rng.normal(size=D)).astype(np.float32) for g in ("A", "B")}
    recs = []
    for i in range(90):
        gen = ("A", "B", "C")[i % 3]
        center = centers["A" if gen == "C" else gen]  # C is drawn around A's cluster
        emb = _unit(center + 0.3 * rng.normal(size=D) / np.sqrt(D)).astype(np.float32)
        real = i % 2 == 0 and gen != "C"
        if real:
            emb = _unit(rng.normal(size=D)).astype(np.float32)
        recs.append(ImageRecord(id=f"{i:064x}", path=f"/p/{i}.png", label="real" if real else "fake",
                                generator=gen, split="train", image_emb=emb, caption_emb=emb,
                                misalignment=np.zeros(feature_size("hierarchical", D), np.float32)))
    for i in range(90, 93):  # unlabelled images of no known generator, also near A
        emb = _unit(centers["A"] + 0.3 * rng.normal(size=D) / np.sqrt(D)).astype(np.float32)
        recs.append(ImageRecord(id=f"{i:064x}", path=f"/p/{i}.png", image_emb=emb, caption_emb=emb,
                                misalignment=np.zeros(feature_size("hierarchical", D), np.float32)))
    store = write_records(tmp_path / "s", recs)
    prof = json.loads(ok("neighbors", store, "--generator", "C", "-k", "5", "--json").stdout)
    assert prof["n_queries"] == 30 and prof["k"] == 5
    assert sum(r["share"] for r in prof["table"]) == pytest.approx(1.0)
    assert sum(r["top1"] for r in prof["table"]) == 30
    assert prof["table"][0]["generator"] == "A" and prof["table"][0]["share"] > 0.7
    assert {r["generator"] for r in prof["table"]} <= {"A", "B", "real", "unknown"}
    assert sum(r["votes"] for r in prof["table"]) == 30 * 5
    text = ok("neighbors", store, "--generator", "C", "-k", "5").stdout
    assert "A" in text and "share" in text
    one_error_line(cli("neighbors", store, "--generator", "Z"), "Z", "A, B, C")


# -- report and demo --------------------------------------------------------------------------------
def test_report_html(signal_store, logistic_head, tmp_path):
    out = tmp_path / "r.html"
    r = ok("report", signal_store, "--head", logistic_head, "--out", out)
    assert out.is_file() and str(out) in r.stdout
    html = out.read_text()
    title = html[html.index("<title>") + 7:html.index("</title>")]
    assert title.startswith("RANDOM WEIGHTS")
    body = html[html.index("<body"):]
    assert "RANDOM WEIGHTS" in body[:400]
    for g in ("gen_a", "gen_b", "logistic"):
        assert g in html


@pytest.mark.slow  # the whole demo on 38 images (about 54 CPU s)
def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    r = ok("demo", "--models", "tiny-random", "--out", out, "--device", "cpu")
    assert r.stdout.splitlines()[0].startswith("RANDOM WEIGHTS")
    assert (out / "report.html").is_file() and (out / "store" / "manifest.json").is_file()
    for recipe in ("hierarchical", "visual"):
        assert load_head(out / f"head-{recipe}")[1]["recipe"] == recipe
    assert "FLUX.1-dev" in r.stdout and "mean" in r.stdout
    with StoreReader(out / "store") as reader:
        # 38 sample files, two of them byte-identical (kept as an alias of one row)
        assert reader.counts["n_ok"] + reader.counts["n_aliases"] == 38 and reader.random_weights


# -- CLI errors -------------------------------------------------------------------------------------
def test_cli_errors_are_one_line(signal_store, logistic_head, tmp_path):
    one_error_line(cli("eval", signal_store, "--head", logistic_head, "--split", "holdout"), "holdout", "train")
    one_error_line(cli("train", signal_store, "--out", tmp_path / "h", "--recipe", "pixels"),
                   "pixels", "hierarchical", "visual")
    one_error_line(cli("train", signal_store, "--out", tmp_path / "h", "--kind", "forest"), "forest", "mlp")
    one_error_line(cli("train", signal_store, "--out", tmp_path / "h", "--hidden", "a,b"), "--hidden", code=2)
    one_error_line(cli("eval", signal_store, "--head", tmp_path / "nohead"), "nohead")
    one_error_line(cli("predict", tmp_path, "--head", tmp_path / "nohead"), "nohead")
    one_error_line(cli("report", signal_store, "--head", tmp_path / "nohead"), "nohead")
    one_error_line(cli("eval", tmp_path / "nostore", "--head", logistic_head), "nostore")
    one_error_line(cli("train", signal_store, "--out", tmp_path / "h", "--train-split", "holdout"), "holdout")
    assert not (tmp_path / "h").exists()


def test_train_generators_keeps_pooled_reals(tmp_path):
    """Reals of no generator (a shared camera pool) always train; a held-out generator's paired reals do not."""
    from item.classify.train import TrainConfig, select_training_rows
    from item.store import StoreWriter
    from item.store.synthetic import synthetic_compat, synthetic_records

    recs = list(synthetic_records(60, 8, generators=("gen_a", "gen_b", "camera"), split_fractions=(1.0, 0.0, 0.0)))
    for r in recs:
        if r.generator == "camera":
            r.label = "real"
    with StoreWriter(tmp_path / "s", compat=synthetic_compat(8, 8), models={}, recipe="hierarchical") as w:
        for r in recs:
            w.add(r)
    with StoreReader(tmp_path / "s") as reader:
        train, val, how = select_training_rows(reader, TrainConfig(train_generators=("gen_a",), val_split=None,
                                                                   val_fraction=0.2))
        meta = reader.metadata(["label", "generator"])
        used = np.r_[train, val]
        assert set(meta["generator"][used]) == {"gen_a", "camera"}
        assert (meta["generator"][used] == "camera").sum() == sum(r.generator == "camera" for r in recs)
        assert "stratified" in how
