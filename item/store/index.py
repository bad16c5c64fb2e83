"""FAISS indexes over a store's image embeddings or misalignment vectors (cosine similarity).

Vectors are L2-normalised and searched by inner product, so scores are cosines. Each index has
three files under DIR/index/: ``ON-KIND.faiss`` (faiss.write_index, no pickle), ``ON-KIND.rows.npy``
(the store row of every indexed vector, read with allow_pickle=False) and ``ON-KIND.json``, the
sidecar written last, which makes the index visible. The sidecar records the store fingerprint it
was built from (compat, and every shard's name, counts, size and checksum) and the size and sha256
of its two files: an index is fresh only while the store's fingerprint is the same, and it is used
only when its files are the ones the sidecar describes. A stale, foreign or damaged index is
refused, never silently used. Building takes ``index.lock`` and ``writer.lock`` shared
(:class:`~item.store.locks.IndexLock`), so two builds never race and ``--overwrite`` waits.
"""

from __future__ import annotations

import hashlib
import io
import json
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
    _check_choice(kind, INDEX_KINDS, "index kind")
    _check_choice(on, INDEX_ON, "index target (--on)")
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
        # The sidecar goes last and records the checksums of both files: a kill or a failure part way
        # leaves no index, or an old one whose files no longer match its sidecar (refused), never a
        # torn one that is used. A failure leaves the temporary files removed.
        made_dir = not paths["faiss"].parent.exists()
        try:
            paths["faiss"].parent.mkdir(exist_ok=True)
            faiss_sum = _write_index(index, paths["faiss"])
            del index
            buf = io.BytesIO()
            np.save(buf, rows.astype(np.int64), allow_pickle=False)
            rows_bytes = buf.getvalue()
            files.atomic_write_bytes(paths["rows"], rows_bytes)
        except OSError as exc:
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
            "store_fingerprint": reader.fingerprint, "models": reader.models,
            "random_weights": reader.random_weights,
            "files": {"faiss": faiss_sum,
                      "rows": {"bytes": len(rows_bytes), "sha256": hashlib.sha256(rows_bytes).hexdigest()}},
        }
        try:
            atomic_write_json(paths["sidecar"], sidecar)
        except OSError as exc:
            raise StoreError(f"{root}: cannot write the index sidecar ({exc.strerror or exc}); the store's rows "
                             "are unchanged; fix the cause and build it again") from None
        return sidecar
    finally:
        reader.close()
        lock.__exit__()


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
    side = Path(root) / schema.INDEX_DIR / info["file"]
    base = side.with_suffix("")
    paths = {"faiss": base.with_suffix(".faiss"), "rows": Path(str(base) + ".rows.npy")}
    recorded = info.get("files") if isinstance(info.get("files"), dict) else {}
    for key, path in paths.items():
        if not path.is_file():
            return f"its {path.name} is missing"
        rec = recorded.get(key)
        if not isinstance(rec, dict):
            return f"the sidecar records no checksum of {path.name} (built by an older ITEM); rebuild it"
        if path.stat().st_size != rec.get("bytes"):
            return f"{path.name} has {path.stat().st_size} bytes, the sidecar says {rec.get('bytes')}"
        if check_sums and _digest(path)[1] != rec.get("sha256"):
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
        rebuild = f"rebuild it with `item store index {root} --on {on} --kind {self.kind}`"
        try:
            self.info = json.loads(paths["sidecar"].read_text("utf-8"))
            if not isinstance(self.info, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            self.reader.close()
            raise StoreError(f"{paths['sidecar'].name}: unreadable index sidecar ({exc}); {rebuild}") from None
        self.info["file"] = paths["sidecar"].name
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
        return hit_rows(self.reader, scores, rows, k, exclude)

    def close(self) -> None:
        self.reader.close()
