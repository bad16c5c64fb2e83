"""Lookup on a GPU machine: FAISS CPU vs FAISS GPU (when the installed faiss has GPU support and sees a GPU),
and torch on the GPU as a reference, at n x dim structured vectors.

    python benchmarks/lookup_gpu.py --n 1000000 --out r.json

Vectors: the mixture `item.store.synthetic` draws image embeddings from (64 clusters on the unit sphere,
per-dimension noise 1.4/sqrt(dim), rounded to float16 like stored ones), drawn here with numpy in bulk
rather than through a store (the store's per-record writer would take minutes at 1M rows); queries are
further draws. Measured: build time of the index `item store index --kind auto` chooses at this size
(ivfsq: IVF + SQ8 + float16 re-ranking) and of flat, batch-search QPS (batches of --batch queries,
k=10) and recall@10 against exact search. FAISS GPU rows are only measured when `faiss.get_num_gpus() > 0`;
otherwise the JSON says why. torch rows: exact search as one fp16 matrix product + top-k per batch, and
k-means (the IVF training step) in torch, both on the GPU: what the hardware gives without faiss-gpu.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result  # noqa: E402

NOTE = "synthetic seeded clustered embeddings (64 clusters on the sphere, as item.store.synthetic), not real CLIP"


def draw(rng, centers, m: int, dim: int) -> np.ndarray:
    out = np.empty((m, dim), np.float32)
    for s in range(0, m, 100_000):
        e = min(m, s + 100_000)
        x = centers[rng.integers(len(centers), size=e - s)] + 1.4 * rng.standard_normal((e - s, dim), np.float32) / np.sqrt(dim)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s:e] = x.astype(np.float16).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def recall(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def qps(search, q: np.ndarray, batch: int) -> tuple[float, np.ndarray]:
    search(q[:batch])  # warm-up
    t = time.perf_counter()
    out = [search(q[s:s + batch]) for s in range(0, len(q), batch)]
    dt = time.perf_counter() - t
    return round(len(q) / dt, 1), np.concatenate(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=0, help="faiss CPU threads (0: all)")
    ap.add_argument("--out")
    args = ap.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    import faiss

    from item.store.index import _auto_params, _new_index, _train, gpu_available, plan_index, set_search_param

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((64, args.dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    t = time.perf_counter()
    xb = draw(rng, centers, args.n, args.dim)
    xq = draw(rng, centers, args.queries, args.dim)
    log(f"data {args.n} x {args.dim} in {time.perf_counter() - t:.1f} s")
    res = {"n": args.n, "dim": args.dim, "queries": args.queries, "batch": args.batch,
           "faiss_version": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(),
           "faiss_has_gpu": gpu_available()}
    k = 10

    # exact (flat), CPU
    t = time.perf_counter()
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(xb)
    build = time.perf_counter() - t
    q_flat, truth_d = qps(lambda x: flat.search(x, k)[1], xq, args.batch)
    truth = truth_d
    res["faiss_cpu_flat"] = {"build_seconds": round(build, 2), "batch_qps": q_flat, "recall_at_10": 1.0}
    log(f"faiss cpu flat: {res['faiss_cpu_flat']}")

    # the index `--kind auto` picks, CPU build and search
    kind, p = plan_index(args.n, args.dim)
    p = _auto_params(kind, args.n, args.dim, p)
    n_train = min(args.n, max(128 * int(p.get("nlist", 1)), 10_000), 200_000)
    sample = xb[np.sort(rng.choice(args.n, size=n_train, replace=False))]

    def build_auto(gpu: bool):
        index = _new_index(kind, args.dim, dict(p), args.n)
        t0 = time.perf_counter()
        if not index.is_trained:
            _train(index, sample, gpu)
        t1 = time.perf_counter()
        index.add(xb)
        return index, round(t1 - t0, 2), round(time.perf_counter() - t1, 2)

    index, t_train, t_add = build_auto(False)
    row = {"kind": kind, "params": p, "train_seconds": t_train, "add_seconds": t_add, "train_points": n_train}
    sweep = []
    for npb in ((8, 16, 32) if kind != "flat" else ()):
        set_search_param(index, kind, "nprobe", npb)
        q_, found = qps(lambda x: index.search(x, k)[1], xq, args.batch)
        sweep.append({"nprobe": npb, "batch_qps": q_, "recall_at_10": round(recall(found, truth), 4)})
        log(f"faiss cpu {kind} nprobe {npb}: {sweep[-1]}")
    row["sweep"] = sweep
    res["faiss_cpu_auto"] = row

    if gpu_available():
        try:
            index_g, t_train_g, t_add_g = build_auto(True)
            gres = faiss.StandardGpuResources()
            row_g = {"kind": kind, "train_seconds_gpu_kmeans": t_train_g, "add_seconds_cpu": t_add_g}
            gflat = faiss.index_cpu_to_gpu(gres, 0, flat)
            row_g["flat_batch_qps"], _ = qps(lambda x: gflat.search(x, k)[1], xq, args.batch)
            base = faiss.downcast_index(index_g)
            ivf_cpu = faiss.downcast_index(base.base_index) if isinstance(base, faiss.IndexRefine) else base
            givf = faiss.index_cpu_to_gpu(gres, 0, ivf_cpu)
            gsweep = []
            for npb in (8, 16, 32):
                givf.nprobe = npb
                q_, found = qps(lambda x: givf.search(x, k)[1], xq, args.batch)
                gsweep.append({"nprobe": npb, "batch_qps": q_, "recall_at_10": round(recall(found, truth), 4),
                               "refine": "none on the GPU (SQ8 scores)"})
                log(f"faiss gpu {kind} nprobe {npb}: {gsweep[-1]}")
            row_g["sweep"] = gsweep
            res["faiss_gpu"] = row_g
        except Exception as exc:
            res["faiss_gpu"] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
    else:
        res["faiss_gpu"] = {"not_measured": "the installed faiss has no GPU support or sees no GPU "
                            "(faiss-gpu's wheel is 135 MB with CUDA 12 runtime and cuBLAS wheels on top: more "
                            "than a lent machine's 64 MiB carry, whose torch is CUDA 13)"}

    try:
        import torch

        if torch.cuda.is_available():
            dev = "cuda"
            xb_t = torch.from_numpy(xb).to(dev, torch.float16)
            torch.cuda.synchronize()

            def tsearch(x):
                s = torch.from_numpy(x).to(dev, torch.float16) @ xb_t.T
                return s.topk(k, dim=1).indices.cpu().numpy()

            q_t, found = qps(tsearch, xq, args.batch)
            res["torch_gpu_exact"] = {"batch_qps": q_t, "recall_at_10": round(recall(found, truth), 4),
                                      "device": torch.cuda.get_device_name(0), "dtype": "float16"}
            log(f"torch gpu exact: {res['torch_gpu_exact']}")
            # k-means (IVF training) on the GPU in torch: same points, same number of lists, 20 iterations
            x = torch.from_numpy(sample).to(dev)
            nl = int(p.get("nlist", 1024))
            torch.cuda.synchronize()
            t = time.perf_counter()
            c = x[torch.randperm(len(x), device=dev)[:nl]].clone()
            for _ in range(20):
                assign = (x @ c.T).argmax(1)
                c = torch.zeros_like(c).index_add_(0, assign, x)
                c = torch.nn.functional.normalize(c, dim=1)
            torch.cuda.synchronize()
            res["torch_gpu_kmeans"] = {"seconds": round(time.perf_counter() - t, 3), "points": len(x), "lists": nl,
                                       "iterations": 20}
            log(f"torch gpu kmeans: {res['torch_gpu_kmeans']}")
            del xb_t, x
    except Exception as exc:
        res["torch_gpu"] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
    write_result(args.out, "lookup_gpu", NOTE, res)
    print(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
