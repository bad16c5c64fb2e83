"""FAISS indexes over a store's image embeddings or misalignment vectors (cosine similarity).

Vectors are L2-normalised and searched by inner product, so scores are cosines. Each index has
three files under DIR/index/: ``ON-KIND.BUILD.faiss`` (faiss.write_index, no pickle),
``ON-KIND.BUILD.rows.npy`` (the store row of every indexed vector, read with allow_pickle=False)
and ``ON-KIND.json``, the sidecar, which names the other two and makes the index visible. BUILD is
random per build, so a build never writes over the files the current sidecar names: the sidecar is
replaced atomically last, then the previous build's files are removed. A reader therefore sees the
old index or the new one, never a new ``.faiss`` with an old rows file or sidecar; a build killed
part way leaves the old index usable and files no sidecar names, which ``validate`` reports with
the command that finishes the job (building again removes them). Sidecars written before BUILD
names existed name no files: their files are ``ON-KIND.faiss`` and ``ON-KIND.rows.npy``.

The sidecar records the store fingerprint it was built from (compat, and every shard's name, counts,
size and checksum) and the size and sha256 of its two files: an index is fresh only while the
store's fingerprint is the same, and it is used only when its files are the ones the sidecar
describes. A stale, foreign or damaged index is
refused, never silently used. Building takes ``index.lock`` and ``writer.lock`` shared
(:class:`~item.store.locks.IndexLock`), so two builds never race and ``--overwrite`` waits.
"""

from __future__ import annotations

import hashlib
import io
import os
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from item import __version__
from item.errors import InputError, StoreError
from item.faults import fault
from item.store import schema
from item.store import files
from item.store.locks import IndexLock
from item.store.manifest import atomic_write_json, check_version, now
from item.store.reader import StoreReader


@dataclass(frozen=True)
class IndexKind:
    name: str
    description: str
    defaults: dict


INDEX_KINDS = {
    "flat": IndexKind("flat", "exact search (IndexFlatIP); best up to a few hundred thousand rows", {}),
    "hnsw": IndexKind("hnsw", "graph index (IndexHNSWFlat); fast, high recall, more memory",
                      {"M": 32, "ef_construction": 80, "ef_search": 128}),
    "ivfpq": IndexKind("ivfpq", "inverted lists + product quantisation, re-ranked exactly (IndexRefineFlat); "
                       "fast to build at millions of rows",
                       {"nlist": 0, "m": 0, "nbits": 8, "nprobe": 32, "k_factor": 8}),
    "ivfsq": IndexKind("ivfsq", "inverted lists + 8-bit scalar quantisation (1 byte a dimension), re-ranked "
                       "from float16 copies (refine 1) or not (refine 0); high recall at millions of rows, "
                       "fast to build",
                       {"nlist": 0, "nprobe": 16, "refine": 1, "k_factor": 4}),
    "ivfpq4": IndexKind("ivfpq4", "inverted lists + 4-bit fast-scan product quantisation (dim/4 bytes a vector, "
                        "SIMD distance tables), re-ranked from float16 copies read from disk (refine 1) or not "
                        "(refine 0); for tens of millions of rows in a few GB of memory",
                        {"nlist": 0, "m": 0, "nprobe": 16, "refine": 1, "k_factor": 32}),
}
#: `--kind auto`: chosen from the store's size and the memory budget by `plan_index`.
AUTO_KIND = "auto"
#: The search parameter `--target-recall` tunes, per kind, and the values it tries (ascending cost).
SEARCH_PARAM = {"hnsw": "ef_search", "ivfpq": "nprobe", "ivfsq": "nprobe", "ivfpq4": "nprobe"}
IVF_KINDS = ("ivfpq", "ivfsq", "ivfpq4")
SEARCH_GRID = {"ef_search": (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024),
               "nprobe": (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024)}
#: Up to this many rows `auto` stays exact (flat): one query scans them in about a millisecond or two.
AUTO_FLAT_ROWS = 100_000
#: Held-out queries used by `--target-recall` (stored rows, each one's own row left out of its answers).
TUNE_QUERIES = 500
#: `--target-recall` on an index that re-ranks: the deepest re-ranking it tries (k * K_FACTOR_MAX candidates), and
#: when it calls the recall flat at one depth (PLATEAU_STEPS steps of the search parameter adding < PLATEAU_GAIN).
K_FACTOR_MAX = 128
PLATEAU_STEPS, PLATEAU_GAIN = 3, 0.001
INDEX_ON = {"image": schema.IMAGE_EMB, "misalignment": schema.MISALIGNMENT}


def _check_choice(value: str, registry: dict, what: str) -> None:
    if value not in registry:
        raise InputError(f"unknown {what} {value!r}; available: {', '.join(registry)}")


def index_paths(root, on: str, kind: str) -> dict[str, Path]:
    """The sidecar of index ``on``-``kind``, and the data file names of sidecars that name none (legacy)."""
    base = Path(root) / schema.INDEX_DIR / f"{on}-{kind}"
    return {"faiss": base.with_suffix(".faiss"), "rows": Path(str(base) + ".rows.npy"),
            "sidecar": base.with_suffix(".json"), "vectors": Path(str(base) + ".f16.npy")}


_DATA_SUFFIX = {"faiss": ".faiss", "rows": ".rows.npy", "vectors": ".f16.npy"}


def _has_copies(info: dict) -> bool:
    """Whether the index the sidecar ``info`` describes keeps float16 re-ranking copies on disk (ivfpq4)."""
    recorded = info.get("files") if isinstance(info.get("files"), dict) else {}
    return bool(info.get("disk_bytes")) or isinstance(recorded.get("vectors"), dict)


