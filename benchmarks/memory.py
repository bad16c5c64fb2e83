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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--max-objects", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=4096)
    ap.add_argument("--work", default="/tmp/item-memory")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    work = Path(args.work)
    store = work / f"store-{args.n}-{args.dim}"
    if not (store / "manifest.json").exists():
        from item.store.synthetic import write_synthetic_store

        t = time.time()
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
                                          "--head", "logistic"],
             f"features of the train rows: ~0.6 n x {args.dim + 1} float32 = "
             f"{0.6 * args.n * (args.dim + 1) * 4 / 2**20:.0f} MiB (in memory; streaming is issue 11's)")):
        r = peak(item + cmd)
        r.update(name=name, inherent=inherent)
        print(json.dumps(r), flush=True)
        results.append(r)
    (work / "index").exists()
    import shutil

    shutil.rmtree(store / "index", ignore_errors=True)
    r = peak(item + ["neighbors", str(store), "0"])
    r.update(name="neighbors (exact, no index)", inherent="one chunk of 65536 vectors")
    print(json.dumps(r), flush=True)
    results.append(r)
    write_result(args.out, "memory", NOTE, results, n=args.n, dim=args.dim, store_bytes=size)


if __name__ == "__main__":
    main()
