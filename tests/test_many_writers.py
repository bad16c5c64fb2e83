"""Issue 11, part 2: several `item featurize` processes fill one store at once (per-writer shard names,
commits under a short lock, every writer's ids known). Real processes, tiny-random models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from item.cli import app
from item.store import StoreReader, schema, validate

pytestmark = pytest.mark.slow

ARGS = ["--models", "tiny-random", "--workers", "0", "--batch-size", "4", "--shard-size", "4"]


def images(folder: Path, n: int, seed: int) -> set[str]:
    rng = np.random.default_rng(seed)
    out = set()
    for i in range(n):
        lab = "0_real" if i % 2 else "1_fake"
        p = folder / lab / f"{seed}-{i:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, size=(20 + i % 7, 24, 3), dtype=np.uint8)).save(p)
        out.add(str(p))
    return out


def start(src, store, fault=None) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("ITEM_FAULT", None)
    if fault:
        env["ITEM_FAULT"] = fault
    return subprocess.Popen([sys.executable, "-m", "item", "featurize", *map(str, src), "--store", str(store),
                             *ARGS], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_together(*jobs) -> None:
    # Each writer pauses after its first batch, so both are open and committing at the same time.
    procs = [start(src, store, fault="batch:1:sleep=4") for src, store in jobs]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err


def stored_paths(store) -> tuple[list[str], list[str], list[str]]:
    with StoreReader(store) as r:
        meta = r.metadata([schema.ID, schema.PATH])
        al = r.aliases()
    return list(meta[schema.ID]), list(meta[schema.PATH]), list(al[schema.ALIAS_PATH])


def writers_of(store) -> set[str]:
    return {e.get("writer") for e in json.loads((Path(store) / schema.MANIFEST).read_text())["shards"]}


def test_two_processes_fill_one_store(tmp_path):
    a = images(tmp_path / "a", 10, 1)
    b = images(tmp_path / "b", 10, 2)
    store = tmp_path / "s"
    # 1. disjoint inputs, at once
    run_together(([tmp_path / "a"], store), ([tmp_path / "b"], store))
    assert validate(store).ok, validate(store).problems
    ids, paths, aliases = stored_paths(store)
    assert sorted(paths) == sorted(a | b) and len(set(ids)) == len(ids) == 20 and not aliases
    assert len(writers_of(store)) == 2  # both processes committed shards under their own names
    # 2. overlapping inputs, at once: c is given to both, and each also redoes the other's old folder
    c = images(tmp_path / "c", 10, 3)
    run_together(([tmp_path / "c", tmp_path / "a"], store), ([tmp_path / "b", tmp_path / "c"], store))
    rep = validate(store)
    assert rep.ok, rep.problems
    ids, paths, aliases = stored_paths(store)
    assert sorted(paths) == sorted(a | b | c), "every input once"
    assert len(ids) == len(set(ids)) == 30 and not aliases
    names = [e["name"] for e in json.loads((store / schema.MANIFEST).read_text())["shards"]]
    assert len(names) == len(set(names))
    assert not list((store / schema.SHARD_DIR).glob("*.partial"))
    assert not list((store / schema.WRITERS_DIR).glob("*.lock"))  # both writers gone, their notes too
    r = CliRunner().invoke(app, ["store", "validate", str(store)])
    assert r.exit_code == 0, r.output
