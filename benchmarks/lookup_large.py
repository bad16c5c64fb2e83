"""Lookup at millions of rows: an ivfpq4 index (4-bit fast-scan PQ in memory, float16 re-ranking from disk)
built by `item store index --target-recall`, its memory, build time and peak RSS, recall@10 and latency.

    python benchmarks/lookup_large.py --n 10000000 --work /work/bench-data/lookup10m --out r.json

1. The store (``--work``/store): ``item.store.synthetic.write_synthetic_store_fast(recipe=None)``, image
   embeddings of a mixture of 64 clusters on the sphere (as benchmarks/lookup.py), written a shard at a time;
   reused when complete. RANDOM: synthetic vectors, no model.
2. Queries: ``--queries`` fresh draws of the same mixture (not in the store); their exact top-10 by inner
   product over the whole store, computed by streaming the store in chunks (no flat index: at 10M it would
   need 30 GB); cached beside the store.
3. The build: one `python -m item store index STORE --kind ivfpq4 --target-recall R` process (its own
   500 held-out stored rows choose nprobe), its wall time, peak RSS (ru_maxrss) and the
   peaks of its heap and of its mapped files apart (/proc samples).
4. Search through ``StoreIndex`` in this process: RSS growth on load, recall@10 against the exact answers,
   single-query latency (p50 / p99 over ``--single`` queries) in two states of the float16 re-ranking
   copies (ivfpq4; they live on disk): ``cold``, the copies file dropped from the page cache first
   (posix_fadvise DONTNEED: each query's candidates are read from the disk), and ``warm``, the whole file
   read once beforehand (page cache holding it: the memory a steady service would give it). The warm-up
   pass before each timing uses other queries than the timed ones (another draw of the mixture), so no
   timed query finds its own pages cached by its warm-up. Then a sweep of nprobe and k_factor (warm).
   faiss runs with ``--threads`` OpenMP threads. ``--reuse-index`` measures an index already built.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result  # noqa: E402

NOTE = "synthetic seeded clustered embeddings (64 clusters on the sphere), not real CLIP embeddings"
def memory_mib(pid="self") -> dict:
    """A process's resident memory split as the kernel keeps it (MiB): ``anon`` (its own heap: the index, arrays),
    ``file`` (pages of files it maps, e.g. the float16 copies: page cache, dropped under memory pressure, not
    the process's own), ``rss`` (both)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, val = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[{"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file"}[key]] = round(int(val.split()[0]) / 1024, 1)
    return out


def run_sampled(cmd: list, env: dict, every: float = 0.2) -> tuple[int, str, dict]:
    """Run ``cmd``; returns (exit code, output tail, memory peaks in MiB): ``rss`` the child's exact ru_maxrss
    (from wait4), ``anon`` / ``file`` the largest of /proc samples taken every ``every`` s."""
    import tempfile

    peaks = {"anon": 0.0, "file": 0.0}
    with tempfile.TemporaryFile("w+") as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            try:
                for k, v in memory_mib(p.pid).items():
                    if k in peaks:
                        peaks[k] = max(peaks[k], v)
            except (OSError, ValueError):
                pass
            time.sleep(every)
        p.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        log.seek(0)
        return p.returncode, log.read()[-3000:], {"rss": usage.ru_maxrss / 1024, **peaks}


def queries_of(n_queries: int, dim: int, seed: int = 0, draw: int = 0) -> np.ndarray:
    """Fresh draws of the store's mixture: the same centers (the writer's first draw), other noise
    (``draw`` picks another independent set)."""
    from item.store.synthetic import _unit

    centers = _unit(np.random.default_rng(seed).normal(size=(64, dim)))
    rng = np.random.default_rng(seed + 10_000 + draw)
    return _unit(centers[rng.integers(64, size=n_queries)] + 1.4 / np.sqrt(dim) * rng.normal(size=(n_queries, dim)))


def exact_top(store: Path, q: np.ndarray, k: int, log) -> np.ndarray:
    from item.store import StoreReader

    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    with StoreReader(store) as r:
        rows = r.select(status="ok")
        done = 0
        for chunk, vecs in r.iter_chunks("image_emb", rows, chunk_rows=131072):
            v = vecs.astype(np.float32)
            v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
            s = np.concatenate([best_s, q @ v.T], axis=1)
            i = np.concatenate([best_i, np.broadcast_to(np.asarray(chunk, np.int64), (len(q), len(chunk)))], axis=1)
            top = np.argpartition(-s, k - 1, axis=1)[:, :k]
            best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
            done += len(chunk)
            if done % (1 << 20) < 131072:
                log(f"exact answers: {done} rows scanned")
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_i, order, 1)


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k].tolist()) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


