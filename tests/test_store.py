import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from item.cli import app
from item.errors import IncompatibleError, LockedError, SchemaError, StoreError
from item.store import (ImageRecord, StoreIndex, StoreReader, StoreWriter, build_index, export_metadata,
                        store_info, validate)
from item.store import schema
from item.store.synthetic import synthetic_compat, synthetic_records, write_synthetic_store

D = 32


def make_store(root, n=60, shard_size=16, **kw):
    return write_synthetic_store(root, n, D, shard_size=shard_size, **kw)


def test_round_trip(tmp_path):
    recs = list(synthetic_records(45, D, seed=3))
    root = tmp_path / "s"
    with StoreWriter(root, compat=synthetic_compat(D, 8), models={"clip": {}}, recipe="hierarchical",
                     shard_size=10) as w:
        for r in recs:
            w.add(r)
    with StoreReader(root) as r:
        assert r.n_images == 45 and len(r.shards) == 5
        assert r.n_objects == sum(len(x.objects) for x in recs)
        emb = r.read("image_emb")
        np.testing.assert_allclose(emb, np.array([x.image_emb for x in recs]), atol=2e-3)
        mis = r.read("misalignment", [7, 3])
        np.testing.assert_array_equal(mis, np.array([recs[7].misalignment, recs[3].misalignment]))
        meta = r.metadata()
        assert list(meta["id"]) == [x.id for x in recs]
        assert list(meta["label"]) == [x.label for x in recs]
        assert list(r.select(label="fake", split="train")) == [
            i for i, x in enumerate(recs) if x.label == "fake" and x.split == "train"]
        # objects of chosen images, in the order asked, with their global image row
        want = [(i, o.noun) for i in (33, 2, 17) for o in recs[i].objects]
        got = r.objects([33, 2, 17])
        assert [(int(a), b) for a, b in zip(got["image"], got["noun"])] == want
        grounded = np.array([o.box is not None for i in (33, 2, 17) for o in recs[i].objects], bool)
        np.testing.assert_array_equal(got["grounded"], grounded)
        noun = np.array([o.noun_emb for i in (33, 2, 17) for o in recs[i].objects]).reshape(-1, D)
        np.testing.assert_allclose(got["noun_emb"], noun, atol=2e-3)
        chunks = list(r.iter_chunks("caption_emb", chunk_rows=7))
        assert [c.size for c, _ in chunks] == [7] * 6 + [3]
        df = r.table()
        assert len(df) == 45 and set(["row", "id", "label", "generator", "split"]) <= set(df.columns)


def test_resume_knows_done_ids_and_refuses_duplicates(tmp_path):
    root = tmp_path / "s"
    recs = list(synthetic_records(20, D))
    compat = synthetic_compat(D, 8)
    with StoreWriter(root, compat=compat, models={}, recipe="hierarchical", shard_size=8) as w:
        for r in recs[:12]:
            w.add(r)
    with StoreWriter(root, compat=compat, models={}, recipe="hierarchical", shard_size=8) as w:
        assert w.done_ids == {r.id for r in recs[:12]}
        with pytest.raises(StoreError, match="already in the store"):
            w.add(recs[0])
        for r in recs[12:]:
            w.add(r)
    with StoreReader(root) as r:
        assert list(r.metadata()["id"]) == [x.id for x in recs]
    assert validate(root).ok


def test_half_written_shard_is_never_read(tmp_path):
    root = tmp_path / "s"
    make_store(root, n=32, shard_size=16)
    shard_dir = root / schema.SHARD_DIR
    committed = sorted(p.name for p in shard_dir.iterdir())
    # a partial file of a killed writer, and a renamed-but-uncommitted incomplete shard
    (shard_dir / ".shard-0123456789ab-000002.h5.partial").write_bytes(b"\x89HDF garbage")
    with h5py.File(shard_dir / "shard-0123456789ab-000002.h5", "w") as f:
        f.attrs[schema.A_COMPLETE] = False
    with StoreReader(root) as r:
        assert r.n_images == 32 and sorted(r.shards) == committed and len(committed) == 2
    rep = validate(root)
    assert rep.ok and len(rep.warnings) == 2
    with StoreWriter(root, compat=synthetic_compat(D, 8), models={}, recipe="hierarchical") as w:
        assert len(w.done_ids) == 32
    assert sorted(p.name for p in shard_dir.iterdir()) == committed


