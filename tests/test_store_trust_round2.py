"""Issue 21: the second hostile pass over the store and heads. Each case as a careless user or an
attacker meets it (a removed lock file, swapped shard files, a killed index build or head save, tiny
heads' seen-id digests), through the real CLI or the public API, on synthetic stores (no models)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from item.cli import app
from item.errors import HeadError, LockedError, StoreError
from item.store import StoreReader, StoreWriter, schema
from item.store.synthetic import synthetic_compat, synthetic_records, write_synthetic_store

D = 16
MODELS = {"clip": {"model": "synthetic", "random_weights": True}}


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error(r) -> str:
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert r.exit_code == 1 and len(errors) == 1 and "Traceback" not in r.output, r.output
    return errors[0]


def writer(store, **kw) -> StoreWriter:
    return StoreWriter(store, compat=synthetic_compat(D, 8), models=MODELS, recipe="hierarchical", **kw)


def run_item(*args, fault: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), ITEM_FAULT=fault)
    return subprocess.run([sys.executable, "-m", "item", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)


# -- 3. a removed writer.lock ----------------------------------------------------------------------
def test_a_removed_writer_lock_does_not_let_an_overwrite_run_under_a_live_writer(tmp_path):
    store = tmp_path / "s"
    recs = list(synthetic_records(16, D))
    a = writer(store, shard_size=4)
    for r in recs[:8]:
        a.add(r)  # two shards committed
    (store / schema.LOCK_FILE).unlink()  # what `rm STORE/writer.lock` does
    with pytest.raises(LockedError, match="writer is still running"):
        writer(store, overwrite=True)
    with StoreReader(store) as rd:
        assert rd.n_images == 8  # nothing removed
    # a plain second writer may still join (nothing is overwritten)
    b = writer(store, shard_size=4)
    b.abort()
    # the same through the CLI: one line naming the live writer
    from PIL import Image

    folder = tmp_path / "imgs"
    (folder / "0_real").mkdir(parents=True)
    Image.new("RGB", (24, 20), (10, 20, 30)).save(folder / "0_real" / "a.png")
    line = one_error(cli("featurize", folder, "--store", store, "--overwrite", "--models", "tiny-random",
                         "--workers", "0"))
    assert "still running" in line and str(os.getpid()) in line
    # the live writer itself now finds writer.lock is not the file it locked: it stops rather than go on
    with pytest.raises(LockedError, match="removed or replaced"):
        for r in recs[8:12]:
            a.add(r)
    a.abort()
    with StoreReader(store) as rd:
        assert rd.n_images == 8  # its committed rows are all there


def test_a_writer_whose_lock_was_replaced_stops_instead_of_reporting_rows_it_lost(tmp_path):
    store = tmp_path / "s"
    recs = list(synthetic_records(12, D))
    a = writer(store, shard_size=4)
    for r in recs[:4]:
        a.add(r)
    # writer.lock removed and made anew (as another process taking the store would): the file `a` locked is gone
    (store / schema.LOCK_FILE).unlink()
    (store / schema.LOCK_FILE).write_bytes(b"")
    with pytest.raises(LockedError, match="removed or replaced"):
        for r in recs[4:8]:
            a.add(r)
    with pytest.raises(LockedError, match="removed or replaced"):
        a.close()
    with StoreReader(store) as rd:
        assert rd.n_images == 4  # what was committed before stays; nothing after was claimed


# -- 4. swapped shard files ------------------------------------------------------------------------
def _swap(store: Path) -> tuple[str, str]:
    with StoreReader(store) as rd:
        names = list(rd.shards)
    size = {n: (store / schema.SHARD_DIR / n).stat().st_size for n in names}
    # two of the same size and counts: only their contents tell them apart
    names = next([x, y] for i, x in enumerate(names) for y in names[i + 1:] if size[x] == size[y])
    a, b = (store / schema.SHARD_DIR / n for n in names)
    tmp = a.with_name("swap.tmp")
    os.replace(a, tmp)
    os.replace(b, a)
    os.replace(tmp, b)
    return names[0], names[1]


def _equal_shards_store(tmp_path) -> Path:
    # no objects, captions and paths of one length (rows 10-39): shards of 8 rows come out the same size
    return Path(write_synthetic_store(tmp_path / "s", 40, D, shard_size=8, max_objects=0))


def test_swapped_shards_are_refused_by_every_reader(tmp_path):
    store = _equal_shards_store(tmp_path)
    with StoreReader(store) as rd:
        first_id = str(rd.metadata([schema.ID])[schema.ID][0])
    r = cli("train", store, "--out", tmp_path / "h", "--head", "logistic")
    assert r.exit_code == 0, r.output
    _swap(store)
    assert "swapped" in one_error(cli("neighbors", store, first_id, "-k", "3", "--json"))
    assert "swapped" in one_error(cli("train", store, "--out", tmp_path / "h2", "--head", "logistic"))
    assert "swapped" in one_error(cli("eval", store, "--head", tmp_path / "h"))
    assert cli("store", "validate", store).exit_code == 1
    with pytest.raises(StoreError, match="swapped"):
        with StoreReader(store) as rd:
            rd.metadata([schema.ID])


def test_swapped_shards_written_before_they_named_themselves_are_refused_by_checksum(tmp_path):
    import h5py

    store = _equal_shards_store(tmp_path)
    m = json.loads((store / schema.MANIFEST).read_text())
    for e in m["shards"]:  # make the shards what an older ITEM wrote: no name attribute
        p = store / schema.SHARD_DIR / e["name"]
        with h5py.File(p, "a") as f:
            del f.attrs[schema.A_NAME]
        e["bytes"] = p.stat().st_size
        from item.store.shards import file_sha256

        e["sha256"] = file_sha256(p)
    (store / schema.MANIFEST).write_text(json.dumps(m))
    with StoreReader(store) as rd:
        first_id = str(rd.metadata([schema.ID])[schema.ID][0])
    _swap(store)
    assert "checksum" in one_error(cli("neighbors", store, first_id, "-k", "3", "--json"))


# -- 6. a killed index build -------------------------------------------------------------------------
def test_an_index_rebuild_killed_before_its_sidecar_leaves_the_old_index_valid(tmp_path):
    store = Path(write_synthetic_store(tmp_path / "s", 40, D, shard_size=16))
    assert cli("store", "index", store, "--kind", "flat").exit_code == 0
    before = cli("neighbors", store, "0", "-k", "3", "--json")
    assert json.loads(before.stdout)["method"].startswith("index")
    p = run_item("store", "index", store, "--kind", "flat", fault="index-written:1")
    assert p.returncode == -signal.SIGKILL, p.stderr
    r = cli("store", "validate", store)
    assert r.exit_code == 0, r.output  # the old index is whole and still used
    assert f"item store index {store} --on image --kind flat" in r.output  # the leftovers name the command
    after = cli("neighbors", store, "0", "-k", "3", "--json")
    assert json.loads(after.stdout)["method"] == json.loads(before.stdout)["method"]
    assert json.loads(after.stdout)["neighbors"] == json.loads(before.stdout)["neighbors"]
    assert cli("store", "index", store, "--kind", "flat").exit_code == 0
    r = cli("store", "validate", store)
    assert r.exit_code == 0 and "did not finish" not in r.output, r.output
    assert len(list((store / schema.INDEX_DIR).glob("*.faiss"))) == 1  # the rebuild cleaned up


def test_a_first_index_build_killed_part_way_leaves_a_valid_store_and_the_command(tmp_path):
    store = Path(write_synthetic_store(tmp_path / "s", 20, D, shard_size=16))
    p = run_item("store", "index", store, "--on", "misalignment", "--kind", "flat", fault="index-written:1")
    assert p.returncode == -signal.SIGKILL, p.stderr
    r = cli("store", "validate", store)
    assert r.exit_code == 0 and f"item store index {store} --on misalignment --kind flat" in r.output, r.output


# -- 7. a half-written head ------------------------------------------------------------------------
def test_a_head_with_weights_from_another_save_is_refused_naming_the_command(tmp_path):
    store = write_synthetic_store(tmp_path / "s", 40, D, shard_size=16)
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("train", store, "--out", a, "--head", "logistic").exit_code == 0
    assert cli("train", store, "--out", b, "--head", "logistic", "--C", "0.01").exit_code == 0
    # killed between head.safetensors and head.json: new weights beside the old threshold and fingerprint
    shutil.copy(b / "head.safetensors", a / "head.safetensors")
    line = one_error(cli("eval", store, "--head", a))
    assert "head.safetensors is not the file head.json describes" in line and f"--out {a}" in line


def test_a_save_interrupted_between_its_files_is_refused_on_load(tmp_path, monkeypatch):
    import item

    store = write_synthetic_store(tmp_path / "s", 40, D, shard_size=16)
    h1 = item.train_head(store, kind="logistic")
    h2 = item.train_head(store, kind="logistic", C=0.01)
    h1.save(tmp_path / "h")
    monkeypatch.setenv("ITEM_FAULT", "head-weights-written:1:raise=EIO")
    with pytest.raises(HeadError):
        h2.save(tmp_path / "h", overwrite=True)
    monkeypatch.delenv("ITEM_FAULT")
    with pytest.raises(HeadError, match="not the file head.json describes"):
        item.load_head(tmp_path / "h")


def test_head_save_refuses_an_existing_head_unless_overwrite_and_train_out_replaces(tmp_path):
    import item

    store = write_synthetic_store(tmp_path / "s", 40, D, shard_size=16)
    h1 = item.train_head(store, kind="logistic")
    h2 = item.train_head(store, kind="logistic", C=0.01)
    h1.save(tmp_path / "h")
    with pytest.raises(HeadError, match="overwrite=True"):
        h2.save(tmp_path / "h")
    assert item.load_head(tmp_path / "h").info["config"]["C"] == h1.info["config"]["C"]
    h2.save(tmp_path / "h", overwrite=True)
    assert item.load_head(tmp_path / "h").info["config"]["C"] == pytest.approx(0.01)
    # the CLI keeps its documented behaviour: --out replaces the head there
    assert cli("train", store, "--out", tmp_path / "h", "--head", "logistic").exit_code == 0
    assert item.load_head(tmp_path / "h").info["config"]["C"] == h1.info["config"]["C"]


# -- 10. seen ids of small heads -------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 4, 7, 30, 1024, 1025, 3000])
def test_the_seen_ids_digest_keeps_its_false_positive_rate_at_every_size(n):
    from item.classify import digest

    rng = np.random.default_rng(n)
    ids = [rng.bytes(32).hex() for _ in range(n)]
    queries = [rng.bytes(32).hex() for _ in range(100_000)]
    dig = digest.build(ids)
    assert digest.contains(dig, ids).all()  # never a false negative
    fp = digest.contains(dig, queries).mean()
    # 0.1% stated: 100 expected at most among 100,000; the old filter gave 883 for 4 ids, 231 for 7
    assert fp <= digest.DEFAULT_FP_RATE * 1.2, fp
    assert json.loads(json.dumps(dig)) == dig  # what head.json holds


# -- 9. rows committed after `store split` -----------------------------------------------------------
def test_rows_added_after_a_split_are_named_by_train_and_split_with_new_only(tmp_path):
    import dataclasses

    store = tmp_path / "s"
    recs = [dataclasses.replace(r, split="") for r in synthetic_records(60, D)]
    with writer(store, shard_size=16) as w:
        for r in recs[:40]:
            w.add(r)
    assert cli("store", "split", store).exit_code == 0
    with StoreReader(store) as rd:
        before = dict(zip(rd.metadata([schema.ID])[schema.ID].astype(str),
                          rd.metadata([schema.SPLIT])[schema.SPLIT].astype(str)))
    with writer(store, shard_size=16) as w:  # a featurize that went on after the split
        for r in recs[40:]:
            w.add(r)
    r = cli("train", store, "--out", tmp_path / "h", "--head", "logistic")
    assert r.exit_code == 0, r.output
    assert "20 labelled rows have no split" in r.stderr and "--new-only" in r.stderr
    line = one_error(cli("store", "split", store))
    assert "--new-only to split the 20 rows" in line
    r = cli("store", "split", store, "--new-only", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["n_changed"] == 20 and sum(c["n"] for c in out["counts"]) == 60
    with StoreReader(store) as rd:
        ids = rd.metadata([schema.ID])[schema.ID].astype(str)
        after = dict(zip(ids, rd.metadata([schema.SPLIT])[schema.SPLIT].astype(str)))
    assert all(after[i] == s for i, s in before.items())  # the earlier split is kept
    assert all(after[i] in ("train", "val", "test") for i in ids)
    r = cli("train", store, "--out", tmp_path / "h", "--head", "logistic")
    assert r.exit_code == 0 and "no split" not in r.stderr, r.output
    assert "nothing to do" in one_error(cli("store", "split", store, "--new-only"))


# -- 11. predict's advice names its own options ----------------------------------------------------------
@pytest.mark.slow
def test_predict_with_a_hub_model_not_in_the_cache_names_its_own_options(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    folder = tmp_path / "imgs"
    for i, lab in enumerate(["0_real", "1_fake"] * 3):
        (folder / lab).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24 + i, 20), (40 * i, 20, 30)).save(folder / lab / f"{i}.png")
    store, head = tmp_path / "s", tmp_path / "h"
    assert cli("featurize", folder, "--store", store, "--models", "tiny-random", "--workers", "0").exit_code == 0
    assert cli("train", store, "--out", head, "--head", "logistic", "--train-split", "all",
               "--val-fraction", "0.5").exit_code == 0
    info = json.loads((head / "head.json").read_text())
    hub = "Salesforce/blip-image-captioning-base"  # a hub id this offline machine has never cached
    info["compat"]["captioner"] = hub
    info["models"]["spec"]["captioner"] = hub
    (head / "head.json").write_text(json.dumps(info))
    line = one_error(cli("predict", folder / "0_real" / "0.png", "--head", head))
    assert hub in line and "--model-path" in line and "--captioner" not in line, line


# -- 12. file names that are not UTF-8 -----------------------------------------------------------------
@pytest.mark.slow
def test_a_file_name_that_is_not_utf8_is_stored_so_that_it_opens_again(tmp_path):
    import hashlib

    from PIL import Image

    from item.store import openable_path

    folder = tmp_path / "imgs"
    (folder / "0_real").mkdir(parents=True)
    (folder / "1_fake").mkdir(parents=True)
    raw = os.fsencode(folder / "0_real") + b"/caf\xe9 \\x41.png"  # a Latin-1 name with a backslash in it
    try:
        with open(raw, "wb") as f:
            Image.new("RGB", (30, 20), (200, 30, 40)).save(f, format="PNG")
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    Image.new("RGB", (30, 20), (10, 30, 40)).save(folder / "1_fake" / "plain.png")
    store = tmp_path / "s"
    r = cli("featurize", folder, "--store", store, "--models", "tiny-random", "--workers", "0")
    assert r.exit_code == 0, r.output
    with StoreReader(store) as rd:
        meta = rd.metadata([schema.ID, schema.PATH, schema.STATUS])
    row = [i for i, p in enumerate(meta[schema.PATH].astype(str)) if "caf" in p][0]
    assert meta[schema.STATUS][row] == schema.STATUS_OK
    stored = str(meta[schema.PATH][row])
    stored.encode("utf-8")  # what HDF5 holds is text
    back = openable_path(stored)
    assert os.fsencode(back) == raw
    with open(back, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == str(meta[schema.ID][row])
    # a name that is UTF-8 comes back as it is
    plain = [str(p) for p in meta[schema.PATH].astype(str) if "plain" in p][0]
    assert openable_path(plain) == plain
    # a second run finds the file already stored (by path), adding nothing
    r = cli("featurize", folder, "--store", store, "--models", "tiny-random", "--workers", "0")
    assert r.exit_code == 0, r.output
    with StoreReader(store) as rd:
        assert rd.n_images == 2


# -- 5. JSON Lines split on \n only ------------------------------------------------------------------
@pytest.mark.slow
def test_json_lines_with_unicode_line_separators_inside_strings_lose_no_row(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rows = []
    for i, sep in enumerate(["\u2028", "\u2029", "\x85", ""]):
        p = folder / f"{i}.png"
        Image.new("RGB", (24 + i, 20), (50 * i, 20, 30)).save(p)
        rows.append({"path": str(p), "label": "real" if i % 2 else "fake", "generator": f"gen{sep}x",
                     "caption": f"a dog{sep}on grass"})
    manifest = tmp_path / "m.jsonl"
    # what json.dumps(..., ensure_ascii=False) writes: the separators raw, inside the strings
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    store = tmp_path / "s"
    r = cli("featurize", manifest, "--store", store, "--models", "tiny-random", "--workers", "0")
    assert r.exit_code == 0 and "not valid JSON" not in r.output, r.output
    with StoreReader(store) as rd:
        meta = rd.metadata([schema.PATH, schema.CAPTION, schema.GENERATOR])
    got = {p: (c, g) for p, c, g in zip(*(meta[k].astype(str) for k in (schema.PATH, schema.CAPTION,
                                                                          schema.GENERATOR)))}
    assert len(got) == 4
    for row in rows:
        assert got[row["path"]][1] == row["generator"]
    # annotate reads JSON Lines the same way
    fix = tmp_path / "fix.jsonl"
    fix.write_text("".join(json.dumps({"path": r_["path"], "generator": "new\u2028gen"}, ensure_ascii=False) + "\n"
                           for r_ in rows), encoding="utf-8")
    r = cli("store", "annotate", store, fix, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n_matched"] == 4
    with StoreReader(store) as rd:
        assert set(rd.metadata([schema.GENERATOR])[schema.GENERATOR].astype(str)) == {"new\u2028gen"}


# -- 8. the same bytes under two labels ---------------------------------------------------------------
@pytest.mark.slow
def test_identical_bytes_with_conflicting_labels_get_one_message_naming_both_and_the_fix(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (30, 20), (90, 20, 30)).save(folder / "a.png")
    shutil.copy(folder / "a.png", folder / "b.png")
    Image.new("RGB", (30, 22), (10, 20, 30)).save(folder / "c.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label\n{folder / 'a.png'},real\n{folder / 'b.png'},fake\n{folder / 'c.png'},real\n")
    store = tmp_path / "s"
    r = cli("featurize", manifest, "--store", store, "--models", "tiny-random", "--workers", "0")
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.stderr.splitlines() if "a.png" in ln and "b.png" in ln]
    assert len(lines) == 1 and "cannot be both" in lines[0], r.stderr
    assert "already in the store" not in lines[0]
    assert not any("item store annotate" in ln and "to apply them" in ln for ln in r.stderr.splitlines()), r.stderr
    # annotate with that manifest says the same, naming both rows
    line = one_error(cli("store", "annotate", store, manifest))
    assert "a.png" in line and "b.png" in line and "cannot be both" in line
