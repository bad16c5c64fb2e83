"""Training speed: store -> feature matrix throughput, and one MLP / one logistic head on N rows.

    python benchmarks/train.py --rows 100000 --embed-dim 768 --threads 2 --out r.json

The store is seeded synthetic data (item.store.synthetic: a mixture of 64 clusters on the sphere, up to
4 objects an image, fakes less aligned with their captions) written through the real StoreWriter, with
each row's misalignment computed by item.misalignment.compute under the recipe. The store is written once
into --store-dir (reused when it already holds the same number of rows) and not timed here (see
benchmarks/storage.py for write speed).
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result  # noqa: E402

NOTE = "synthetic seeded embeddings (no model): timings depend on shapes only"


def ensure_store(path: Path, n: int, embed_dim: int, recipe: str, log) -> float:
    from item.misalignment import compute, feature_size
    from item.store import StoreReader
    from item.store.synthetic import write_synthetic_store

    if (path / "manifest.json").exists():
        try:
            with StoreReader(path) as r:
                if r.n_images == n and r.embed_dim == embed_dim:
                    log(f"reusing store {path} ({n} rows)")
                    return 0.0
        except Exception:
            pass
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    t = time.perf_counter()
    write_synthetic_store(path, n, embed_dim, misalignment_fn=functools.partial(compute, recipe),
                          misalignment_dim=feature_size(recipe, embed_dim), recipe=recipe, shard_size=16384)
    s = time.perf_counter() - t
    log(f"wrote store {path}: {n} rows in {s:.1f} s")
    return s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--embed-dim", type=int, default=768)
    ap.add_argument("--recipe", default="hierarchical")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3, help="repetitions of the store read")
    ap.add_argument("--store-dir", default="/tmp/item-bench-train-store")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    import torch

    from item.classify.features import store_features
    from item.classify.heads import HeadConfig, LogisticHead, MLPHead
    from item.store import StoreReader

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    store = Path(args.store_dir)
    write_s = ensure_store(store, args.rows, args.embed_dim, args.recipe, log)
    reads = []
    with StoreReader(store) as reader:
        rows = reader.select()
        meta = reader.metadata()
        for _ in range(args.reps):
            t = time.perf_counter()
            X = store_features(reader, args.recipe, rows)
            reads.append(time.perf_counter() - t)
    labels = np.asarray(meta["label"])[rows]
    y = (labels.astype(str) == "fake").astype(np.int64)
    log(f"features {X.shape} {X.dtype}; read runs {[round(r, 2) for r in reads]} s")

    results = {"rows": int(X.shape[0]), "n_features": int(X.shape[1]), "embed_dim": args.embed_dim,
               "recipe": args.recipe, "threads": args.threads, "store_write_seconds": round(write_s, 1),
               "read_seconds": [round(r, 3) for r in reads],
               "read_rows_per_s": round(X.shape[0] / statistics.median(reads))}
    for name, head in (("mlp", MLPHead(HeadConfig(kind="mlp"))), ("logistic", LogisticHead(HeadConfig(kind="logistic")))):
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        head.fit(X, y)
        s = time.perf_counter() - t
        acc = float((head.predict(X) == y).mean())
        extra = {"epochs": head.n_epochs_, "best_epoch": head.best_epoch_} if name == "mlp" else {}
        results[name] = {"fit_seconds": round(s, 2), "train_accuracy": round(acc, 4),
                         "max_rss_growth_mib": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024),
                         **extra}
        if name == "mlp":
            results[name]["seconds_per_epoch"] = round(s / head.n_epochs_, 3)
        log(f"{name}: {results[name]}")

    print(f"# {NOTE}")
    print(f"| rows | features | threads | read rows/s (median of {args.reps}) | MLP fit s (epochs) | "
          f"s/epoch | logistic fit s | target MLP < 60 s |")
    print("|---|---|---|---|---|---|---|---|")
    m, lg = results["mlp"], results["logistic"]
    print(f"| {results['rows']} | {results['n_features']} | {args.threads} | {results['read_rows_per_s']} | "
          f"{m['fit_seconds']} ({m['epochs']}) | {m['seconds_per_epoch']} | {lg['fit_seconds']} | "
          f"{'met' if m['fit_seconds'] < 60 else 'MISSED'} |")
    write_result(args.out, "train", NOTE, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