def single_latency(idx, q: np.ndarray, n: int, k: int, warm: np.ndarray | None = None) -> dict:
    """p50 / p99 of one query at a time; ``warm``: queries searched first, untimed (None: no warm-up)."""
    for w in (warm if warm is not None else []):
        idx.search(w[None], k)
    times = []
    for i in range(min(n, len(q))):
        t = time.perf_counter()
        idx.search(q[i:i + 1], k)
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1e3
    return {"single_p50_ms": round(float(np.percentile(ms, 50)), 3),
            "single_p99_ms": round(float(np.percentile(ms, 99)), 3), "load": os.getloadavg()[0]}


def drop_from_cache(path: Path) -> None:
    """Ask the kernel to drop a file's clean pages from the page cache (no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_through(path: Path) -> float:
    """Read a file once (into the page cache); returns the seconds it took."""
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        while fh.read(1 << 24):
            pass
    return time.perf_counter() - t


def cached_fraction(path: Path) -> float | None:
    """The share of a file's pages now in the page cache (mincore on a read-only map); None when unknown."""
    import ctypes
    import mmap

    size = path.stat().st_size
    if not size:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        view = np.memmap(path, dtype=np.uint8, mode="r")
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = (ctypes.c_ubyte * pages)()
        rc = libc.mincore(ctypes.c_void_p(view.ctypes.data), ctypes.c_size_t(size), vec)
        del view
        if rc != 0:
            return None
        return round(int(np.count_nonzero(np.frombuffer(vec, np.uint8) & 1)) / pages, 4)
    except (OSError, AttributeError):
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--single", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--kind", default="ivfpq4")
    ap.add_argument("--index-args", default="", help="further `item store index` options, e.g. '--pq-m 192'")
    ap.add_argument("--work", default="/tmp/item-bench-lookup-large")
    ap.add_argument("--reuse-index", action="store_true", help="measure the index already built (no build)")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    import faiss

    from item.store.index import StoreIndex, set_search_param
    from item.store.synthetic import write_synthetic_store_fast

    faiss.omp_set_num_threads(args.threads)

    def log(msg):
        print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)

    work = Path(args.work)
    store = work / f"store-{args.n}-{args.dim}"
    res = {"n": args.n, "dim": args.dim, "kind": args.kind, "threads": args.threads, "load_start": os.getloadavg()}
    if not (store / "complete").exists():
        import shutil

        shutil.rmtree(store, ignore_errors=True)
        t = time.perf_counter()
        write_synthetic_store_fast(store, args.n, args.dim, recipe=None, shard_size=65536,
                                   log=lambda m: log(m) if "00000 /" in m or m.endswith(f"{args.n} / {args.n} rows") else None)
        (store / "complete").write_text("")
        res["store_write_seconds"] = round(time.perf_counter() - t, 1)
        log(f"wrote {store} in {res['store_write_seconds']} s")
    res["store_bytes"] = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    q = queries_of(args.queries, args.dim)
    tfile = work / f"truth-{args.n}-{args.dim}-{args.queries}.npy"
    if tfile.exists():
        truth = np.load(tfile)
    else:
        t = time.perf_counter()
        truth = exact_top(store, q, args.k, log)
        np.save(tfile, truth)
        res["exact_seconds"] = round(time.perf_counter() - t, 1)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, "-m", "item", "store", "index", str(store), "--kind", args.kind,
           "--target-recall", str(args.target_recall), *args.index_args.split()]
    if args.reuse_index and (store / "index" / f"image-{args.kind}.json").exists():
        res["build"] = "reused (built by an earlier run of this script; its build numbers are in that run's output)"
    else:
        log("building: " + " ".join(cmd[1:]))
        t = time.perf_counter()
        rc, output, peaks = run_sampled(cmd, env)
        res.update(build_seconds=round(time.perf_counter() - t, 1), build_rc=int(rc),
                   build_peak_rss_mib=round(peaks["rss"]), load_after_build=os.getloadavg(),
                   build_output=output[-1500:])
        # sampled every 0.2 s: the heap's peak apart from the mapped copies' pages (ru_maxrss counts both)
        res.update(build_peak_anon_mib=round(peaks["anon"]), build_peak_file_mib=round(peaks["file"]))
        if int(rc):
            log(f"build failed: {res['build_output']}")
            write_result(args.out, "lookup_large", NOTE, res)
            return 1
        log(f"built in {res['build_seconds']} s, peak RSS {res['build_peak_rss_mib']} MiB")
    r0 = memory_mib()["rss"]
    idx = StoreIndex(store, kind=args.kind)
    res["rss_growth_on_load_mib"] = round(memory_mib()["rss"] - r0, 1)
    res["memory_after_load_mib"] = memory_mib()
    side = idx.info
    res.update(params=side["params"], memory_bytes=side["memory_bytes"], disk_bytes=side.get("disk_bytes"),
               tuning=side.get("tuning"),
               # index data files are named by build since issue 21 (image-KIND.BUILD.faiss)
               index_file_bytes=sum(f.stat().st_size for f in (store / "index").glob(f"image-{args.kind}.*faiss")))
    copies = None
    if side.get("files", {}).get("vectors"):
        copies = store / "index" / side["files"]["vectors"]["name"]
    _, found = idx.search(q, args.k)
    res["recall_at_10"] = round(recall_at(found, truth, args.k), 4)
    warm_q = queries_of(args.single, args.dim, draw=1)  # another draw: warm-up pages are not the timed ones'
    if copies is not None:
        # A page this process maps stays in the cache whatever it is told: close the index (its memory map
        # goes with it), drop the file's pages, then open it again for the cold pass.
        import gc

        idx.close()
        del idx
        gc.collect()
        drop_from_cache(copies)
        idx = StoreIndex(store, kind=args.kind)
        res["cold"] = {"copies_cached_before": cached_fraction(copies),
                       **single_latency(idx, q, args.single, args.k, warm=None)}
        log(f"cold: {res['cold']}")
        res["copies_read_through_seconds"] = round(read_through(copies), 1)
        res["copies_cached_warm"] = cached_fraction(copies)
    res.update(single_latency(idx, q, args.single, args.k, warm=warm_q))
    res["memory_after_queries_mib"] = memory_mib()
    log(f"tuned: {json.dumps({k: res[k] for k in ('params', 'recall_at_10', 'single_p50_ms', 'single_p99_ms')})}")
    sweep = []
    chosen = side["params"]["nprobe"]
    for name, values in (("nprobe", sorted({max(1, chosen // 2), chosen, chosen * 2})),
                         ("k_factor", (8, 16, 32, 64, 128))):
        for v in values:
            set_search_param(idx.index, args.kind, name, v)
            _, f = idx.search(q, args.k)
            row = {name: v, "recall_at_10": round(recall_at(f, truth, args.k), 4),
                   **single_latency(idx, q, min(args.single, 100), args.k, warm=warm_q[:20])}
            sweep.append(row)
            log(f"  {row}")
        set_search_param(idx.index, args.kind, name, side["params"][name])
    res["sweep"] = sweep
    idx.close()
    res["load_end"] = os.getloadavg()
    print(json.dumps(res, indent=1, default=str))
    write_result(args.out, "lookup_large", NOTE, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
