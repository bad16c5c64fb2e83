"""Issue 10: a store that nothing ordinary can break. Each case as a user or an attacker meets it,
through the real CLI where they would (tiny-random models, synthetic stores, small tmpfs mounts)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from item.cli import app
from item.store import StoreReader, schema, validate
from item.store.synthetic import write_synthetic_store

TINY = ["--models", "tiny-random", "--workers", "0", "--batch-size", "4"]
D = 32


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error(r) -> str:
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert r.exit_code == 1 and len(errors) == 1 and "Traceback" not in r.output, r.output
    return errors[0]


def make_folder(folder: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        lab = "0_real" if i % 2 else "1_fake"
        (folder / lab).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, size=(20 + i % 5, 24, 3), dtype=np.uint8)).save(
            folder / lab / f"{seed}-{i:03d}.png")


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def manifest(store) -> dict:
    return json.loads((Path(store) / schema.MANIFEST).read_text())


def put_manifest(store, m: dict) -> None:
    (Path(store) / schema.MANIFEST).write_text(json.dumps(m))


# -- overwrite and debris ----------------------------------------------------------------------------
def test_overwrite_replaces_a_store_with_an_index(tmp_path):
    make_folder(tmp_path / "a", 6, seed=1)
    make_folder(tmp_path / "b", 4, seed=2)
    store = tmp_path / "s"
    assert cli("featurize", tmp_path / "a", "--store", store, *TINY).exit_code == 0
    assert cli("store", "index", store).exit_code == 0
    r = cli("featurize", tmp_path / "b", "--store", store, *TINY, "--overwrite")
    assert r.exit_code == 0, r.output
    with StoreReader(store) as rd:
        assert sorted(os.path.basename(p) for p in rd.metadata([schema.PATH])[schema.PATH]) == \
            sorted(p.name for p in (tmp_path / "b").rglob("*.png"))
    assert not (store / schema.INDEX_DIR).exists()
    assert cli("store", "validate", store).exit_code == 0
    # an --overwrite of something that is not an ITEM store is still refused
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "manifest.json").write_text("{}")
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"x")
    assert "not an ITEM store" in one_error(cli("featurize", tmp_path / "b", "--store", tmp_path / "photos", *TINY,
                                                "--overwrite"))
    assert (tmp_path / "photos" / "holiday.jpg").exists()


def test_debris_of_a_run_killed_before_its_first_commit_is_an_empty_store(tmp_path):
    store = tmp_path / "s"
    (store / schema.SHARD_DIR).mkdir(parents=True)
    (store / schema.LOCK_FILE).write_text("")
    (store / schema.SHARD_DIR / ".shard-0123456789ab-000000.h5.partial").write_bytes(b"\x89HDF half")
    (store / ".manifest.json.1a2b3c.tmp").write_text("{")
    for cmd in (["store", "info", store], ["store", "validate", store]):
        r = cli(*cmd)
        assert r.exit_code == 0 and "empty store (interrupted before the first commit)" in r.output, r.output
    make_folder(tmp_path / "a", 4)
    r = cli("featurize", tmp_path / "a", "--store", store, *TINY)
    assert r.exit_code == 0, r.output
    assert cli("store", "validate", store).exit_code == 0
    assert not list(store.rglob("*.partial")) and not list(store.glob("*.tmp"))


@pytest.mark.slow
def test_overwrite_killed_part_way_leaves_a_store_that_is_accepted(tmp_path):
    make_folder(tmp_path / "a", 6, seed=1)
    make_folder(tmp_path / "b", 4, seed=2)
    store = tmp_path / "s"
    assert cli("featurize", tmp_path / "a", "--store", store, *TINY).exit_code == 0
    assert cli("store", "index", store).exit_code == 0
    env = dict(os.environ, ITEM_FAULT="overwrite-moved:1", HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "-m", "item", "featurize", str(tmp_path / "b"), "--store", str(store), *TINY,
                        "--overwrite"], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == -9, p.stderr  # killed after moving the old manifest aside
    r = cli("store", "info", store)
    assert r.exit_code == 0 and "interrupted before the first commit" in r.output, r.output
    r = cli("featurize", tmp_path / "b", "--store", store, *TINY)  # a plain run finishes the overwrite
    assert r.exit_code == 0, r.output
    with StoreReader(store) as rd:
        assert rd.n_images == 4
    assert sorted(x.name for x in store.iterdir() if not x.name.endswith(".lock")) == \
        [schema.MANIFEST, schema.SHARD_DIR, schema.WRITERS_DIR]
    assert cli("store", "validate", store).exit_code == 0


# -- strings ----------------------------------------------------------------------------------------
def test_a_nul_in_a_caption_or_generator_rejects_that_row_and_the_run_goes_on(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, size=(20, 20 + i, 3), dtype=np.uint8)).save(d / f"{i}.png")
    lines = [json.dumps(x) for x in (
        {"path": "0.png", "label": "real", "caption": "a dog on a lawn"},
        {"path": "1.png", "label": "fake", "caption": "a cat\u0000 on a mat"},
        {"path": "2.png", "label": "fake", "generator": "sd\u0000xl", "caption": "a red car"},
        {"path": "3.png", "label": "real", "caption": "caf\u00e9 \U0001f600 \u202e text"})]
    (d / "m.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    store = tmp_path / "s"
    r = cli("featurize", d / "m.jsonl", "--store", store, *TINY, "--captioner", "none")
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    with StoreReader(store) as rd:
        meta = rd.metadata()
    by = {os.path.basename(p): i for i, p in enumerate(meta[schema.PATH])}
    assert len(by) == 4
    for name in ("1.png", "2.png"):
        assert meta[schema.STATUS][by[name]] == "skipped" and meta[schema.REASON][by[name]] == "unstorable-text"
    assert meta[schema.CAPTION][by["3.png"]] == "caf\u00e9 \U0001f600 \u202e text"  # stored losslessly
    assert meta[schema.STATUS][by["0.png"]] == "ok"
    r = cli("featurize", d / "m.jsonl", "--store", store, *TINY, "--captioner", "none", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["n_already_done"] == 4, r.output
    assert validate(store).ok


# -- resume never touches what is listed or complete --------------------------------------------------
def test_resume_keeps_an_unlisted_complete_shard_and_overwrites_nothing(tmp_path):
    make_folder(tmp_path / "a", 12, seed=1)
    store = tmp_path / "s"
    assert cli("featurize", tmp_path / "a", "--store", store, *TINY, "--shard-size", "4").exit_code == 0
    m = manifest(store)
    assert len(m["shards"]) == 3
    gone = m["shards"].pop(1)  # as if killed between a shard's rename and the manifest's replace
    for k in ("n_images", "n_ok", "n_skipped", "n_objects", "n_grounded", "n_aliases"):
        m["counts"][k] -= gone[k]
    put_manifest(store, m)
    before = files_of(store / schema.SHARD_DIR)
    make_folder(tmp_path / "a", 16, seed=1)  # four more inputs
    r = cli("featurize", tmp_path / "a", "--store", store, *TINY, "--shard-size", "4")
    assert r.exit_code == 0, r.output
    after = files_of(store / schema.SHARD_DIR)
    for name, data in before.items():
        assert after.get(name) == data, f"{name} was removed or rewritten"
    assert validate(store).ok
    with StoreReader(store) as rd:
        ids = list(rd.metadata([schema.ID])[schema.ID])
    assert len(ids) == len(set(ids)) == 16


@pytest.mark.parametrize("damage", ["outside", "twice", "no-shards", "no-counts"])
def test_a_damaged_shard_list_is_refused_before_anything_is_touched(tmp_path, damage):
    make_folder(tmp_path / "a", 8, seed=1)
    store = tmp_path / "s"
    assert cli("featurize", tmp_path / "a", "--store", store, *TINY, "--shard-size", "4").exit_code == 0
    m = manifest(store)
    if damage == "outside":
        m["shards"][0]["name"] = "../../victim.h5"
    elif damage == "twice":
        m["shards"][1] = dict(m["shards"][0])
    elif damage == "no-shards":
        del m["shards"]
    else:
        del m["counts"]
    put_manifest(store, m)
    (tmp_path / "victim.h5").write_bytes(b"precious")
    before = files_of(store)
    make_folder(tmp_path / "a", 12, seed=1)
    assert "damaged" in one_error(cli("featurize", tmp_path / "a", "--store", store, *TINY, "--shard-size", "4"))
    assert files_of(store) == before and (tmp_path / "victim.h5").read_bytes() == b"precious"
    r = cli("store", "validate", store)
    assert r.exit_code == 1 and "problem:" in r.output and "Traceback" not in r.output, r.output
    one_error(cli("store", "info", store))


# -- integrity --------------------------------------------------------------------------------------
def test_flipping_a_label_from_fake_to_real_fails_validate(tmp_path):
    store = tmp_path / "s"
    write_synthetic_store(store, 40, D, shard_size=20)
    assert cli("store", "validate", store).exit_code == 0
    shard = store / schema.SHARD_DIR / manifest(store)["shards"][0]["name"]
    data = shard.read_bytes()
    at = next(i for i in range(len(data)) if data.startswith(b"fake", i) and data[i - 1:i] != b"/")  # not a path
    shard.write_bytes(data[:at] + b"real" + data[at + 4:])
    with StoreReader(store) as rd:  # the edit really turned a fake row into a real one
        assert (rd.metadata([schema.LABEL])[schema.LABEL] == "real").sum() == 21
    r = cli("store", "validate", store)
    assert r.exit_code == 1 and "sha256" in r.output, r.output


@pytest.mark.parametrize("edit", ["n_images", "embed_dim"])
def test_readers_check_the_manifest_against_the_shards(tmp_path, edit):
    store = tmp_path / "s"
    write_synthetic_store(store, 40, D, shard_size=20)
    m = manifest(store)
    if edit == "n_images":
        m["shards"][0]["n_images"] -= 5
        m["counts"]["n_images"] -= 5
        m["counts"]["n_ok"] -= 5
    else:
        m["embed_dim"] = D // 2
        m["compat"]["embed_dim"] = D // 2
    put_manifest(store, m)
    assert edit in one_error(cli("store", "index", store))
    assert edit in one_error(cli("neighbors", store, "3"))
    assert cli("store", "validate", store).exit_code == 1


def _two_stores(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_synthetic_store(a, 60, D, shard_size=30, seed=1)
    write_synthetic_store(b, 60, D, shard_size=30, seed=2)
    for s in (a, b):
        assert cli("store", "index", s).exit_code == 0
    return a, b


def _exact_rows(store, row: int) -> list[int]:
    with StoreReader(store) as rd:
        emb = rd.read(schema.IMAGE_EMB)
        ok = rd.select()
    sims = emb[ok] @ emb[row]
    order = [int(ok[i]) for i in np.argsort(-sims, kind="stable") if ok[i] != row]
    return order[:5]


@pytest.mark.parametrize("damage", ["foreign", "reordered", "garbage"])
def test_a_stale_foreign_or_damaged_index_is_refused_and_neighbors_searches_exactly(tmp_path, damage):
    a, b = _two_stores(tmp_path)
    ix = b / schema.INDEX_DIR
    if damage == "foreign":  # same size, same shard names and counts: only the contents differ
        for p in (a / schema.INDEX_DIR).iterdir():
            shutil.copy(p, ix / p.name)
    elif damage == "reordered":
        rows_file = next(ix.glob("image-flat.*.rows.npy"))  # the build's own name (issue 21)
        rows = np.load(rows_file)
        np.save(rows_file, rows[::-1].copy())
    else:
        faiss_file = next(ix.glob("image-flat.*.faiss"))
        faiss_file.write_bytes(b"\0" * faiss_file.stat().st_size)
    r = cli("neighbors", b, "0", "-k", "5", "--json")
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    res = json.loads(r.stdout)
    assert res["method"] == "exact" and "not using the index" in res["warnings"][0]
    assert [h["row"] for h in res["neighbors"]] == _exact_rows(b, 0)
    r = cli("neighbors", b, "0", "-k", "5")
    assert "warning: not using the index" in r.output
    if damage != "foreign":
        r = cli("store", "validate", b)
        assert r.exit_code == 1 and "index image-flat.json" in r.output, r.output
    else:
        r = cli("store", "validate", b)
        assert "index image-flat.json: stale or foreign" in r.output, r.output


def test_index_build_takes_a_lock_that_featurize_and_other_builds_respect(tmp_path):
    from item.store.locks import IndexLock

    store = tmp_path / "s"
    write_synthetic_store(store, 20, D)
    with IndexLock(store):
        assert "another `item store index` is running" in one_error(cli("store", "index", store))
        make_folder(tmp_path / "a", 2)
        assert "another process is using it" in one_error(
            cli("featurize", tmp_path / "a", "--store", store, *TINY, "--overwrite"))
    assert cli("store", "index", store).exit_code == 0


# -- memory: metadata read when asked -----------------------------------------------------------------
def test_select_and_neighbors_do_not_read_every_metadata_column(tmp_path):
    from item.store import StoreWriter
    from item.store.synthetic import synthetic_compat, synthetic_records

    store = tmp_path / "s"
    with StoreWriter(store, compat=synthetic_compat(D, 8), models={}, recipe="hierarchical", shard_size=500) as w:
        for rec in synthetic_records(1500, D):
            rec.caption = "long caption " * 400  # about 5 kB a row, 7.5 MB in all
            w.add(rec)
    with StoreReader(store) as rd:
        tracemalloc.start()
        rows = rd.select(label="fake", split="train")
        rd.metadata([schema.PATH], rows=rows[:10])
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert rows.size > 100
    assert peak < 3_000_000, peak  # the captions (7.5 MB) were never read


# -- shared folders: symlinks and modes -----------------------------------------------------------
def test_a_planted_lock_symlink_is_refused_and_files_are_group_readable(tmp_path):
    make_folder(tmp_path / "a", 4)
    victim = tmp_path / "victim.txt"
    victim.write_text("do not truncate me")
    store = tmp_path / "s"
    store.mkdir()
    (store / schema.LOCK_FILE).symlink_to(victim)
    assert "symbolic link" in one_error(cli("featurize", tmp_path / "a", "--store", store, *TINY))
    assert victim.read_text() == "do not truncate me"
    old = os.umask(0o022)
    try:
        store2 = tmp_path / "s2"
        assert cli("featurize", tmp_path / "a", "--store", store2, *TINY).exit_code == 0
        assert cli("store", "index", store2).exit_code == 0
        r = cli("train", store2, "--out", tmp_path / "head", "--kind", "logistic", "--train-split", "",
                "--val-fraction", "0.5")
        assert r.exit_code == 0, r.output
    finally:
        os.umask(old)
    made = [store2 / schema.MANIFEST, *(store2 / schema.SHARD_DIR).iterdir(), *(store2 / schema.INDEX_DIR).iterdir(),
            *(tmp_path / "head").iterdir()]
    assert {oct(p.stat().st_mode & 0o777) for p in made} == {"0o644"}


# -- folder discovery through symlinks -------------------------------------------------------------
def test_symlinked_folders_are_labelled_where_they_are_listed(tmp_path):
    from item.featurize.inputs.discover import discover

    src = tmp_path / "data"
    for name in ("real/a.png", "fake/b.png", "shared_nature/n.png"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(src / name)
    (src / "fake" / "more").symlink_to(src / "real")  # a link inside fake/ to real/
    for gen in ("gen_a", "gen_b"):  # GenImage-style: generators sharing one nature folder
        (src / gen / "ai").mkdir(parents=True)
        Image.new("RGB", (8, 8), (1, 2, 3)).save(src / gen / "ai" / f"{gen}.png")
        (src / gen / "nature").symlink_to(src / "shared_nature")
    (src / "real" / "loop").symlink_to(src)
    d = discover([str(src)])
    got = {os.path.relpath(r.path, src): (r.label, r.generator) for r in d.rows}
    assert got["real/a.png"] == ("real", "unknown") and got["fake/more/a.png"] == ("fake", "unknown")
    assert got["gen_a/nature/n.png"] == ("real", "gen_a") and got["gen_b/nature/n.png"] == ("real", "gen_b")
    assert any("symlink loop" in p for p in d.problems)
    assert not any("loop" in k for k in got)


# -- terminal escapes -----------------------------------------------------------------------------
def test_control_characters_in_file_names_never_reach_the_terminal(tmp_path):
    d = tmp_path / "in" / "1_fake"
    d.mkdir(parents=True)
    evil = "x\x1b]0;pwned\x07\x1b[2J.png"
    Image.new("RGB", (16, 16), (9, 9, 9)).save(d / evil)
    (d / "bad\x1b[31m.png").write_bytes(b"")
    Image.new("RGB", (16, 16), (9, 9, 8)).save(d / "plain.png")
    store = tmp_path / "s"
    r = cli("featurize", tmp_path / "in", "--store", store, *TINY)
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.output and "\x07" not in r.output and "\\x1b" in r.output
    r = cli("neighbors", store, "1")  # plain.png: its neighbour is the evil name
    assert r.exit_code == 0 and "\x1b" not in r.output and "\\x1b]0;pwned" in r.output, r.output
    r = cli("store", "export", store, "--out", tmp_path / "m.csv")
    assert r.exit_code == 0 and evil in (tmp_path / "m.csv").read_text()  # files keep the name as it is


# -- head loading ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def head_and_images(tmp_path_factory):
    base = tmp_path_factory.mktemp("head")
    make_folder(base / "in", 8)
    store, head = base / "s", base / "head"
    assert cli("featurize", base / "in", "--store", store, *TINY).exit_code == 0
    r = cli("train", store, "--out", head, "--kind", "logistic", "--train-split", "", "--val-fraction", "0.5")
    assert r.exit_code == 0, r.output
    return head, base / "in"


def _edited_head(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    info = json.loads((dst / "head.json").read_text())
    for k, v in changes.items():
        if isinstance(v, dict):
            info[k] = {**info.get(k, {}), **v}
        else:
            info[k] = v
    (dst / "head.json").write_text(json.dumps(info))
    return dst


@pytest.mark.parametrize("threshold", [float("nan"), "0.5x", 7])
def test_a_bad_threshold_is_refused_in_one_line(head_and_images, tmp_path, threshold):
    head, images = head_and_images
    bad = _edited_head(head, tmp_path / "h", threshold=threshold)
    assert "threshold" in one_error(cli("predict", images, "--head", bad))


def test_a_head_cannot_name_a_local_model_the_user_did_not_pass(head_and_images, tmp_path):
    head, images = head_and_images
    planted = tmp_path / "planted.pt"
    planted.write_bytes(b"not weights")
    bad = _edited_head(head, tmp_path / "h", compat={"clip_pretrained": str(planted)})
    assert "--model-path" in one_error(cli("predict", images, "--head", bad))
    bad2 = _edited_head(head, tmp_path / "h2", compat={"captioner": str(tmp_path)})
    assert "--model-path" in one_error(cli("predict", images, "--head", bad2))
    bad3 = _edited_head(head, tmp_path / "h3")
    info = json.loads((bad3 / "head.json").read_text())
    target = info["models"]["spec"] if isinstance(info["models"].get("spec"), dict) else info["models"]["grounder"]
    target["box_threshold"] = "x"
    (bad3 / "head.json").write_text(json.dumps(info))
    assert "box_threshold" in one_error(cli("predict", images, "--head", bad3))
    # passing the path allows it: then the file itself is what fails, in one line
    one_error(cli("predict", images, "--head", bad, "--model-path", planted))
    assert cli("predict", images, "--head", head).exit_code == 0


def test_dependency_floors_load_weights_without_pickles():
    import re
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    floors = dict(re.findall(r'"(torch|open_clip_torch|transformers)>=([0-9.]+)"', text))
    as_tuple = {k: tuple(int(x) for x in v.split(".")) for k, v in floors.items()}
    assert as_tuple["torch"] >= (2, 6) and as_tuple["open_clip_torch"] >= (3, 3) and as_tuple["transformers"] >= (5, 0)
    src = "\n".join(p.read_text() for p in (Path(__file__).resolve().parents[1] / "item").rglob("*.py"))
    assert "trust_remote_code=True" not in src