def test_complete_uncommitted_shard_is_adopted(tmp_path):
    root = tmp_path / "s"
    make_store(root, n=32, shard_size=16)
    manifest = json.loads((root / schema.MANIFEST).read_text())
    # simulate a kill between the shard's rename and the manifest's replacement
    manifest["shards"] = manifest["shards"][:1]
    for k in ("n_images", "n_ok", "n_objects", "n_grounded", "n_skipped", "n_aliases"):
        manifest["counts"][k] -= json.loads((root / schema.MANIFEST).read_text())["shards"][1][k]
    (root / schema.MANIFEST).write_text(json.dumps(manifest))
    with StoreReader(root) as r:
        assert r.n_images == 16
    with StoreWriter(root, compat=synthetic_compat(D, 8), models={}, recipe="hierarchical") as w:
        assert len(w.done_ids) == 32
    with StoreReader(root) as r:
        assert r.n_images == 32
    assert validate(root).ok


def test_other_model_is_refused(tmp_path):
    root = tmp_path / "s"
    make_store(root, n=4)
    other = synthetic_compat(D, 8)
    other["clip_model"] = "ViT-L-14"
    with pytest.raises(IncompatibleError, match="clip_model"):
        StoreWriter(root, compat=other, models={}, recipe="hierarchical")
    with pytest.raises(IncompatibleError, match="embed_dim"):
        StoreWriter(root, compat=synthetic_compat(D * 2, 8), models={}, recipe="hierarchical")
    # the refused writer released the lock
    StoreWriter(root, compat=synthetic_compat(D, 8), models={}, recipe="hierarchical").close()


def test_wrong_vector_size_and_non_finite_refused(tmp_path):
    w = StoreWriter(tmp_path / "s", compat=synthetic_compat(D, 8), models={}, recipe="hierarchical")
    rec = next(synthetic_records(1, D))
    bad = ImageRecord(**{**rec.__dict__, "image_emb": np.ones(D + 1, np.float32)})
    with pytest.raises(IncompatibleError, match="shape"):
        w.add(bad)
    nan = rec.caption_emb.copy()
    nan[0] = np.nan
    with pytest.raises(StoreError, match="non-finite"):
        w.add(ImageRecord(**{**rec.__dict__, "caption_emb": nan}))
    w.close()


