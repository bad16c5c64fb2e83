"""FAISS indexes over a store's image embeddings or misalignment vectors (cosine similarity).

Vectors are L2-normalised and searched by inner product, so scores are cosines. Each index has
three files under DIR/index/: ``ON-KIND.faiss`` (faiss.write_index, no pickle), ``ON-KIND.rows.npy``
(the store row of every indexed vector, read with allow_pickle=False) and ``ON-KIND.json``, the
sidecar written last, which makes the index visible. The sidecar lists the shards the index
covers; when the store's shards differ the index is stale and is refused, never silently used.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from item import __version__
from item.errors import InputError, StoreError
from item.faults import fault
from item.store import schema
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
}
INDEX_ON = {"image": schema.IMAGE_EMB, "misalignment": schema.MISALIGNMENT}


def _check_choice(value: str, registry: dict, what: str) -> None:
    if value not in registry:
        raise InputError(f"unknown {what} {value!r}; available: {', '.join(registry)}")


def index_paths(root, on: str, kind: str) -> dict[str, Path]:
    base = Path(root) / schema.INDEX_DIR / f"{on}-{kind}"
    return {"faiss": base.with_suffix(".faiss"), "rows": Path(str(base) + ".rows.npy"),
            "sidecar": base.with_suffix(".json")}


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.maximum(norms, 1e-12, out=norms)
    return x / norms


def _auto_params(kind: str, n: int, dim: int, params: dict) -> dict:
    p = dict(INDEX_KINDS[kind].defaults)
    p.update({k: v for k, v in params.items() if v is not None})
    if kind == "ivfpq":
        if not p["nlist"]:
            p["nlist"] = int(max(1, min(4 * int(np.sqrt(max(n, 1))), n // 39 if n >= 39 else 1, 65536)))
        if not p["m"]:
            p["m"] = next(m for m in (dim // 8, dim // 4, dim // 2, dim, 1) if m >= 1 and dim % m == 0)
        if dim % p["m"]:
            raise InputError(f"ivfpq: m={p['m']} must divide the vector size {dim}")
        p["nprobe"] = min(p["nprobe"], p["nlist"])
    return p


def _new_index(kind: str, dim: int, p: dict, n: int):
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, int(p["M"]), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(p["ef_construction"])
        index.hnsw.efSearch = int(p["ef_search"])
        return index
    nbits = int(p["nbits"]) if n >= 2 ** int(p["nbits"]) * 4 else max(1, int(np.log2(max(n // 4, 2))))
    p["nbits"] = nbits
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFPQ(quantizer, dim, int(p["nlist"]), int(p["m"]), nbits, faiss.METRIC_INNER_PRODUCT)
    ivf.nprobe = int(p["nprobe"])
    refine = faiss.IndexRefineFlat(ivf)
    refine.k_factor = float(p["k_factor"])
    return refine


def build_index(root, *, on: str = "image", kind: str = "flat", params: dict | None = None,
                chunk_rows: int = 65536, progress: Callable[[int], None] | None = None,
                train_rows: int = 200_000, seed: int = 0) -> dict:
    """Build and save an index over the rows with status 'ok'. Returns the sidecar dict.

    Reads the store in chunks of ``chunk_rows`` (the index itself must fit in memory; the store need not).
    """
    import faiss

    _check_choice(kind, INDEX_KINDS, "index kind")
    _check_choice(on, INDEX_ON, "index target (--on)")
    reader = StoreReader(root)
    try:
        column = INDEX_ON[on]
        rows = reader.select(status=schema.STATUS_OK)
        if rows.size == 0:
            raise StoreError(f"{root}: no rows to index (the store has no image with status 'ok')")
        dim = reader.embed_dim if on == "image" else reader.misalignment_dim
        p = _auto_params(kind, rows.size, dim, params or {})
        index = _new_index(kind, dim, p, rows.size)
        if not index.is_trained:
            rng = np.random.default_rng(seed)
            sample = np.sort(rng.choice(rows, size=min(train_rows, rows.size), replace=False))
            index.train(_normalise(reader.read(column, sample)))
        for chunk, vecs in reader.iter_chunks(column, rows, chunk_rows=chunk_rows):
            index.add(_normalise(vecs))
            if progress:
                progress(len(chunk))
        paths = index_paths(root, on, kind)
        paths["faiss"].parent.mkdir(exist_ok=True)
        # The sidecar goes last: a kill before it leaves an old (stale) or no index, never a torn one.
        if paths["sidecar"].exists():
            paths["sidecar"].unlink()
        tmp_index = paths["faiss"].with_name("." + paths["faiss"].name + ".tmp")
        faiss.write_index(index, str(tmp_index))
        os.replace(tmp_index, paths["faiss"])
        tmp_rows = paths["rows"].with_name("." + paths["rows"].name + ".tmp")
        with open(tmp_rows, "wb") as fh:
            np.save(fh, rows.astype(np.int64), allow_pickle=False)
        os.replace(tmp_rows, paths["rows"])
        fault("index-written")
        sidecar = {
            "format": "item-index", "schema_version": schema.SCHEMA_VERSION, "package_version": __version__,
            "created": now(), "kind": kind, "on": on, "column": column, "metric": "cosine", "dim": dim,
            "params": p, "count": int(rows.size), "shards": list(reader.shards),
            "store_fingerprint": reader.fingerprint, "models": reader.models,
            "random_weights": reader.random_weights,
        }
        atomic_write_json(paths["sidecar"], sidecar)
        return sidecar
    finally:
        reader.close()


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
    shards = info.get("shards")
    if shards != reader.shards:
        n_have = len(shards) if isinstance(shards, list) else "?"
        return (f"stale: covers {n_have} shard(s), the store now has {len(reader.shards)}; rebuild with "
                f"`item store index {reader.root} --on {info.get('on')} --kind {info.get('kind')}`")
    return ""


class StoreIndex:
    """A loaded, fresh index: search by vectors, get store rows and cosine scores back."""

    def __init__(self, root, on: str = "image", kind: str | None = None):
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
        self.info = json.loads(paths["sidecar"].read_text("utf-8"))
        check_version(self.info.get("schema_version"), str(paths["sidecar"]))
        problem = _staleness(self.reader, self.info)
        if problem:
            raise StoreError(f"{paths['sidecar'].name}: {problem}")
        self.index = faiss.read_index(str(paths["faiss"]))
        self.rows = np.load(paths["rows"], allow_pickle=False)
        if self.index.ntotal != self.rows.size or self.rows.size != self.info["count"]:
            raise StoreError(f"{paths['faiss'].name}: holds {self.index.ntotal} vectors, rows file "
                             f"{self.rows.size}, sidecar {self.info['count']}: rebuild the index")
        self.on = on
        self.dim = int(self.info["dim"])
        p = self.info.get("params", {})
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = int(p.get("ef_search", 128))
        elif self.kind == "ivfpq":
            faiss.extract_index_ivf(self.index).nprobe = int(p.get("nprobe", 32))
            faiss.downcast_index(self.index).k_factor = float(p.get("k_factor", 8))

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
        meta = self.reader.metadata([schema.ID, schema.PATH, schema.LABEL, schema.GENERATOR, schema.SPLIT,
                                     schema.CAPTION])
        out = []
        for srow, rrow in zip(scores, rows):
            hits = []
            for s, r in zip(srow, rrow):
                if r < 0 or (exclude and int(r) in exclude):
                    continue
                hits.append({"row": int(r), "similarity": float(s), **{c: str(v[r]) for c, v in meta.items()}})
            out.append(hits[:k])
        return out

    def close(self) -> None:
        self.reader.close()
