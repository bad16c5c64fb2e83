"""Peak memory (RSS) of the store's commands as the store grows.

    python benchmarks/memory.py --n 100000 --dim 768 --work /tmp/mem --out r.json

Writes (or reuses) a seeded synthetic store (item.store.synthetic: clustered unit vectors of
``--dim``, 0 to --max-objects objects a row, misalignment vectors of 8) and runs each command as
its own process, reporting its peak resident memory (``ru_maxrss`` of that process alone, read by a
fresh wrapper per command). What each command must hold by its nature is noted beside it: a flat
index holds every indexed vector (n x dim float32), in-memory training holds the feature matrix.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result  # noqa: E402

NOTE = "synthetic seeded store (random weights, clustered embeddings); peak RSS of each command's process"

WRAP = ("import resource, subprocess, sys, time; t = time.time(); r = subprocess.run(sys.argv[1:], "
        "stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True); "
        "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, round(time.time() - t, 1)); "
        "sys.stderr.write(r.stderr[-2000:])")


def peak(cmd: list[str]) -> dict:
    p = subprocess.run([sys.executable, "-c", WRAP, *cmd], capture_output=True, text=True, env=dict(os.environ))
    rc, kib, secs = p.stdout.split()
    return {"command": " ".join(Path(c).name if "/" in c else c for c in cmd), "rc": int(rc),
            "peak_rss_mib": round(int(kib) / 1024, 1), "seconds": float(secs),
            "stderr_tail": p.stderr.strip().splitlines()[-1:] if int(rc) else []}


def write_fast(store: Path, n: int, dim: int, shard_size: int, seed: int = 0) -> None:
    """The same kind of store as write_synthetic_store (clustered unit vectors, one object a row, labels
    alternating, three splits), built a shard at a time from numpy arrays instead of row by row: a
    1M-row store in minutes. Written through the store's own shard encoding and commit."""
    import numpy as np

    from item.store.records import ImageRecord, ObjectRecord
    from item.store.synthetic import synthetic_compat
    from item.store.writer import StoreWriter

    compat = synthetic_compat(dim, 8)
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(64, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)

    def unit(x):
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    with StoreWriter(store, compat=compat, models={"clip": {"model": "synthetic", "random_weights": True}},
                     recipe="hierarchical", shard_size=shard_size) as w:
        for start in range(0, n, shard_size):
            m = min(shard_size, n - start)
            img = unit(centers[rng.integers(64, size=m)] + 1.4 / np.sqrt(dim) * rng.normal(size=(m, dim)))
            cap = unit(0.8 * img + 0.2 * unit(rng.normal(size=(m, dim))))
            crop = unit(img + 0.8 * unit(rng.normal(size=(m, dim))))
            noun = unit(0.8 * crop + 0.2 * unit(rng.normal(size=(m, dim))))
            mis = rng.normal(size=(m, 8)).astype(np.float32)
            split = np.array(["train", "val", "test"])[np.searchsorted([0.6, 0.8], rng.random(m), side="right")]
            recs = []
            for j in range(m):
                i = start + j
                fake = i % 2 == 1
                gen = ("gen_a", "gen_b")[(i // 2) % 2]
                recs.append(ImageRecord(
                    id=f"{seed:08x}{i:056x}", path=f"/synthetic/{gen}/{'fake' if fake else 'real'}/{i:07d}.png",
                    label="fake" if fake else "real", generator=gen, split=str(split[j]),
                    caption=f"synthetic caption {i}", caption_source="synthetic", nouns=["thing0"], width=256,
                    height=256, format="PNG", image_emb=img[j], caption_emb=cap[j], misalignment=mis[j],
                    objects=[ObjectRecord(noun="thing0", noun_emb=noun[j], box=(0.0, 0.0, 10.0, 12.0), score=0.5,
                                          crop_emb=crop[j])]))
            w.add_batch(recs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--max-objects", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=4096)
    ap.add_argument("--work", default="/tmp/item-memory")
    ap.add_argument("--out", default="")
    ap.add_argument("--fast", action="store_true", help="build the store a shard at a time from numpy arrays "
                    "(one object a row) instead of row by row")
    args = ap.parse_args()
    work = Path(args.work)
    store = work / f"store-{args.n}-{args.dim}"
    if not (store / "manifest.json").exists():
        from item.store.synthetic import write_synthetic_store

        t = time.time()
        if args.fast:
            write_fast(store, args.n, args.dim, args.shard_size)
        else:
            write_synthetic_store(store, args.n, args.dim, shard_size=args.shard_size, max_objects=args.max_objects)
        print(f"wrote {args.n} rows in {time.time() - t:.0f} s", flush=True)
    item = [sys.executable, "-m", "item"]
    size = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    results = []
    for name, cmd, inherent in (
            ("store info", ["store", "info", str(store)], "label/generator/split/status columns"),
            ("store validate --quick", ["store", "validate", str(store), "--quick"], "ids for the duplicate check"),
            ("store export", ["store", "export", str(store), "--out", str(work / "meta.csv")], "one shard's metadata"),
            ("store index (flat)", ["store", "index", str(store), "--kind", "flat"],
             f"the index: n x {args.dim} float32 = {args.n * args.dim * 4 / 2**20:.0f} MiB"),
            ("neighbors (index)", ["neighbors", str(store), "0"], "the index"),
            ("train (global, logistic)", ["train", str(store), "--out", str(work / "head"), "--recipe", "global",
                                          "--kind", "logistic"],
             f"features of the train rows: ~0.6 n x {args.dim + 1} float32 = "
             f"{0.6 * args.n * (args.dim + 1) * 4 / 2**20:.0f} MiB (in memory; streaming is issue 11's)")):
        r = peak(item + cmd)
        r.update(name=name, inherent=inherent)
        print(json.dumps(r), flush=True)
        results.append(r)
    import shutil

    shutil.rmtree(store / "index", ignore_errors=True)
    r = peak(item + ["neighbors", str(store), "0"])
    r.update(name="neighbors (exact, no index)", inherent="one chunk of 65536 vectors")
    print(json.dumps(r), flush=True)
    results.append(r)
    write_result(args.out, "memory", NOTE, results, n=args.n, dim=args.dim, store_bytes=size)


if __name__ == "__main__":
    main()
