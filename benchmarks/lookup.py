"""Lookup: build time, size, latency and recall@10 of flat, HNSW and IVF-PQ through item.store.index.

    python benchmarks/lookup.py --n 200000 --dim 768 --out r.json

The store holds seeded synthetic image embeddings (item.store.synthetic: a mixture of 64 clusters on
the unit sphere, per-dimension noise 1.4/sqrt(dim), stored as float16 like real ones). Queries are
further draws from the same mixture (records n..n+q of the same seeded stream, not in the store).
Recall@10 is measured against the flat index (exact inner-product search). Latency: single queries
(one search() call each, p50/p99 over --single queries) and batches of 100 (per batch). The key
search parameter of each approximate kind is swept on the built index (no rebuild) and the cheapest
setting with recall@10 >= --target-recall is reported.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result  # noqa: E402

NOTE = "synthetic seeded clustered embeddings (64 clusters on the sphere), not real CLIP embeddings"


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def ensure_store(root: Path, n: int, dim: int, n_queries: int, log) -> np.ndarray:
    """Write (or reuse) the store; return (n_queries, dim) float32 queries from the same stream."""
    from item.store import StoreReader
    from item.store.synthetic import synthetic_compat, synthetic_records
    from item.store.writer import StoreWriter

    qfile = root.parent / f"queries-{n}-{dim}-{n_queries}.npy"
    # A store written with more queries serves fewer: its queries file holds the first ones of the stream.
    have = sorted(root.parent.glob(f"queries-{n}-{dim}-*.npy"), key=lambda f: int(f.stem.split("-")[-1]))
    have = [f for f in have if int(f.stem.split("-")[-1]) >= n_queries]
    if (root / "manifest.json").exists() and have:
        with StoreReader(root) as r:
            if r.n_images == n and r.embed_dim == dim:
                log(f"reusing store {root}")
                return np.load(have[0])[:n_queries]
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    queries = []
    with StoreWriter(root, compat=synthetic_compat(dim, 8), models={"clip": {"model": "synthetic"}},
                     recipe="hierarchical", shard_size=65536) as w:
        for i, rec in enumerate(synthetic_records(n + n_queries, dim, max_objects=0, misalignment_dim=8)):
            if i < n:
                w.add(rec)
            else:
                queries.append(rec.image_emb)
    q = np.asarray(queries, np.float32)
    np.save(qfile, q)
    log(f"wrote store {root}: {n} x {dim} in {time.perf_counter() - t:.1f} s")
    return q


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def latency(idx, q: np.ndarray, n_single: int, k: int) -> dict:
    single = []
    for i in range(n_single):
        t = time.perf_counter()
        idx.search(q[i:i + 1], k)
        single.append(time.perf_counter() - t)
    batch = []
    for s in range(0, len(q) - 99, 100):
        t = time.perf_counter()
        idx.search(q[s:s + 100], k)
        batch.append(time.perf_counter() - t)
    single_ms, batch_ms = np.array(single) * 1e3, np.array(batch) * 1e3
    return {"single_p50_ms": round(float(np.percentile(single_ms, 50)), 3),
            "single_p99_ms": round(float(np.percentile(single_ms, 99)), 3),
            "batch100_p50_ms": round(float(np.percentile(batch_ms, 50)), 2) if len(batch) else None,
            "batch100_p99_ms": round(float(np.percentile(batch_ms, 99)), 2) if len(batch) else None,
            "batch100_qps": round(100 / float(np.median(batch_ms)) * 1e3) if len(batch) else None}


def set_param(idx, kind: str, name: str, value) -> None:
    from item.store.index import set_search_param

    set_search_param(idx.index, kind, name, value)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--kinds", default="flat,hnsw,ivfpq")
    ap.add_argument("--queries", type=int, default=1000, help="queries for recall and batch latency")
    ap.add_argument("--single", type=int, default=300, help="single queries timed one by one")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2, help="faiss OpenMP threads")
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--target-ms", type=float, default=2.0)
    ap.add_argument("--hnsw", default="", help="build params, e.g. M=32,ef_construction=80")
    ap.add_argument("--ivfsq", default="", help="build params, e.g. nlist=1024,refine=0")
    ap.add_argument("--no-flat-latency", action="store_true",
                    help="time no queries on the flat index (it only gives the exact answers): a busy machine")
    ap.add_argument("--tune", type=float, default=None,
                    help="build with item.store.index's --target-recall tuning (held-out queries) at this recall")
    ap.add_argument("--store-dir", default="/tmp/item-bench-lookup/store")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    import faiss

    from item.store.index import INDEX_KINDS, StoreIndex, build_index

    faiss.omp_set_num_threads(args.threads)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    root = Path(args.store_dir)
    q = ensure_store(root, args.n, args.dim, args.queries, log)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if "flat" not in kinds:
        kinds.insert(0, "flat")
    sweeps = {"hnsw": [("ef_search", v) for v in (16, 32, 64, 128, 256)],
              "ivfpq": [("nprobe", v) for v in (4, 8, 16, 32, 64)],
              "ivfsq": [("nprobe", v) for v in (4, 8, 12, 16, 24, 32, 48, 64)]}
    results, truth = {}, None
    for kind in kinds:
        params = {}
        given = {"hnsw": args.hnsw, "ivfsq": args.ivfsq}.get(kind)
        if given:
            params = {k: int(v) for k, v in (kv.split("=") for kv in given.split(","))}
        t = time.perf_counter()
        side = build_index(root, kind=kind, params=params,
                           target_recall=args.tune if kind != "flat" else None)
        build_s = time.perf_counter() - t
        # the index data file is named by its build since issue 21 (image-KIND.BUILD.faiss); a rebuild deletes the old
        size = sum(f.stat().st_size for f in (root / "index").glob(f"image-{kind}.*faiss"))
        r0 = rss_mib()
        idx = StoreIndex(root, kind=kind)
        load_rss = rss_mib() - r0
        _, found = idx.search(q, args.k)
        if kind == "flat":
            truth = found
        rec = recall_at(found, truth, args.k)
        if kind == "flat" and args.no_flat_latency:
            lat = {k: None for k in ("single_p50_ms", "single_p99_ms", "batch100_p50_ms", "batch100_p99_ms",
                                     "batch100_qps")}
        else:
            lat = latency(idx, q, args.single, args.k)
        res = {"build_seconds": round(build_s, 1), "index_bytes": size, "index_mib": round(size / 2**20, 1),
               "memory_estimate_mib": round(side.get("memory_bytes", 0) / 2**20, 1), "tuning": side.get("tuning"),
               "rss_growth_on_load_mib": round(load_rss, 1), "params": side["params"],
               "recall_at_10": round(rec, 4), **lat}
        log(f"{kind}: {res}")
        sweep = []
        for name, value in sweeps.get(kind, []):
            set_param(idx, kind, name, value)
            _, f = idx.search(q, args.k)
            row = {name: value, "recall_at_10": round(recall_at(f, truth, args.k), 4),
                   **latency(idx, q, min(args.single, 200), args.k)}
            sweep.append(row)
            log(f"  {kind} {name}={value}: recall {row['recall_at_10']}, single p50 {row['single_p50_ms']} ms")
        if kind == "ivfsq" and side["params"].get("refine"):  # re-ranking depth at the chosen nprobe
            set_param(idx, kind, "nprobe", side["params"]["nprobe"])
            for kf in (1, 2, 8):
                set_param(idx, kind, "k_factor", kf)
                _, f = idx.search(q, args.k)
                row = {"nprobe": side["params"]["nprobe"], "k_factor": kf,
                       "recall_at_10": round(recall_at(f, truth, args.k), 4),
                       **latency(idx, q, min(args.single, 200), args.k)}
                sweep.append(row)
                log(f"  ivfsq k_factor={kf}: recall {row['recall_at_10']}, single p50 {row['single_p50_ms']} ms")
            set_param(idx, kind, "k_factor", side["params"]["k_factor"])
        if kind == "ivfpq":  # k_factor (re-ranking depth) at the default nprobe
            set_param(idx, kind, "nprobe", side["params"]["nprobe"])
            for kf in (2, 4, 16):
                set_param(idx, kind, "k_factor", kf)
                _, f = idx.search(q, args.k)
                row = {"nprobe": side["params"]["nprobe"], "k_factor": kf,
                       "recall_at_10": round(recall_at(f, truth, args.k), 4),
                       **latency(idx, q, min(args.single, 200), args.k)}
                sweep.append(row)
                log(f"  ivfpq k_factor={kf}: recall {row['recall_at_10']}, single p50 {row['single_p50_ms']} ms")
        ok = [s for s in sweep if s["recall_at_10"] >= args.target_recall]
        res["sweep"] = sweep
        res["cheapest_meeting_recall"] = min(ok, key=lambda s: s["single_p50_ms"]) if ok else None
        results[kind] = res
        idx.close()

    print(f"# {NOTE}; n={args.n} dim={args.dim} k={args.k} faiss threads={args.threads}")
    print("| kind | params | build s | index MiB | RSS on load MiB | recall@10 | single p50 ms | single p99 ms | "
          "batch-100 p50 ms | batch-100 p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind, r in results.items():
        p = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        print(f"| {kind} | {p} | {r['build_seconds']} | {r['index_mib']} | {r['rss_growth_on_load_mib']} | "
              f"{r['recall_at_10']} | {r['single_p50_ms']} | {r['single_p99_ms']} | {r['batch100_p50_ms']} | "
              f"{r['batch100_p99_ms']} |")
    print()
    print("| kind | setting | recall@10 | single p50 ms | single p99 ms | batch-100 p50 ms |")
    print("|---|---|---|---|---|---|")
    for kind, r in results.items():
        for s in r.get("sweep", []):
            setting = ", ".join(f"{k}={s[k]}" for k in ("ef_search", "nprobe", "k_factor") if k in s)
            print(f"| {kind} | {setting} | {s['recall_at_10']} | {s['single_p50_ms']} | {s['single_p99_ms']} | "
                  f"{s['batch100_p50_ms']} |")
    best = [(k, r["cheapest_meeting_recall"]) for k, r in results.items() if r.get("cheapest_meeting_recall")]
    best = [(k, s) for k, s in best if s["single_p50_ms"] < args.target_ms]
    if best:
        k, s = min(best, key=lambda x: x[1]["single_p50_ms"])
        print(f"\nrecommended: {k} {s} (target: single query p50 < {args.target_ms} ms at recall@10 >= "
              f"{args.target_recall}: met)")
    else:
        print(f"\nno kind met single query p50 < {args.target_ms} ms at recall@10 >= {args.target_recall}")
    write_result(args.out, "lookup", NOTE, results,
                 index_defaults={k: v.defaults for k, v in INDEX_KINDS.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
