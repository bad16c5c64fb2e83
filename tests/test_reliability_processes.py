"""Crash safety with real processes: SIGKILL at named moments (ITEM_FAULT, see item/faults.py) and at a
random time, resume, and compare with an uninterrupted run; an --overwrite refused while a writer works;
a reader polling a store while it is written.

Each `item featurize` process pays about 10 s of imports, so one image set and one chain of kills on
one store are shared.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from item.cli import app
from item.errors import StoreError
from item.store import StoreReader, schema

pytestmark = pytest.mark.slow

N_IMAGES = 64
SHARD, BATCH = 12, 8  # not a multiple: shards still end between batches, so a resumed run sees the same batches
ROWS = -(-SHARD // BATCH) * BATCH  # rows in each full shard: 16
ARGS = ["--models", "tiny-random", "--workers", "0", "--batch-size", str(BATCH), "--shard-size", str(SHARD)]
VECTORS = (schema.IMAGE_EMB, schema.CAPTION_EMB, schema.MISALIGNMENT)


def make_images(folder: Path) -> None:
    rng = np.random.default_rng(5)
    for i in range(N_IMAGES):
        lab = "0_real" if i % 2 else "1_fake"
        w, h = 24 + (i * 7) % 41, 24 + (i * 5) % 25
        p = folder / lab / f"{i:04d}.{'png' if i % 3 else 'jpg'}"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)).save(p)
    (folder / "1_fake" / "0000-copy.jpg").write_bytes((folder / "1_fake" / "0000.jpg").read_bytes())  # an alias
    (folder / "0_real" / "0005-empty.png").write_bytes(b"")  # a skipped row


def env(fault: str | None = None) -> dict:
    # One thread: a multi-threaded CPU reduction may sum in a different order from run to run, and once
    # (of several runs) it flipped a near-threshold random box between two processes.
    e = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    e.pop("ITEM_FAULT", None)
    if fault:
        e["ITEM_FAULT"] = fault
    return e


def start(*args, fault=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "item", *map(str, args)], env=env(fault),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def featurize(src, store, fault=None, timeout=300) -> tuple[int, str]:
    p = start("featurize", src, "--store", store, *ARGS, fault=fault)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, err


def snapshot(store) -> dict:
    """Everything a reader sees: metadata, vectors, objects, aliases, counts."""
    with StoreReader(store) as rd:
        return {"meta": rd.metadata(), "vec": {c: rd.read(c) for c in VECTORS}, "obj": rd.objects(),
                "aliases": rd.aliases(), "counts": rd.counts, "n_shards": len(rd.shards)}


def assert_prefix_of(got: dict, ref: dict) -> int:
    """The rows a reader sees are the reference's first rows, bit for bit; returns how many."""
    n = len(got["meta"][schema.ID])
    assert len(set(got["meta"][schema.ID])) == n, "an image row appears twice"
    for c, col in got["meta"].items():
        assert np.array_equal(col, ref["meta"][c][:n]), c
    n_obj = len(got["obj"][schema.NOUN])
    pairs = [(c, got["vec"][c], ref["vec"][c][:n]) for c in VECTORS] + \
        [(c, col, ref["obj"][c][:n_obj]) for c, col in got["obj"].items()]
    for c, a, b in pairs:
        if a.dtype.kind == "O":
            assert np.array_equal(a, b), c
        else:
            assert a.shape == b.shape and a.tobytes() == b.tobytes(), c
    return n




def assert_valid(store) -> None:
    r = CliRunner().invoke(app, ["store", "validate", str(store)])
    assert r.exit_code == 0, r.output


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    make_images(folder)
    return folder


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory):
    # A process like the resumed ones, not this one: with random weights, greedy captioning sits on near
    # ties that a different thread or memory layout of this test process can flip.
    store = tmp_path_factory.mktemp("ref") / "s"
    rc, err = featurize(images, store)
    assert rc == 0, err
    snap = snapshot(store)
    assert len(snap["meta"][schema.ID]) == N_IMAGES + 1 and len(snap["aliases"][schema.ALIAS_PATH]) == 1
    assert snap["counts"]["skipped_by_reason"] == {"empty-file": 1}
    return snap