def test_newer_schema_is_refused(tmp_path):
    root = tmp_path / "s"
    make_store(root, n=4)
    m = json.loads((root / schema.MANIFEST).read_text())
    m["schema_version"] = schema.SCHEMA_VERSION + 1
    (root / schema.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(SchemaError, match="upgrade"):
        StoreReader(root)
    r = CliRunner().invoke(app, ["store", "info", str(root)])
    assert r.exit_code == 1 and "upgrade" in r.output and "Traceback" not in r.output


def test_newer_schema_shard_is_refused(tmp_path):
    root = tmp_path / "s"
    make_store(root, n=4)
    first = json.loads((root / schema.MANIFEST).read_text())["shards"][0]["name"]
    with h5py.File(root / schema.SHARD_DIR / first, "r+") as f:
        f.attrs[schema.A_SCHEMA] = schema.SCHEMA_VERSION + 1
    with pytest.raises(SchemaError, match="upgrade"):
        StoreReader(root).read("image_emb")
    assert not validate(root).ok


def test_second_writer_is_welcome_but_overwrite_is_refused_while_one_writes(tmp_path):
    root = tmp_path / "s"
    recs = list(synthetic_records(6, D))
    w = StoreWriter(root, compat=synthetic_compat(D, 8), models={}, recipe="hierarchical", command="item featurize x")
    w2 = StoreWriter(root, compat=synthetic_compat(D, 8), models={}, recipe="hierarchical")
    with pytest.raises(LockedError, match="pid .*item featurize x"):
        StoreWriter(root, compat=synthetic_compat(D, 8), models={}, recipe="hierarchical", overwrite=True)
    for r in recs[:3]:
        w.add(r)
    for r in recs[1:]:  # overlapping: rows 1 and 2 are written by both
        w2.add(r)
    w.close()
    w2.close()
    with StoreReader(root) as r:
        assert sorted(r.metadata([schema.ID])[schema.ID]) == sorted(x.id for x in recs)
        assert r.n_images == 6
    assert validate(root).ok
    StoreWriter(root, compat=synthetic_compat(D, 8), models={}, recipe="hierarchical", overwrite=True).close()
    with StoreReader(root) as r:
        assert r.n_images == 0


@pytest.mark.parametrize("damage", ["nan", "norm", "count", "missing", "truncate"])
def test_validate_finds_damage(tmp_path, damage):
    root = tmp_path / "s"
    make_store(root, n=32, shard_size=16)
    shard = root / schema.SHARD_DIR / json.loads((root / schema.MANIFEST).read_text())["shards"][1]["name"]
    if damage in ("nan", "norm"):
        with h5py.File(shard, "r+") as f:
            ds = f[schema.G_IMAGES][schema.IMAGE_EMB]
            row = ds[3]
            row[0] = np.nan if damage == "nan" else row[0] + 3
            ds[3] = row
    elif damage == "count":
        m = json.loads((root / schema.MANIFEST).read_text())
        m["counts"]["n_images"] += 1
        (root / schema.MANIFEST).write_text(json.dumps(m))
    elif damage == "missing":
        shard.unlink()
    else:
        data = shard.read_bytes()
        shard.write_bytes(data[: len(data) // 3])
    rep = validate(root)
    assert not rep.ok, damage
    r = CliRunner().invoke(app, ["store", "validate", str(root)])
    assert r.exit_code == 1 and "problem" in r.output


def test_flat_search_equals_brute_force(tmp_path):
    root = tmp_path / "s"
    make_store(root, n=300, shard_size=64)
    build_index(root, kind="flat")
    ix = StoreIndex(root)
    with StoreReader(root) as r:
        rows = r.select()
        emb = r.read("image_emb", rows)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    q = np.random.default_rng(1).normal(size=(5, D)).astype(np.float32)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    scores, got = ix.search(q, k=10)
    sims = qn @ emb.T
    want = rows[np.argsort(-sims, axis=1)[:, :10]]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(scores, np.sort(sims, axis=1)[:, ::-1][:, :10], atol=1e-5)
    hits = ix.search_rows(q[:1], k=3)[0]
    assert [h["row"] for h in hits] == list(want[0, :3]) and {"path", "label", "generator"} <= set(hits[0])


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_recall(tmp_path, kind):
    root = tmp_path / "s"
    make_store(root, n=4000, shard_size=1000, max_objects=0, n_clusters=32)
    build_index(root, kind="flat")
    build_index(root, kind=kind)
    exact, approx = StoreIndex(root, kind="flat"), StoreIndex(root, kind=kind)
    with StoreReader(root) as r:
        q = r.read("image_emb", np.arange(0, 4000, 40))
    q = q + 0.05 * np.random.default_rng(2).normal(size=q.shape).astype(np.float32)
    _, want = exact.search(q, 10)
    _, got = approx.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(want, got)])
    assert recall >= 0.9, recall


def test_stale_index_is_refused(tmp_path):
    root = tmp_path / "s"
    recs = list(synthetic_records(30, D))
    compat = synthetic_compat(D, 8)
    with StoreWriter(root, compat=compat, models={}, recipe="hierarchical") as w:
        for r in recs[:20]:
            w.add(r)
    build_index(root, kind="flat")
    with StoreWriter(root, compat=compat, models={}, recipe="hierarchical") as w:
        for r in recs[20:]:
            w.add(r)
    with pytest.raises(StoreError, match="stale"):
        StoreIndex(root)
    rep = validate(root)
    assert rep.ok and any("stale" in w for w in rep.warnings)
    assert store_info(root)["indexes"][0]["fresh"] is False


def test_misalignment_index(tmp_path):
    root = tmp_path / "s"
    make_store(root, n=50)
    build_index(root, on="misalignment", kind="flat")
    ix = StoreIndex(root, on="misalignment")
    with StoreReader(root) as r:
        q = r.read("misalignment", [5])
    _, rows = ix.search(q, 1)
    assert rows[0, 0] == 5


def test_export_csv_and_parquet(tmp_path):
    import pandas as pd

    root = tmp_path / "s"
    make_store(root, n=25)
    n = export_metadata(root, tmp_path / "m.csv")
    df = pd.read_csv(tmp_path / "m.csv")
    assert n == 25 == len(df) and list(df["row"]) == list(range(25))
    export_metadata(root, tmp_path / "m.parquet")
    pq = pd.read_parquet(tmp_path / "m.parquet")
    assert list(pq["id"]) == list(df["id"])


def test_cli_commands(tmp_path):
    root = tmp_path / "s"
    make_store(root, n=40)
    run = CliRunner().invoke
    r = run(app, ["store", "info", str(root), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    for key in ("schema_version", "n_images", "n_objects", "n_skipped", "embed_dim", "models", "random_weights"):
        assert key in info
    assert info["n_images"] == 40 and info["embed_dim"] == D and info["random_weights"] is True
    r = run(app, ["store", "info", str(root)])
    assert r.exit_code == 0 and r.stdout.startswith("RANDOM WEIGHTS")
    assert run(app, ["store", "validate", str(root)]).exit_code == 0
    r = run(app, ["store", "index", str(root), "--kind", "nope"])
    assert r.exit_code == 1 and "flat, hnsw, ivfpq" in r.output
    assert run(app, ["store", "index", str(root), "--kind", "hnsw"]).exit_code == 0
    r = run(app, ["store", "export", str(root), "--out", str(tmp_path / "x.txt")])
    assert r.exit_code == 1 and ".csv" in r.output
    assert run(app, ["store", "export", str(root), "--out", str(tmp_path / "x.csv")]).exit_code == 0
    assert (tmp_path / "x.csv").read_text().count("\n") == 41
    r = run(app, ["store", "info", str(tmp_path / "nothing")])
    assert r.exit_code == 1 and "no such store" in r.output


def test_cli_as_subprocess(tmp_path):
    root = tmp_path / "s"
    make_store(root, n=20)
    exe = [sys.executable, "-m", "item"]
    out = subprocess.run(exe + ["store", "info", str(root), "--json"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["n_images"] == 20
    out = subprocess.run(exe + ["store", "validate", str(root)], capture_output=True, text=True)
    assert out.returncode == 0 and "valid" in out.stdout
    out = subprocess.run(exe + ["store", "index", str(root), "--kind", "flat"], capture_output=True, text=True)
    assert out.returncode == 0 and any((root / "index").glob("image-flat.*.faiss"))
    out = subprocess.run(["item", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "store" in out.stdout


def test_lock_taken_before_the_writer_is_handed_over(tmp_path):
    from item.store.writer import WriterLock

    root = tmp_path / "s"
    root.mkdir()
    lock = WriterLock(root)
    lock.acquire("item featurize (loading models)", exclusive=True)
    with pytest.raises(LockedError, match="overwriting"):
        StoreWriter(root, compat=synthetic_compat(D, 8), models={}, recipe="hierarchical")
    w = StoreWriter(root, compat=synthetic_compat(D, 8), models={}, recipe="hierarchical", lock=lock,
                    auto_flush=False, shard_size=2)
    for rec in synthetic_records(5, D):
        w.add(rec)
    assert w.pending == 5  # no shard closed behind the caller's back
    w.flush_if_full()
    assert w.pending == 0
    w.close()
    with StoreReader(root) as r:
        assert r.n_images == 5 and len(r.shards) == 1
    other = WriterLock(tmp_path)
    other.acquire()
    with pytest.raises(StoreError, match="not held on this store"):
        StoreWriter(root, compat=synthetic_compat(D, 8), models={}, recipe="hierarchical", lock=other)
    other.release()


def test_reader_keeps_few_shard_files_open_and_reads_every_shard(tmp_path):
    from item.store import reader as reader_module

    root = make_store(tmp_path / "s", n=40, shard_size=2)  # 20 shards
    with StoreReader(root) as r:
        whole = r.read("image_emb")
        ids = r.metadata(["id"])["id"]
        assert len(r.shards) > reader_module.MAX_OPEN_SHARDS
        assert len(r._files) <= reader_module.MAX_OPEN_SHARDS
        # Shards closed on the way are reopened on demand, and give the same values.
        again = r.read("image_emb", np.arange(r.n_images)[::-1])
        assert np.array_equal(again, whole[::-1])
        assert list(r.metadata(["id"])["id"]) == list(ids)
        assert len(r._files) <= reader_module.MAX_OPEN_SHARDS
