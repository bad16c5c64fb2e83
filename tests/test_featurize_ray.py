"""issue 11: ``item featurize --engine ray`` on a local Ray cluster (one for this module, 2 CPUs, 2 actors).

A 60-image folder of tiny images with tiny-random models: the Ray store holds exactly the rows of a
single-process run; a driver SIGKILLed mid-job and run again completes the store, nothing lost or doubled.
"""

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

ray = pytest.importorskip("ray", reason='the ray extra is not installed (pip install -e ".[ray]")')

from item.cli import app  # noqa: E402
from item.featurize import FeaturizeConfig, featurize_store  # noqa: E402
from item.store import StoreReader, validate  # noqa: E402

# A local Ray cluster starts and the same store is featurized twice: minutes on 2 cores.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
N = 60
ARGS = ["--models", "tiny-random", "--batch-size", "4", "--shard-size", "8"]


@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    src = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(11)
    for i in range(N):
        label = "real" if i % 2 else "fake"
        arr = rng.integers(0, 255, size=(20 + i % 9, 24 + i % 5, 3), dtype=np.uint8)
        (src / label).mkdir(exist_ok=True)
        Image.fromarray(arr).save(src / label / f"{i:03d}.png")
    (src / "fake" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return src


@pytest.fixture(scope="module")
def single(folder, tmp_path_factory):
    store = tmp_path_factory.mktemp("single") / "s"
    featurize_store([folder], store, models="tiny-random",
                    config=FeaturizeConfig(workers=0, batch_size=4, shard_size=8, device="cpu"))
    return store


def rows_by_id(store):
    with StoreReader(store) as rd:
        meta = rd.metadata()
        order = np.argsort(meta["id"])
        cols = {k: v[order] for k, v in meta.items()}
        for c in ("image_emb", "caption_emb", "misalignment"):
            cols[c] = rd.read(c)[order]
        objs = rd.objects(order)
    return cols, objs


def assert_same_rows(a, b):
    (ma, oa), (mb, ob) = rows_by_id(a), rows_by_id(b)
    assert len(ma["id"]) == len(set(ma["id"])) == N + 1  # every input once (the broken file as a skipped row)
    for col in ("id", "path", "label", "split", "status", "reason", "caption", "caption_source", "nouns",
                "width", "height", "format"):
        assert list(ma[col]) == list(mb[col]), col
    # Same batches through the same models: image and crop embeddings are the same bits.
    np.testing.assert_array_equal(ma["image_emb"], mb["image_emb"])
    for col in ("noun", "box", "grounded", "crop_emb"):
        np.testing.assert_array_equal(oa[col], ob[col], err_msg=col)
    # Texts go through each actor's own cache (other company in the text forward): float16 rounding.
    np.testing.assert_allclose(ma["caption_emb"], mb["caption_emb"], atol=2e-3, rtol=0)
    np.testing.assert_allclose(oa["noun_emb"], ob["noun_emb"], atol=2e-3, rtol=0)
    np.testing.assert_allclose(ma["misalignment"], mb["misalignment"], atol=1e-2, rtol=0)


def test_ray_engine_cli_equals_a_single_process_run(cluster, folder, single, tmp_path):
    store = tmp_path / "ray"
    r = CliRunner().invoke(app, ["featurize", str(folder), "--store", str(store), "--engine", "ray",
                                 "--ray-actors", "2", *ARGS, "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["n_written"] == N and summary["n_skipped"] == 1 and summary["device"].startswith("ray")
    assert validate(store).ok
    manifest = json.loads((store / "manifest.json").read_text())
    # shards end between batches of 4 once 8 rows are in: two batches a shard (the last may hold fewer)
    assert all(s["n_images"] <= 8 for s in manifest["shards"]) and len(manifest["shards"]) >= 7
    assert manifest["runs"][-1]["engine"] == "ray"
    assert_same_rows(store, single)


def test_driver_killed_mid_job_then_rerun_completes_the_store(cluster, folder, single, tmp_path):
    store = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "item", "featurize", str(folder), "--store", str(store), "--engine", "ray",
           "--ray-address", cluster, "--ray-actors", "2", *ARGS]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    shards = store / "shards"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if shards.is_dir() and any(p.name.startswith("shard-") and p.suffix == ".h5" for p in shards.iterdir()):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the job ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)  # the driver, mid-job: its commit at the end never happens
    finally:
        proc.wait(timeout=60)
        proc.stderr.close()
    with StoreReader(store) as rd:
        assert rd.n_images < N + 1
    written = [p for p in shards.iterdir() if p.name.startswith("shard-") and p.suffix == ".h5"]
    assert written  # complete shard files that no manifest lists yet
    r = CliRunner().invoke(app, ["featurize", str(folder), "--store", str(store), "--engine", "ray",
                                 "--ray-address", cluster, "--ray-actors", "2", *ARGS, "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["n_already_done"] > 0  # the killed job's finished shards were adopted, not redone
    assert summary["n_already_done"] + summary["n_written"] + summary["n_skipped"] == N + 1
    assert validate(store).ok
    assert_same_rows(store, single)
