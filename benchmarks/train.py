"""Training speed and quality: heads fitted on N rows of a synthetic store, validation AUROC beside the time.

    python benchmarks/train.py --rows 100000 --threads 2 --reps 3 --out r.json            # in process
    python benchmarks/train.py --rows 100000 --code /work/main --out base.json             # another tree's heads
    python benchmarks/train.py --rows 1000000 --cli --heads mlp --max-memory 2G --out r.json   # `item train`

The store (``--store-dir``, written once and reused) is ``item.store.synthetic.write_synthetic_store_fast``:
64 clusters on the sphere, 0-4 objects an image, fakes less aligned with their caption and nouns
(``--signal``) with a per-image and per-object jitter of the alignment (``--align-spread``) so that the
classes overlap and the validation AUROC means something (with no jitter every head scores 1.0), and each
row's misalignment computed by item.misalignment under the recipe. RANDOM: no model, synthetic embeddings.

In process: the head is fitted on the store's train and test splits and early-stopped / scored on its val
split (so "rows" counts both); wall seconds, CPU seconds of the process (user + sys) and the 1-minute load
average before and after each fit are recorded, because the machine may be shared. ``--code DIR`` imports
``item`` from another checkout (e.g. main) to measure its heads on the same store in the same session.

``--cli``: one ``python -m item train`` process per repetition (the train split trains, val early-stops and
scores), peak RSS of that process (ru_maxrss), wall seconds, and the AUROC it reports.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result  # noqa: E402

NOTE = "synthetic seeded embeddings (no model, RANDOM): AUROC measures the head on this synthetic task only"


def ensure_store(path: Path, n: int, embed_dim: int, recipe: str, signal: float, spread: float, log) -> float:
    marker = path / "bench.json"  # written after the store: its presence means a complete store
    want = {"rows": n, "embed_dim": embed_dim, "recipe": recipe, "signal": signal, "align_spread": spread}
    if marker.exists() and json.loads(marker.read_text()) == want:
        log(f"reusing store {path} ({n} rows)")
        return 0.0
    import shutil

    # item is imported from this checkout only to write the store (a later --code import needs a fresh process)
    sys.path.insert(0, str(ROOT))
    from item.store.synthetic import write_synthetic_store_fast

    shutil.rmtree(path, ignore_errors=True)
    t = time.perf_counter()
    write_synthetic_store_fast(path, n, embed_dim, recipe=recipe, signal=signal, align_spread=spread,
                               shard_size=16384, log=log if n >= 200_000 else None)
    s = time.perf_counter() - t
    marker.write_text(json.dumps(want))
    log(f"wrote store {path}: {n} rows in {s:.1f} s")
    return s


def in_process(args, store: Path, log) -> dict:
    code = Path(args.code).resolve() if args.code else ROOT
    sys.path.insert(0, str(code))
    import torch
    from sklearn.metrics import roc_auc_score

    import item
    from item.classify.features import store_features
    from item.classify.heads import HeadConfig, make_head
    from item.store import StoreReader

    assert Path(item.__file__).resolve().is_relative_to(code), item.__file__
    torch.set_num_threads(args.threads)
    cache = Path(args.features) if args.features else None
    t = time.perf_counter()
    if cache is not None and (cache / "y_val.npy").exists():
        # features read earlier by another checkout (an older one cannot open a newer store schema)
        X, Xv, y, yv = (np.load(cache / f"{k}.npy") for k in ("X", "X_val", "y", "y_val"))
        source = f"loaded from {cache} (read from the store by an earlier run)"
    else:
        source = "read from the store by this checkout"
        with StoreReader(store) as r:
            tr = np.union1d(r.select(split="train"), r.select(split="test"))
            va = r.select(split="val")
            lab = np.asarray(r.metadata(["label"])["label"]).astype(str)
            X = store_features(r, args.recipe, tr)
            Xv = store_features(r, args.recipe, va)
        y, yv = (lab[tr] == "fake").astype(np.int64), (lab[va] == "fake").astype(np.int64)
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            for k, v in (("X", X), ("X_val", Xv), ("y", y), ("y_val", yv)):
                np.save(cache / f"{k}.npy", v)
    read_s = time.perf_counter() - t
    log(f"code {code}: features {X.shape} + val {Xv.shape} read in {read_s:.1f} s")
    out = {"code": str(code), "features": source, "n_train": int(X.shape[0]), "n_val": int(Xv.shape[0]), "n_features": int(X.shape[1]),
           "read_seconds": round(read_s, 2)}
    for kind in args.heads.split(","):
        runs = []
        for rep in range(args.reps):
            load0 = os.getloadavg()[0]
            t, c = time.perf_counter(), time.process_time()
            head = make_head(HeadConfig(kind=kind)).fit(X, y, X_val=Xv, y_val=yv)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            run = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "load_before": load0,
                   "load_after": os.getloadavg()[0],
                   "val_auroc": round(float(roc_auc_score(yv, head.predict_proba(Xv)[:, 1])), 5)}
            for attr in ("n_epochs_", "best_epoch_", "planned_epochs_", "batch_size_", "precision_", "n_iter_"):
                if hasattr(head, attr):
                    run[attr.rstrip("_")] = getattr(head, attr)
            log(f"{kind} rep {rep}: {run}")
            runs.append(run)
        if not runs:  # --reps 0: only the features (e.g. written to --features for another checkout)
            continue
        walls = [r["wall_s"] for r in runs]
        out[kind] = {"runs": runs, "wall_min": min(walls), "wall_median": statistics.median(walls),
                     "cpu_median": statistics.median(r["cpu_s"] for r in runs),
                     "val_auroc": [r["val_auroc"] for r in runs]}
    return out


WRAP = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
        "sys.stderr.write(r.stderr[-3000:]); sys.stdout.write(r.stdout)")


def cli(args, store: Path, log) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(args.code).resolve() if args.code else ROOT),
               OMP_NUM_THREADS=str(args.threads))
    out = {"runs": []}
    for rep in range(args.reps):
        head_dir = Path(args.work) / f"head-{rep}"
        cmd = [sys.executable, "-m", "item", "train", str(store), "--out", str(head_dir), "--head", args.heads,
               "--json", *(["--max-memory", args.max_memory] if args.max_memory else []), *args.extra]
        load0 = os.getloadavg()[0]
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", WRAP, *cmd], capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t
        first, _, rest = p.stdout.partition("\n")
        rc, kib = first.split()
        run = {"rc": int(rc), "wall_s": round(wall, 1), "peak_rss_mib": round(int(kib) / 1024),
               "load_before": load0, "load_after": os.getloadavg()[0]}
        if int(rc) == 0:
            meta = json.loads(rest)
            run.update(val_auroc=meta["validation"].get("auroc"), streamed=meta.get("streamed"),
                       training=meta.get("training"), n_train=meta["n_train"], n_val=meta["n_val"])
        else:
            run["stderr"] = p.stderr[-1500:]
        log(f"cli rep {rep}: {run}")
        out["runs"].append(run)
    ok = [r for r in out["runs"] if r["rc"] == 0]
    if ok:
        out.update(wall_min=min(r["wall_s"] for r in ok), wall_median=statistics.median(r["wall_s"] for r in ok),
                   peak_rss_mib_max=max(r["peak_rss_mib"] for r in ok))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--embed-dim", type=int, default=768)
    ap.add_argument("--recipe", default="hierarchical")
    ap.add_argument("--signal", type=float, default=0.3)
    ap.add_argument("--align-spread", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--heads", default="mlp,logistic", help="in process: comma-separated; --cli: one kind")
    ap.add_argument("--code", help="import item from this checkout for the fits (default: this one)")
    ap.add_argument("--features", help="in process: a folder for the features as .npy: written by the first run "
                    "(store read by that run's checkout), loaded by later ones (e.g. an older --code that cannot "
                    "read this store's schema)")
    ap.add_argument("--cli", action="store_true", help="time `python -m item train` processes instead")
    ap.add_argument("--max-memory", help="--cli: passed to item train (e.g. 1G streams the rows)")
    ap.add_argument("--work", default="/tmp/item-bench-train-work", help="--cli: where heads are written")
    ap.add_argument("--store-dir", default="/tmp/item-bench-train-store")
    ap.add_argument("--out")
    ap.add_argument("extra", nargs="*", help="--cli: further item train options (after --)")
    args = ap.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    store = Path(args.store_dir)
    write_s = ensure_store(store, args.rows, args.embed_dim, args.recipe, args.signal, args.align_spread, log)
    results = {"rows": args.rows, "embed_dim": args.embed_dim, "recipe": args.recipe, "signal": args.signal,
               "align_spread": args.align_spread, "threads": args.threads, "store_write_seconds": round(write_s, 1),
               "mode": "cli" if args.cli else "in-process"}
    results.update(cli(args, store, log) if args.cli else in_process(args, store, log))
    print(json.dumps(results, indent=1, default=str))
    write_result(args.out, "train", NOTE, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