def test_kill_and_resume_matches_uninterrupted_run(images, reference, tmp_path):
    store = tmp_path / "s"
    seen = 0

    def after_kill(rc, err, expect_rows=None):
        nonlocal seen
        assert rc == -signal.SIGKILL, err
        assert_valid(store)
        n = assert_prefix_of(snapshot(store), reference)
        assert n >= seen  # what was committed stays committed
        if expect_rows is not None:
            assert n == expect_rows
        seen = n

    # 1. killed between the new store's first manifest temp file and its os.replace: no store yet
    rc, err = featurize(images, store, fault="manifest-tmp:1")
    assert rc == -signal.SIGKILL, err
    assert not (store / schema.MANIFEST).exists()
    with pytest.raises(StoreError, match="empty store \\(interrupted before the first commit\\)"):
        StoreReader(store)
    # 2. inside a batch: batch 3's rows are buffered (not written), batch 4 is encoded
    rc, err = featurize(images, store, fault="batch:4")
    after_kill(rc, err, expect_rows=ROWS)
    # 3. while a shard is closed: the .partial file is complete, not renamed
    rc, err = featurize(images, store, fault="shard-written:1")
    assert list((store / schema.SHARD_DIR).glob("*.partial"))
    after_kill(rc, err, expect_rows=ROWS)
    # 4. the shard is renamed but the manifest does not list it yet: readers must not see it
    rc, err = featurize(images, store, fault="shard-renamed:1")
    assert len(list((store / schema.SHARD_DIR).glob("shard-*.h5"))) == 2
    after_kill(rc, err, expect_rows=ROWS)
    # 5. the orphan is adopted (manifest write 1), the next shard's manifest replace is killed (write 2)
    rc, err = featurize(images, store, fault="manifest-tmp:2")
    after_kill(rc, err, expect_rows=2 * ROWS)
    assert list(store.glob(".manifest.json.*.tmp"))
    # 6. at a random moment after the resumed run commits a new shard
    p = start("featurize", images, "--store", store, *ARGS)
    deadline = time.monotonic() + 240
    before = json.loads((store / schema.MANIFEST).read_text())["counts"]["n_images"]
    while json.loads((store / schema.MANIFEST).read_text())["counts"]["n_images"] <= before:
        assert p.poll() is None and time.monotonic() < deadline, p.stderr.read()
        time.sleep(0.05)
    time.sleep(float(np.random.default_rng(int(time.time())).uniform(0, 1.5)))
    p.send_signal(signal.SIGKILL)
    _, err = p.communicate()
    after_kill(p.returncode, err)
    assert seen > 2 * ROWS
    # 7. the last resume completes: the same rows, metadata, aliases and embeddings as one uninterrupted run
    rc, err = featurize(images, store)
    assert rc == 0, err
    assert_valid(store)
    got = snapshot(store)
    assert assert_prefix_of(got, reference) == N_IMAGES + 1
    assert len(got["obj"][schema.NOUN]) == len(reference["obj"][schema.NOUN])
    for c, col in got["aliases"].items():
        assert np.array_equal(col, reference["aliases"][c]), c
    for k in ("n_images", "n_ok", "n_skipped", "n_objects", "n_grounded", "n_aliases", "skipped_by_reason"):
        assert got["counts"][k] == reference["counts"][k], k
    assert not list(store.glob(".manifest.json.*.tmp"))
    assert not list((store / schema.SHARD_DIR).glob("*.partial"))
    # 8. an index killed after its .faiss file, before its sidecar: no index is visible, the store is valid
    p = start("store", "index", store, fault="index-written:1")
    _, err = p.communicate(timeout=300)
    assert p.returncode == -signal.SIGKILL, err
    assert_valid(store)
    from item.store import StoreIndex, build_index

    with pytest.raises(StoreError, match="no  ?index|no index"):
        StoreIndex(store, on="image")
    build_index(store, on="image", kind="flat")
    ix = StoreIndex(store, on="image")
    try:
        ok = np.nonzero(got["meta"][schema.STATUS] == "ok")[0]
        scores, _ = ix.search(got["vec"][schema.IMAGE_EMB][ok[:5]], k=1)
        assert np.all(scores[:, 0] > 0.999)  # each stored image finds itself (or an equal vector)
        assert ix.index.ntotal == got["counts"]["n_ok"] == ok.size
    finally:
        ix.close()
    assert_valid(store)


def test_overwrite_is_refused_while_a_writer_works_and_readers_see_whole_shards(images, tmp_path):
    store = tmp_path / "s"
    small = ["--shard-size", str(BATCH)]
    # the writer sleeps 10 s after its third batch, holding the lock: time for a second writer to try
    p = start("featurize", images, "--store", store, *ARGS, *small, fault="batch:3:sleep=10")
    deadline = time.monotonic() + 240
    last, polls, refused = 0, 0, None
    try:
        while p.poll() is None:
            assert time.monotonic() < deadline
            if not (store / schema.MANIFEST).exists():
                time.sleep(0.05)
                continue
            with StoreReader(store) as rd:  # never fails, never sees a half-written shard
                ids = rd.metadata([schema.ID])[schema.ID]
                emb = rd.read(schema.IMAGE_EMB)
                n = rd.n_images
                assert len(ids) == n == rd.counts["n_images"] == len(set(ids))
                assert (n % BATCH == 0 or n == N_IMAGES + 1) and n >= last
                assert np.isfinite(emb).all()
                last = n
                polls += 1
            if refused is None and last >= 2 * BATCH:
                t = time.monotonic()
                r = CliRunner().invoke(app, ["featurize", str(images), "--store", str(store), *ARGS, *small,
                                             "--overwrite"])
                refused = (r, time.monotonic() - t, p.poll())
            time.sleep(0.02)
    finally:
        if p.poll() is None:
            p.kill()
    out, err = p.communicate()
    assert p.returncode == 0, err
    assert refused is not None, "the first writer finished before a second one could try"
    r, seconds, first_state = refused
    assert r.exit_code == 1, r.output
    assert "another process is using it" in r.output and f"pid {p.pid}" in r.output, r.output
    assert first_state is None  # refused while the first was still running, not after waiting for it
    assert polls >= 5
    assert_valid(store)
    with StoreReader(store) as rd:
        assert rd.n_images == N_IMAGES + 1
