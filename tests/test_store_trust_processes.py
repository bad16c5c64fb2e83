"""Issue 10 with real processes and real file systems: a killed featurize leaves nothing running and
nothing locked; a full disk, a read-only store and I/O errors are one line, exit 1, the store
unchanged and no temporary file left, for featurize, index, train, report and export.

The file-system cases mount a small tmpfs (root with CAP_SYS_ADMIN); elsewhere they are skipped and
the injected faults (item/faults.py) still run."""

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
from item.store import StoreReader, schema, validate
from item.store.synthetic import write_synthetic_store

pytestmark = pytest.mark.slow

TINY = ["--models", "tiny-random", "--batch-size", "4"]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error(text: str, rc: int) -> str:
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert rc == 1 and len(errors) == 1 and "Traceback" not in text, text
    return errors[0]


def make_folder(folder: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        lab = "0_real" if i % 2 else "1_fake"
        (folder / lab).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, size=(40, 48, 3), dtype=np.uint8)).save(folder / lab / f"{i:03d}.png")


def env(fault=None) -> dict:
    e = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    e.pop("ITEM_FAULT", None)
    if fault:
        e["ITEM_FAULT"] = fault
    return e


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith((".tmp", ".partial", ".new"))]


def test_a_killed_featurize_leaves_no_worker_and_no_lock(tmp_path):
    make_folder(tmp_path / "in", 24)
    store = tmp_path / "s"
    # Two decoding workers; the run pauses after its second batch, workers alive and prefetching.
    p = subprocess.Popen([sys.executable, "-m", "item", "featurize", str(tmp_path / "in"), "--store", str(store),
                          *TINY, "--workers", "2", "--shard-size", "4"], env=env("batch:2:sleep=60"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (store / schema.MANIFEST).exists() or \
                json.loads((store / schema.MANIFEST).read_text())["counts"]["n_images"] < 4:
            assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.poll() is not None else ""
            time.sleep(0.1)
        time.sleep(1.0)
        workers = children(p.pid)
        assert len(workers) >= 2, workers
    finally:
        p.send_signal(signal.SIGKILL)
        # an orphaned worker would hold the pipes open (and the lock): do not wait for it forever
        p.communicate(timeout=60)
    # resume at once, with --overwrite: it needs the store to itself, so an orphan holding a lock refuses it
    r = subprocess.run([sys.executable, "-m", "item", "featurize", str(tmp_path / "in"), "--store", str(store),
                        *TINY, "--workers", "0", "--shard-size", "4", "--overwrite"], env=env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 10
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [w for w in workers if alive(w)], "a decoding worker outlived its killed run"
    with StoreReader(store) as rd:
        assert rd.n_images == 24


# -- small file systems ------------------------------------------------------------------------------
@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "fs"
    mnt.mkdir()
    mounted = []

    def mount(size: str, options: str = "") -> Path:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}{options}", "tmpfs", str(mnt)],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); needs root with "
                        "CAP_SYS_ADMIN")
        mounted.append(mnt)
        return mnt

    yield mount
    for m in mounted:
        subprocess.run(["umount", "-l", str(m)], capture_output=True)


def fill(folder: Path) -> None:
    """Leave almost no free space on folder's file system."""
    try:
        with open(folder / "filler", "wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
    except OSError:
        pass
    if (folder / "filler").exists():
        os.truncate(folder / "filler", max(0, (folder / "filler").stat().st_size - 2048))


def test_featurize_on_a_full_disk_is_one_line_and_the_store_stays_valid(tmp_path, small_fs):
    make_folder(tmp_path / "in", 40)
    fs = small_fs("160k")
    store = fs / "s"
    r = subprocess.run([sys.executable, "-m", "item", "featurize", str(tmp_path / "in"), "--store", str(store),
                        *TINY, "--workers", "0", "--shard-size", "4"], env=env(), capture_output=True, text=True,
                       timeout=600)
    assert "No space left on device" in one_error(r.stderr, r.returncode)  # not a segfault (exit 139)
    rep = validate(store)
    assert rep.ok, rep.problems
    assert not leftovers(store)
    with StoreReader(store) as rd:
        assert 0 < rd.n_images < 40


def test_index_train_report_export_on_a_full_disk(tmp_path, small_fs):
    store = tmp_path / "s"
    write_synthetic_store(store, 400, 64, shard_size=200)
    fs = small_fs("8m")
    # index: the store itself on the full file system
    shutil_copy(store, fs / "s")
    fill(fs)
    def listing():  # lock files aside: taking a lock may create its (empty) file
        return sorted((p.name, p.stat().st_size) for p in (fs / "s").rglob("*")
                      if p.is_file() and not p.name.endswith(".lock"))

    before = listing()
    r = cli("store", "index", fs / "s")
    assert "No space left on device" in one_error(r.output, r.exit_code)
    assert listing() == before and not leftovers(fs) and not (fs / "s" / "index").exists()
    assert validate(fs / "s").ok
    # train, report, export: outputs on the full file system
    r = cli("train", store, "--out", tmp_path / "head", "--kind", "logistic", "--recipe", "global")
    assert r.exit_code == 0, r.output
    for args in (["train", store, "--out", fs / "head", "--kind", "logistic", "--recipe", "global"],
                 ["report", store, "--head", tmp_path / "head", "--out", fs / "report.html"],
                 ["store", "export", store, "--out", fs / "meta.csv"]):
        r = cli(*args)
        assert "No space left on device" in one_error(r.output, r.exit_code), args
        assert not leftovers(fs), args
        assert not (fs / "report.html").exists() and not (fs / "meta.csv").exists()
        assert not (fs / "head" / "head.json").exists()


def test_a_read_only_store_is_one_line(tmp_path, small_fs):
    make_folder(tmp_path / "in", 8)
    fs = small_fs("8m")
    store = fs / "s"
    assert cli("featurize", tmp_path / "in", "--store", store, *TINY, "--workers", "0").exit_code == 0
    before = {p.name: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
    make_folder(tmp_path / "in", 12)
    r = cli("featurize", tmp_path / "in", "--store", store, *TINY, "--workers", "0")
    assert "Read-only file system" in one_error(r.output, r.exit_code)
    r = cli("store", "index", store)
    assert "Read-only file system" in one_error(r.output, r.exit_code)
    r = cli("store", "validate", store)  # reading needs no write access
    assert r.exit_code == 0, r.output
    assert {p.name: p.read_bytes() for p in store.rglob("*") if p.is_file()} == before


def shutil_copy(src: Path, dst: Path) -> None:
    import shutil

    shutil.copytree(src, dst)


def test_a_removed_writer_lock_lets_no_overwrite_run_under_a_live_featurize(tmp_path):
    """Issue 21, case 3, as reported: `rm STORE/writer.lock` while a featurize writes, then --overwrite."""
    folder, store = tmp_path / "imgs", tmp_path / "s"
    make_folder(folder, 16)
    args = [sys.executable, "-m", "item", "featurize", str(folder), "--store", str(store), *TINY, "--workers", "0",
            "--shard-size", "4"]
    # the writer sleeps after its second batch (two shards committed), holding its locks
    first = subprocess.Popen(args, env=env("batch:2:sleep=15"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.monotonic() + 240
        while not (store / schema.MANIFEST).exists() or not json.loads((store / schema.MANIFEST).read_text())["shards"]:
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        (store / schema.LOCK_FILE).unlink()
        over = subprocess.run(args + ["--overwrite"], env=env(), capture_output=True, text=True, timeout=300)
        assert "still running" in one_error(over.stderr, over.returncode)
        with StoreReader(store) as rd:
            kept = rd.n_images
        assert kept >= 4
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    # the first run found its writer.lock replaced: it stops with an error instead of claiming rows
    assert first.returncode == 1 and "removed or replaced" in err and "written" not in err.splitlines()[-1], err
    with StoreReader(store) as rd:
        assert rd.n_images >= kept  # nothing it committed was lost
    assert validate(store).ok
    rerun = subprocess.run(args, env=env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    with StoreReader(store) as rd:
        assert rd.n_images == 16