def data_files(root, info: dict) -> dict[str, Path]:
    """The .faiss and .rows.npy files the sidecar ``info`` (with its ``file`` name) describes, and the .f16.npy
    re-ranking copies when it keeps some (each build's files carry its build's name, copies included).

    A name that is not a plain file name of this index (``ON-KIND.*``) is ignored, so a planted sidecar
    cannot point a reader outside the index folder; the legacy names are used then (and fail their checks).
    """
    folder = Path(root) / schema.INDEX_DIR
    stem = str(info.get("file", "")).removesuffix(".json")
    recorded = info.get("files") if isinstance(info.get("files"), dict) else {}
    out = {}
    for key, suffix in _DATA_SUFFIX.items():
        if key == "vectors" and not _has_copies(info):
            continue
        name = (recorded.get(key) or {}).get("name") if isinstance(recorded.get(key), dict) else None
        ok = isinstance(name, str) and "/" not in name and "\\" not in name and name.startswith(stem + ".") \
            and name.endswith(suffix)
        out[key] = folder / (name if ok else stem + suffix)
    return out


def orphan_files(root) -> list[Path]:
    """Index data files no sidecar names: left by a build killed or failed before its sidecar."""
    folder = Path(root) / schema.INDEX_DIR
    if not folder.is_dir():
        return []
    named = set()
    for side in folder.glob("*.json"):
        try:
            info = json.loads(side.read_text("utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(info, dict):
            info["file"] = side.name
            named.update(p.name for p in data_files(root, info).values())
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.name.endswith(tuple(_DATA_SUFFIX.values())) and p.name not in named)


def orphan_command(root, path: Path) -> str:
    """The command that rebuilds the index an orphan data file belongs to (which also removes it)."""
    on_kind = path.name.split(".", 1)[0]
    on, _, kind = on_kind.partition("-")
    return f"item store index {root} --on {on} --kind {kind}"


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.maximum(norms, 1e-12, out=norms)
    return x / norms


def _nlist_for(n: int) -> int:
    """Inverted lists for n vectors: the power of two nearest sqrt(n) (1M -> 1024), at least 1 and at most
    n // 39 (faiss wants 39 training points a centroid). A query costs about nlist * dim for choosing its
    lists plus nprobe * (n / nlist) * dim for scanning them: sqrt(n) balances the two."""
    if n < 39 * 2:
        return 1
    target = 2 ** int(round(np.log2(np.sqrt(n))))
    return int(max(1, min(target, n // 39, 65536)))


def index_bytes(kind: str, n: int, dim: int, params: dict) -> int:
    """Estimated memory of an index (the file's size and, loaded, its RAM), in bytes."""
    ids = 8 * n
    if kind == "flat":
        return 4 * dim * n
    if kind == "hnsw":  # float32 vectors + level-0 links (2M int32) + upper levels (~1/M of that)
        m = int(params.get("M", 32))
        return 4 * dim * n + int(8 * m * n * (1 + 1 / max(m, 2)))
    if kind == "ivfsq":
        return dim * n + ids + (2 * dim * n if int(params.get("refine", 1)) else 0)
    if kind == "ivfpq":  # codes + exact float32 vectors for the re-ranking
        return int(params.get("m") or dim // 8) * n + ids + 4 * dim * n
    if kind == "ivfpq4":  # 4-bit codes + ids in memory; the float16 copies stay on disk (disk_bytes)
        return (int(params.get("m") or dim // 2) * n + 1) // 2 + ids
    raise InputError(f"unknown index kind {kind!r}")


def disk_bytes(kind: str, n: int, dim: int, params: dict) -> int:
    """Bytes an index keeps on disk beside its memory: ivfpq4's float16 re-ranking copies (read per query)."""
    return 2 * dim * n if kind == "ivfpq4" and int(params.get("refine", 1)) else 0


def parse_bytes(text) -> int | None:
    """'4G', '512M', '2.5GiB', '1000000' -> bytes; None/''/0 -> None (no budget)."""
    if text in (None, "", 0, "0"):
        return None
    if isinstance(text, (int, float)):
        return int(text)
    t = str(text).strip().upper().replace("IB", "").replace("B", "")
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if t[-1:] in "KMGT" else t)
    except ValueError:
        raise InputError(f"memory budget {text!r}: use a size such as 4G, 512M or a number of bytes") from None
    if not value > 0 or value == float("inf"):  # NaN fails `> 0`
        raise InputError(f"memory budget {text!r} must be positive")
    return int(value * scale)


def plan_index(n: int, dim: int, kind: str = AUTO_KIND, memory_budget: int | None = None) -> tuple[str, dict]:
    """(kind, params) for n vectors of dim under a memory budget in bytes (None: no limit).

    ``auto``: exact (flat) up to AUTO_FLAT_ROWS rows; above, IVF with 8-bit scalar quantisation and
    float16 re-ranking (ivfsq, refine 1: 3 bytes a dimension), without the re-ranking copies when those
    do not fit (1 byte a dimension), and IVF-PQ with as many code bytes as fit when even that does not.
    A named kind keeps its defaults; its budget is checked. Raises InputError when nothing fits.
    """
    if kind != AUTO_KIND:
        p = _auto_params(kind, n, dim, {})
        need = index_bytes(kind, n, dim, p)
        if memory_budget and need > memory_budget:
            raise InputError(f"a {kind} index of {n} x {dim} needs about {need / 2**20:.0f} MiB, over the memory "
                             f"budget of {memory_budget / 2**20:.0f} MiB; use --kind auto or a larger budget")
        return kind, p
    options = []
    if n <= AUTO_FLAT_ROWS:
        options.append(("flat", {}))
    options += [("ivfsq", {"refine": 1}), ("ivfsq", {"refine": 0})]
    for kind_, over in options:
        p = _auto_params(kind_, n, dim, over)
        if not memory_budget or index_bytes(kind_, n, dim, p) <= memory_budget:
            return kind_, p
    # IVF-PQ without the exact copies: the largest code (bytes a vector) that fits.
    per_row = memory_budget // max(n, 1) - 8
    ms = [m for m in range(1, dim + 1) if dim % m == 0 and m <= per_row]
    if not ms:
        raise InputError(f"no index of {n} x {dim} fits a memory budget of {memory_budget / 2**20:.1f} MiB "
                         f"(the smallest needs about {(n * 9) / 2**20:.1f} MiB)")
    p = _auto_params("ivfpq", n, dim, {"m": max(ms), "k_factor": 0})
    return "ivfpq", p


def _auto_params(kind: str, n: int, dim: int, params: dict) -> dict:
    p = dict(INDEX_KINDS[kind].defaults)
    p.update({k: v for k, v in params.items() if v is not None})
    if kind == "ivfsq":
        if not p["nlist"]:
            p["nlist"] = _nlist_for(n)
        p["nprobe"] = int(min(max(1, p["nprobe"]), p["nlist"]))
    if kind == "ivfpq4":
        if not p["nlist"]:
            p["nlist"] = _nlist_for(n)
        if not p["m"]:
            p["m"] = dim // 2 if dim % 2 == 0 else dim
        if dim % int(p["m"]):
            raise InputError(f"ivfpq4: m={p['m']} must divide the vector size {dim}")
        p["nprobe"] = int(min(max(1, p["nprobe"]), p["nlist"]))
    if kind == "ivfpq":
        if not p["nlist"]:
            p["nlist"] = int(max(1, min(4 * int(np.sqrt(max(n, 1))), n // 39 if n >= 39 else 1, 65536)))
        if not p["m"]:
            p["m"] = next(m for m in (dim // 8, dim // 4, dim // 2, dim, 1) if m >= 1 and dim % m == 0)
        if dim % p["m"]:
            raise InputError(f"ivfpq: m={p['m']} must divide the vector size {dim}")
        p["nprobe"] = min(p["nprobe"], p["nlist"])
    return p


def check_params(kind: str, n: int, dim: int, p: dict, train_rows: int = 200_000) -> None:
    """Raise InputError, in one line, for parameters faiss cannot take for ``n`` rows of ``dim``: it would
    abort the process (HNSW with M < 2 fails an assertion) or end in a traceback (k-means with more lists
    than training rows). Called with the resolved parameters, before faiss sees them."""
    def need(name: str, flag: str, lo: int, hi: int | None = None, why: str = "") -> None:
        if name not in p or p[name] is None:
            return
        try:
            value = int(p[name])
        except (TypeError, ValueError):
            raise InputError(f"{flag} {p[name]!r}: give a whole number") from None
        if value < lo or (hi is not None and value > hi):
            span = f"{lo}..{hi}" if hi is not None else f"at least {lo}"
            raise InputError(f"{flag} {value}: give {span}" + (f" ({why})" if why else ""))

    if kind == "hnsw":
        need("M", "--hnsw-m", 2, why="links per node of the graph; faiss aborts below 2")
        need("ef_search", "--ef-search", 1)
        need("ef_construction", "ef_construction", 1)
    if kind in IVF_KINDS:
        n_train = min(n, train_rows)
        need("nlist", "--nlist", 1, n_train,
             why=f"k-means needs a training row for every list and trains on {n_train} of the {n} rows indexed "
                 f"here; the default for this store is {_auto_params(kind, n, dim, {})['nlist']}")
        need("nprobe", "--nprobe", 1, int(p["nlist"]), why="lists probed per query, at most --nlist")
        if kind in ("ivfpq", "ivfpq4"):
            need("m", "--pq-m", 1, dim, why=f"sub-quantizers, a divisor of the vector size {dim}")
        if kind == "ivfpq4" and n_train < 16:
            raise InputError(f"an ivfpq4 index trains 16 centroids per sub-quantizer (4-bit codes) and this store "
                             f"has {n} rows to index; use --kind flat (exact) at this size")
        if kind in ("ivfsq", "ivfpq4"):
            need("refine", "refine", 0, 1)
        if p.get("k_factor") not in (None, 0, 0.0) and float(p["k_factor"]) < 1:
            raise InputError(f"k_factor {p['k_factor']}: give at least 1 (candidates re-ranked per result)")


def _new_index(kind: str, dim: int, p: dict, n: int):
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, int(p["M"]), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(p["ef_construction"])
        index.hnsw.efSearch = int(p["ef_search"])
        return index
    if kind == "ivfsq":
        # Past about 4096 lists, choosing a query's lists by a flat scan of every centroid costs more than
        # scanning the lists: an HNSW graph over the centroids picks them instead.
        quantizer = "_HNSW32" if int(p["nlist"]) > 4096 else ""
        spec = f"IVF{int(p['nlist'])}{quantizer},SQ8" + (",Refine(SQfp16)" if int(p["refine"]) else "")
        index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
        faiss.extract_index_ivf(index).nprobe = int(p["nprobe"])
        if int(p["refine"]):
            faiss.downcast_index(index).k_factor = float(p["k_factor"])
        return index
    if kind == "ivfpq4":
        quantizer = "_HNSW32" if int(p["nlist"]) > 4096 else ""
        index = faiss.index_factory(dim, f"IVF{int(p['nlist'])}{quantizer},PQ{int(p['m'])}x4fs",
                                    faiss.METRIC_INNER_PRODUCT)
        faiss.extract_index_ivf(index).nprobe = int(p["nprobe"])
        return index
    nbits = int(p["nbits"]) if n >= 2 ** int(p["nbits"]) * 4 else max(1, int(np.log2(max(n // 4, 2))))
    p["nbits"] = nbits
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFPQ(quantizer, dim, int(p["nlist"]), int(p["m"]), nbits, faiss.METRIC_INNER_PRODUCT)
    ivf.nprobe = int(p["nprobe"])
    if not p.get("k_factor"):  # no exact copies (a memory budget chose this): codes only
        return ivf
    refine = faiss.IndexRefineFlat(ivf)
    refine.k_factor = float(p["k_factor"])
    return refine


def gpu_available() -> bool:
    """True when the installed faiss has GPU support and sees a GPU (faiss-gpu imports without one)."""
    import faiss

    try:
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:  # a GPU build whose CUDA runtime cannot start
        return False


def _use_gpu(device: str) -> bool:
    device = str(device or "cpu")
    if device == "cpu":
        return False
    if device == "auto":
        return gpu_available()
    if device.startswith("cuda"):
        if not gpu_available():
            raise InputError("--device cuda: the installed faiss has no GPU support or sees no GPU (install "
                             "faiss-gpu instead of faiss-cpu on a GPU machine, or use --device cpu)")
        return True
    raise InputError(f"unknown device {device!r}; use auto, cpu or cuda")


def _train(index, x: np.ndarray, gpu: bool) -> None:
    """Train; on the GPU the IVF k-means runs there (its centroids land in the CPU index as usual)."""
    import faiss

    if gpu:
        ivf = faiss.extract_index_ivf(index)
        res = faiss.StandardGpuResources()
        flat = faiss.IndexFlatIP(ivf.d) if ivf.metric_type == faiss.METRIC_INNER_PRODUCT else faiss.IndexFlatL2(ivf.d)
        ivf.clustering_index = faiss.index_cpu_to_gpu(res, 0, flat)
        try:
            index.train(x)
        finally:
            ivf.clustering_index = None
        return
    index.train(x)


class _ExactTopK:
    """Exact top-(k+1) inner products of a few queries over vectors that arrive in chunks (numpy)."""

    def __init__(self, queries: np.ndarray, positions: np.ndarray, k: int):
        self.q, self.pos, self.k = queries, positions, k
        self.scores = np.full((len(queries), 0), -np.inf, np.float32)
        self.ids = np.zeros((len(queries), 0), np.int64)

    def update(self, vecs: np.ndarray, start: int) -> None:
        sims = self.q @ vecs.T  # (n_queries, chunk)
        ids = np.arange(start, start + vecs.shape[0], dtype=np.int64)
        ids = np.broadcast_to(ids, sims.shape)
        # A query's own row is left out: the queries stand for new vectors that are not in the index.
        sims = np.where(ids == self.pos[:, None], -np.inf, sims)
        s = np.concatenate([self.scores, sims], axis=1)
        i = np.concatenate([self.ids, ids], axis=1)
        keep = min(self.k, s.shape[1])
        top = np.argpartition(-s, keep - 1, axis=1)[:, :keep]
        self.scores = np.take_along_axis(s, top, 1)
        self.ids = np.take_along_axis(i, top, 1)

    def result(self) -> np.ndarray:
        return self.ids


class DiskRefined:
    """A faiss index whose k * k_factor candidates are re-ranked by exact inner products with float16 copies
    of the vectors read from a file (a read-only memory map: the pages a query touches are read from disk
    or the page cache, not held by the process). ``vectors``: (ntotal, dim) float16, unit rows, index order."""

    def __init__(self, base, vectors: np.ndarray, k_factor: float):
        self.base, self.vectors, self.k_factor = base, vectors, float(k_factor)
        self.ntotal, self.d = base.ntotal, base.d

    def search(self, queries: np.ndarray, k: int):
        kk = max(k, int(np.ceil(k * self.k_factor)))
        _, cand = self.base.search(queries, kk)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        for i, (q, c) in enumerate(zip(queries, cand)):
            c = c[c >= 0]
            if c.size == 0:
                continue
            order = np.sort(c)  # ascending offsets: the reads go forward through the file
            exact = self.vectors[order].astype(np.float32) @ q
            top = np.argsort(-exact, kind="stable")[:k]
            scores[i, :top.size], ids[i, :top.size] = exact[top], order[top]
        return scores, ids


def set_search_param(index, kind: str, name: str, value) -> None:
    """Set an index's search parameter (ef_search, nprobe, k_factor) in place."""
    import faiss

    if isinstance(index, DiskRefined):
        if name == "k_factor":
            index.k_factor = float(value)
            return
        index = index.base
    if kind == "hnsw" and name == "ef_search":
        faiss.downcast_index(index).hnsw.efSearch = int(value)
    elif kind in IVF_KINDS and name == "nprobe":
        faiss.extract_index_ivf(index).nprobe = int(value)
    elif kind in IVF_KINDS and name == "k_factor":
        top = faiss.downcast_index(index)
        if hasattr(top, "k_factor"):
            top.k_factor = float(value)


def _k_factor(index) -> float | None:
    """The re-ranking depth of an index that re-ranks its candidates (DiskRefined, faiss IndexRefine), else None."""
    import faiss

    if isinstance(index, DiskRefined):
        return index.k_factor
    top = faiss.downcast_index(index)
    return float(top.k_factor) if isinstance(top, faiss.IndexRefine) else None


def tune_search(index, kind: str, queries: np.ndarray, positions: np.ndarray, truth: np.ndarray,
                target: float, k: int = 10) -> dict:
    """The cheapest setting of the kind's search parameter (SEARCH_GRID) with recall@k >= target, and for an
    index that re-ranks its candidates, the shallowest re-ranking depth (k_factor) at which one reaches it.

    The search parameter is swept upwards at the index's own k_factor first; when recall stops rising
    (PLATEAU_STEPS steps in a row that add under PLATEAU_GAIN) the re-ranking depth, not the search breadth,
    is the ceiling, and the sweep starts again at twice the depth, up to K_FACTOR_MAX. Re-ranking reads
    k * k_factor vectors a query (from disk for ivfpq4), so the smallest depth that reaches the target wins.

    queries: (q, dim) float32 normalised, stored at ``positions`` in the index; truth: (q, k) exact
    neighbours without the query itself. Returns {param, chosen, k_factor (re-ranking kinds), recall_at_k,
    target_recall, k, n_queries, reached, method, sweep: [{value, recall, ms_per_query[, k_factor]}]}.
    """
    import faiss

    name = SEARCH_PARAM[kind]
    base = index.base if isinstance(index, DiskRefined) else index
    grid = [v for v in SEARCH_GRID[name]
            if name != "nprobe" or v <= faiss.extract_index_ivf(base).nlist]
    if name == "nprobe" and faiss.extract_index_ivf(base).nlist not in grid:
        grid.append(int(faiss.extract_index_ivf(base).nlist))
    kf0 = _k_factor(index)
    reranks = kf0 is not None
    depths = [kf0 * 2 ** i for i in range(8) if kf0 * 2 ** i <= max(kf0, K_FACTOR_MAX)] if reranks else [None]
    kk = min(k, truth.shape[1])
    sweep, chosen = [], None
    for depth in depths:
        if reranks:
            set_search_param(index, kind, "k_factor", depth)
        flat = 0
        for value in grid:
            set_search_param(index, kind, name, value)
            t = time.perf_counter()
            _, found = index.search(queries, kk + 1)
            ms = (time.perf_counter() - t) * 1e3 / max(1, len(queries))
            hits = 0
            for f, tr, own in zip(found, truth, positions):
                got = [x for x in f if x != own and x >= 0][:kk]
                hits += len(set(got) & set(tr[:kk].tolist()))
            recall = hits / max(1, kk * len(queries))
            row = {"value": int(value), "recall": round(recall, 4), "ms_per_query": round(ms, 3)}
            if reranks:
                row["k_factor"] = _plain_number(depth)
            gain = recall - sweep[-1]["recall"] if sweep and sweep[-1].get("k_factor") == row.get("k_factor") else 1.0
            sweep.append(row)
            if recall >= target:
                chosen = row
                break
            flat = flat + 1 if gain < PLATEAU_GAIN else 0
            if reranks and flat >= PLATEAU_STEPS:
                break  # the depth is the ceiling: more breadth finds nothing the re-ranking keeps
        if chosen is not None:
            break
    reached = chosen is not None
    if not reached:
        chosen = max(sweep, key=lambda r: (r["recall"], -r.get("k_factor", 0), -r["value"]))
    if reranks:
        set_search_param(index, kind, "k_factor", chosen["k_factor"])
    set_search_param(index, kind, name, chosen["value"])
    out = {"param": name, "chosen": chosen["value"], "recall_at_k": chosen["recall"], "target_recall": target,
           "k": kk, "n_queries": int(len(queries)), "reached": reached,
           "method": "stored rows as held-out queries (each one's own row left out), recall against exact "
                     "search over every indexed vector",
           "sweep": sweep}
    if reranks:
        out["k_factor"] = chosen["k_factor"]
    return out


def _plain_number(x: float):
    return int(x) if float(x).is_integer() else float(x)


def build_index(root, *, on: str = "image", kind: str = "flat", params: dict | None = None,
                chunk_rows: int = 65536, progress: Callable[[int], None] | None = None,
                train_rows: int = 200_000, seed: int = 0, memory_budget=None,
                target_recall: float | None = None, k: int = 10, device: str = "cpu") -> dict:
    """Build and save an index over the rows with status 'ok'. Returns the sidecar dict.

    Reads the store in chunks of ``chunk_rows`` (the index itself must fit in memory; the store need not).
    ``kind='auto'`` chooses kind and parameters from the row count and ``memory_budget`` (bytes or '4G';
    see `plan_index`). ``target_recall`` (approximate kinds): after the build, the search parameter
    (SEARCH_PARAM) is set to the cheapest value of SEARCH_GRID whose recall@k on TUNE_QUERIES held-out
    queries reaches it (stored rows as queries, each one's own row left out, against exact search), with the
    re-ranking depth deepened where breadth stops helping (`tune_search`), and the sweep is recorded in the
    sidecar's ``tuning``. ``device``: 'cuda' trains IVF's k-means on the GPU when
    faiss has GPU support and sees a GPU ('auto': when available); the file written is a CPU index.
    """
    import faiss

    if kind != AUTO_KIND:
        _check_choice(kind, INDEX_KINDS, "index kind")
    _check_choice(on, INDEX_ON, "index target (--on)")
    budget = parse_bytes(memory_budget)
    if target_recall is not None and not 0.0 < float(target_recall) <= 1.0:
        raise InputError(f"--target-recall must be in (0, 1], got {target_recall}")
    gpu = _use_gpu(device)
    reader = StoreReader(root)
    lock = IndexLock(root)
    try:
        lock.__enter__()
    except BaseException:
        reader.close()
        raise
    try:
        column = INDEX_ON[on]
        rows = reader.select(status=schema.STATUS_OK)
        if rows.size == 0:
            raise StoreError(f"{root}: no rows to index (the store has no image with status 'ok')")
        dim = reader.embed_dim if on == "image" else reader.misalignment_dim
        kind, planned = plan_index(rows.size, dim, kind, budget)
        p = _auto_params(kind, rows.size, dim, {**planned, **(params or {})})
        check_params(kind, int(rows.size), dim, p, train_rows)  # before faiss: an abort or a traceback otherwise
        if budget and index_bytes(kind, rows.size, dim, p) > budget:
            raise InputError(f"this {kind} index needs about {index_bytes(kind, rows.size, dim, p) / 2**20:.0f} "
                             f"MiB, over the memory budget of {budget / 2**20:.0f} MiB")
        index = _new_index(kind, dim, p, rows.size)
        rng = np.random.default_rng(seed)
        if not index.is_trained:
            n_train = min(train_rows, rows.size)
            if kind in ("ivfsq", "ivfpq4"):  # 128 points a centroid trains k-means well; more only costs time
                n_train = min(n_train, max(128 * int(p["nlist"]), 10_000))
            sample = np.sort(rng.choice(rows, size=n_train, replace=False))
            _train(index, _normalise(reader.read(column, sample)), gpu)
        tune = target_recall is not None and kind in SEARCH_PARAM
        truth = None
        if tune:
            q_pos = np.sort(rng.choice(rows.size, size=min(TUNE_QUERIES, rows.size), replace=False))
            queries = _normalise(reader.read(column, rows[q_pos]))
            truth = _ExactTopK(queries, q_pos, k)
        paths = index_paths(root, on, kind)
        # New data files under names of their own (the build's), then the sidecar naming them replaces the old
        # one in one rename, then the old build's files go: a kill or a failure part way leaves the old index
        # whole (or none) and files no sidecar names, never a mix that is used.
        build = secrets.token_hex(6)
        stem = paths["sidecar"].with_suffix("")
        new_files = {key: Path(f"{stem}.{build}{suffix}") for key, suffix in _DATA_SUFFIX.items()}
        copies = None
        if disk_bytes(kind, rows.size, dim, p):
            copies = _CopiesWriter(new_files["vectors"], rows.size, dim)
        else:
            del new_files["vectors"]
        try:
            start = 0
            for chunk, vecs in reader.iter_chunks(column, rows, chunk_rows=chunk_rows):
                vecs = _normalise(vecs)
                index.add(vecs)
                if copies:
                    copies.write(vecs)
                if truth is not None:
                    truth.update(vecs, start)
                start += len(vecs)
                if progress:
                    progress(len(chunk))
            if copies:
                copies.close()
                index = DiskRefined(index, copies.open(), float(p["k_factor"]))
            tuning = None
            if tune:
                tuning = tune_search(index, kind, queries, q_pos, truth.result(), float(target_recall), k)
                p[SEARCH_PARAM[kind]] = tuning["chosen"]
                if "k_factor" in tuning:
                    p["k_factor"] = tuning["k_factor"]
        except BaseException:
            if copies:
                copies.discard()
            raise
        if isinstance(index, DiskRefined):
            index = index.base
        old_files = _current_files(root, paths["sidecar"])
        made_dir = not paths["faiss"].parent.exists()
        try:
            paths["faiss"].parent.mkdir(exist_ok=True)
            faiss_sum = _write_index(index, new_files["faiss"])
            del index
            buf = io.BytesIO()
            np.save(buf, rows.astype(np.int64), allow_pickle=False)
            rows_bytes = buf.getvalue()
            files.atomic_write_bytes(new_files["rows"], rows_bytes)
            if copies:
                copies.commit()
        except OSError as exc:
            if copies:
                copies.discard()
            for f in new_files.values():
                f.unlink(missing_ok=True)
            if made_dir:
                try:
                    paths["faiss"].parent.rmdir()
                except OSError:
                    pass
            raise StoreError(f"{root}: cannot write the index ({exc.strerror or exc}); the store is unchanged; "
                             "fix the cause and build it again") from None
        fault("index-written")
        sidecar = {
            "format": "item-index", "schema_version": schema.SCHEMA_VERSION, "package_version": __version__,
            "created": now(), "kind": kind, "on": on, "column": column, "metric": "cosine", "dim": dim,
            "params": p, "count": int(rows.size), "shards": list(reader.shards),
            "memory_bytes": index_bytes(kind, int(rows.size), dim, p), "memory_budget": budget,
            "disk_bytes": disk_bytes(kind, int(rows.size), dim, p),
            "trained_on": "cuda" if gpu and kind in IVF_KINDS else "cpu",
            "tuning": tuning,
            "store_fingerprint": reader.fingerprint, "models": reader.models,
            "random_weights": reader.random_weights,
            "files": {"faiss": {"name": new_files["faiss"].name, **faiss_sum},
                      "rows": {"name": new_files["rows"].name, "bytes": len(rows_bytes),
                               "sha256": hashlib.sha256(rows_bytes).hexdigest()},
                      **({"vectors": {"name": new_files["vectors"].name, **copies.summary()}} if copies else {})},
        }
        try:
            atomic_write_json(paths["sidecar"], sidecar)
        except OSError as exc:
            for f in new_files.values():
                f.unlink(missing_ok=True)
            raise StoreError(f"{root}: cannot write the index sidecar ({exc.strerror or exc}); the store's rows "
                             "are unchanged; fix the cause and build it again") from None
        # The old build's files, and any a killed build of this index left behind (we hold index.lock).
        keep = {f.name for f in new_files.values()}
        for f in set(old_files) | {o for o in orphan_files(root) if o.name.split(".", 1)[0] == stem.name}:
            if f.name not in keep:
                f.unlink(missing_ok=True)
        return sidecar
    finally:
        reader.close()
        lock.__exit__()


class _CopiesWriter:
    """The float16 re-ranking copies of an ivfpq4 index, written as a .npy a chunk at a time under a temporary
    name (hashed as written) and renamed into place by ``commit`` after the index files."""

    def __init__(self, path: Path, n: int, dim: int):
        self.path, self.n, self.dim = Path(path), int(n), int(dim)
        self.path.parent.mkdir(exist_ok=True)
        self.tmp = files.temp_name(self.path)
        self.fh = os.fdopen(files.open_new(self.tmp), "wb")
        self.hash, self.bytes, self.rows = hashlib.sha256(), 0, 0
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
                                                      "fortran_order": False, "shape": (self.n, self.dim)})
        self._put(header.getvalue())

    def _put(self, data: bytes) -> None:
        self.fh.write(data)
        self.hash.update(data)
        self.bytes += len(data)

    def write(self, vecs: np.ndarray) -> None:
        self._put(np.ascontiguousarray(vecs, dtype=np.float16).tobytes())
        self.rows += len(vecs)

    def close(self) -> None:
        if self.rows != self.n:
            raise StoreError(f"{self.path.name}: wrote {self.rows} vectors, expected {self.n}")
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()

    def open(self) -> np.ndarray:
        return np.load(self.tmp, mmap_mode="r", allow_pickle=False)

    def summary(self) -> dict:
        return {"bytes": self.bytes, "sha256": self.hash.hexdigest()}

    def commit(self) -> None:
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        try:
            self.fh.close()
        except OSError:
            pass
        self.tmp.unlink(missing_ok=True)


def _current_files(root, sidecar: Path) -> list[Path]:
    """The data files the sidecar now at ``sidecar`` names (none when there is none or it is unreadable)."""
    try:
        info = json.loads(sidecar.read_text("utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(info, dict):
        return []
    info["file"] = sidecar.name
    return list(data_files(root, info).values())


def _write_index(index, path: Path) -> dict:
    """Write a faiss index through our own file (new, random name, no symlink followed, hashed as it is
    written), then rename it into place. Returns its size and sha256."""
    import faiss

    h = hashlib.sha256()
    size = 0

    def write(fh):
        failure: list[BaseException] = []

        def chunk(b) -> int:
            nonlocal size
            if failure:
                return 0
            try:
                fh.write(b)
            except BaseException as exc:  # raised here it would be lost inside faiss: keep it
                failure.append(exc)
                return 0
            h.update(b)
            size += len(b)
            return len(b)

        try:
            faiss.write_index(index, faiss.PyCallbackIOWriter(chunk))
        except RuntimeError as exc:
            if failure:
                raise failure[0] from None
            raise OSError(5, f"faiss could not write the index ({str(exc).splitlines()[0]})") from None
        if failure:
            raise failure[0]

    files.write_with(path, write)
    return {"bytes": size, "sha256": h.hexdigest()}


def list_indexes(root) -> list[dict]:
    """Every index sidecar of the store with 'fresh' (bool) and 'problem' (str) added."""
    folder = Path(root) / schema.INDEX_DIR
    if not folder.is_dir():
        return []
    reader = StoreReader(root)
    out = []
    for side in sorted(folder.glob("*.json")):
        try:
            info = json.loads(side.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            out.append({"file": side.name, "fresh": False, "problem": f"unreadable sidecar: {exc}"})
            continue
        info["file"] = side.name
        info["problem"] = _staleness(reader, info)
        info["fresh"] = info["problem"] == ""
        out.append(info)
    return out


def _staleness(reader: StoreReader, info: dict) -> str:
    rebuild = f"rebuild with `item store index {reader.root} --on {info.get('on')} --kind {info.get('kind')}`"
    if info.get("store_fingerprint") != reader.fingerprint:
        shards = info.get("shards")
        if isinstance(shards, list) and set(shards) < set(reader.shards):
            return f"stale: covers {len(shards)} of the store's {len(reader.shards)} shards; {rebuild}"
        return f"stale or foreign: built for other store contents than these (fingerprint differs); {rebuild}"
    if info.get("on") not in INDEX_ON or info.get("kind") not in INDEX_KINDS:
        return f"unknown kind or target ({info.get('kind')!r} on {info.get('on')!r}); {rebuild}"
    return ""


def _digest(path: Path, block: int = 1 << 22) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(block)
            if not chunk:
                return n, h.hexdigest()
            n += len(chunk)
            h.update(chunk)


def verify_index_files(root, info: dict, *, check_sums: bool = True, open_index: bool = False) -> str:
    """What is wrong with an index's .faiss and .rows.npy against its sidecar ('' when nothing).

    Checks presence, sizes, checksums (``check_sums``), the rows file (int64, in range, no repeats) and,
    with ``open_index``, reads the index and compares its size and dimension. Never raises.
    """
    paths = data_files(root, info)
    recorded = info.get("files") if isinstance(info.get("files"), dict) else {}
    for key, path in paths.items():  # ivfpq4's float16 copies: size always; content with check_sums == "all"
        if not path.is_file():
            return f"its {path.name} is missing"
        rec = recorded.get(key)
        if not isinstance(rec, dict):
            return f"the sidecar records no checksum of {path.name} (built by an older ITEM); rebuild it"
        if path.stat().st_size != rec.get("bytes"):
            return f"{path.name} has {path.stat().st_size} bytes, the sidecar says {rec.get('bytes')}"
        if check_sums and (key != "vectors" or check_sums == "all") and _digest(path)[1] != rec.get("sha256"):
            return f"{path.name} differs from the file this index was built with (sha256 mismatch)"
    try:
        rows = np.load(paths["rows"], allow_pickle=False)
    except (OSError, ValueError) as exc:
        return f"unreadable rows file ({exc})"
    if rows.dtype != np.int64 or rows.ndim != 1 or rows.size != info.get("count"):
        return f"rows file holds {rows.size} {rows.dtype} values, the sidecar says {info.get('count')} int64"
    if not open_index:
        return ""
    try:
        import faiss

        index = faiss.read_index(str(paths["faiss"]))
    except Exception as exc:  # faiss raises RuntimeError for a file that is not an index
        return f"unreadable .faiss file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    if index.ntotal != rows.size or index.d != info.get("dim"):
        return f"holds {index.ntotal} vectors of {index.d}, the sidecar says {info.get('count')} of {info.get('dim')}"
    return ""


def hit_rows(reader: StoreReader, scores: np.ndarray, rows: np.ndarray, k: int,
             exclude: set[int] | None = None) -> list[list[dict]]:
    """Search results as lists of dicts with each hit row's metadata (read for those rows only)."""
    wanted = np.unique(rows[rows >= 0])
    meta = reader.metadata([schema.ID, schema.PATH, schema.LABEL, schema.GENERATOR, schema.SPLIT, schema.CAPTION],
                           rows=wanted)
    at = {int(r): i for i, r in enumerate(wanted)}
    out = []
    for srow, rrow in zip(scores, rows):
        hits = []
        for s, r in zip(srow, rrow):
            if r < 0 or (exclude and int(r) in exclude):
                continue
            hits.append({"row": int(r), "similarity": float(s), **{c: str(v[at[int(r)]]) for c, v in meta.items()}})
        out.append(hits[:k])
    return out


class StoreIndex:
    """A loaded, fresh index: search by vectors, get store rows and cosine scores back."""

    def __init__(self, root, on: str = "image", kind: str | None = None, device: str = "cpu"):
        import faiss

        _check_choice(on, INDEX_ON, "index target (--on)")
        self.root = Path(root)
        self.reader = StoreReader(root)
        kinds = [kind] if kind else list(INDEX_KINDS)
        found = [k for k in kinds if index_paths(root, on, k)["sidecar"].is_file()]
        if not found:
            raise StoreError(f"{root}: no {kind or ''} index on {on}; build one with "
                             f"`item store index {root} --on {on} --kind {kind or 'flat'}`".replace("  ", " "))
        self.kind = found[0]
        paths = index_paths(root, on, self.kind)
        rebuild = f"rebuild it with `item store index {root} --on {on} --kind {self.kind}`"
        try:
            self.info = json.loads(paths["sidecar"].read_text("utf-8"))
            if not isinstance(self.info, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            self.reader.close()
            raise StoreError(f"{paths['sidecar'].name}: unreadable index sidecar ({exc}); {rebuild}") from None
        self.info["file"] = paths["sidecar"].name
        paths.update(data_files(root, self.info))
        try:
            check_version(self.info.get("schema_version"), str(paths["sidecar"]))
            problem = _staleness(self.reader, self.info) or verify_index_files(root, self.info)
            if problem:
                raise StoreError(f"{paths['sidecar'].name}: {problem}")
            try:
                self.index = faiss.read_index(str(paths["faiss"]))
            except Exception as exc:
                raise StoreError(f"{paths['faiss'].name}: unreadable index ({str(exc).splitlines()[0]}); "
                                 f"{rebuild}") from None
            self.rows = np.load(paths["rows"], allow_pickle=False)
            if self.index.ntotal != self.rows.size or self.rows.size != self.info["count"] \
                    or self.index.d != int(self.info["dim"]):
                raise StoreError(f"{paths['faiss'].name}: holds {self.index.ntotal} vectors, rows file "
                                 f"{self.rows.size}, sidecar {self.info['count']}: {rebuild}")
            if self.rows.size and (self.rows.min() < 0 or self.rows.max() >= self.reader.n_images):
                raise StoreError(f"{paths['rows'].name}: rows outside the store; {rebuild}")
        except BaseException:
            self.reader.close()
            raise
        self.on = on
        self.dim = int(self.info["dim"])
        p = self.info.get("params", {})
        if self.info.get("disk_bytes"):
            try:
                vectors = np.load(paths["vectors"], mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                self.reader.close()
                raise StoreError(f"{paths['vectors'].name}: unreadable re-ranking copies ({exc}); {rebuild}") from None
            if vectors.shape != (self.rows.size, self.dim) or vectors.dtype != np.float16:
                self.reader.close()
                raise StoreError(f"{paths['vectors'].name}: holds {vectors.shape} {vectors.dtype}, expected "
                                 f"({self.rows.size}, {self.dim}) float16; {rebuild}")
            self.index = DiskRefined(self.index, vectors, float(p.get("k_factor", 16)))
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = int(p.get("ef_search", 128))
        elif self.kind in IVF_KINDS:
            set_search_param(self.index, self.kind, "nprobe", p.get("nprobe", 32))
            if p.get("k_factor"):
                set_search_param(self.index, self.kind, "k_factor", p["k_factor"])
        self.device = "cpu"
        if _use_gpu(device) and not isinstance(self.index, DiskRefined):
            self._to_gpu()

    def _to_gpu(self) -> None:
        """Search on the GPU: flat and IVF indexes are copied there (faiss.index_cpu_to_gpu); HNSW and the
        float16 re-ranking stay on the CPU (faiss has no GPU version of them)."""
        import faiss

        self._gpu_res = faiss.StandardGpuResources()
        top = faiss.downcast_index(self.index)
        if isinstance(top, faiss.IndexRefine):
            base = faiss.index_cpu_to_gpu(self._gpu_res, 0, faiss.downcast_index(top.base_index))
            refine = faiss.IndexRefine(base, top.refine_index)
            refine.k_factor = top.k_factor
            self._gpu_parts = (base, top)  # keep the parts alive: the new IndexRefine does not own them
            self.index = refine
        elif self.kind in ("flat", "ivfpq", "ivfsq"):
            self.index = faiss.index_cpu_to_gpu(self._gpu_res, 0, self.index)
        else:
            return
        self.device = "cuda"


    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(n_queries, dim) -> (scores (n_queries, k) float32 cosine, rows (n_queries, k) int64; -1 = none)."""
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if q.shape[1] != self.dim:
            raise InputError(f"query has {q.shape[1]} dimensions, the index {self.dim}")
        k = max(1, min(int(k), self.rows.size))
        scores, ids = self.index.search(_normalise(q), k)
        rows = np.where(ids >= 0, self.rows[np.clip(ids, 0, None)], -1)
        return scores, rows

    def search_rows(self, queries: np.ndarray, k: int = 10, exclude: set[int] | None = None) -> list[list[dict]]:
        """Like :meth:`search`, with each hit as a dict of the row's metadata (row, id, path, label, ...)."""
        extra = len(exclude) if exclude else 0
        scores, rows = self.search(queries, k + extra)
        return hit_rows(self.reader, scores, rows, k, exclude)

    def close(self) -> None:
        self.reader.close()
