"""Read a store: counts, row selection, embeddings in chunks, objects, metadata tables.

Rows are numbered globally in manifest order: shard k's rows follow shard k-1's. Only shards the
manifest lists are read, so a reader opened while a writer works (or after it died) sees
complete shards only. Each shard is checked against its manifest entry when opened (size, row
counts, vector widths) and refused with one line when they disagree. Metadata columns are read
when asked for, one column at a time, and filters run shard by shard.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np

from item.errors import StoreError
from item.manifests import UNKNOWN_GENERATOR, generator_name
from item.store import schema
from item.store.manifest import read_manifest
from item.store.overlay import apply_overlay, read_overlay
from item.store.shards import open_checked


def _named_generators(col: np.ndarray) -> np.ndarray:
    """A generator column as readers see it: no name ('' in stores before, '-' in older tables) ->
    ``unknown`` (:data:`item.manifests.UNKNOWN_GENERATOR`), whatever wrote the shard."""
    blank = np.isin(col.astype(str), ("", "-")) if col.size else np.zeros(0, bool)
    if blank.any():
        col = col.copy()
        col[blank] = UNKNOWN_GENERATOR
    return col


def _decode(arr) -> np.ndarray:
    """h5py variable-length strings -> numpy array of Python str (object dtype)."""
    out = np.empty(len(arr), dtype=object)
    for i, s in enumerate(arr):
        out[i] = s.decode("utf-8") if isinstance(s, bytes) else str(s)
    return out


def manifest_fingerprint(manifest: dict) -> str:
    """Identifies a store's content from its manifest: its compat key and the shards it holds (names,
    counts and, where recorded, sizes and checksums), in order. 32 hex characters."""
    import hashlib

    h = hashlib.sha256(json.dumps(manifest["compat"], sort_keys=True).encode())
    for e in manifest["shards"]:
        h.update(f"{e['name']}:{e['n_images']}:{e['n_objects']}:{e.get('bytes', '')}:{e.get('sha256', '')}\n"
                 .encode())
    return h.hexdigest()[:32]


#: Shard files a reader keeps open at once (least recently used closed first).
MAX_OPEN_SHARDS = 16


class StoreReader:
    """Read-only view of the store at ``root`` as its manifest describes it now."""

    def __init__(self, root):
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.shards = [e["name"] for e in self.manifest["shards"]]
        self._entries = {e["name"]: e for e in self.manifest["shards"]}
        self._columns: dict[str, np.ndarray] = {}
        counts = np.array([e["n_images"] for e in self.manifest["shards"]], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._files: dict[str, object] = {}

    # -- basic facts ----------------------------------------------------------------------
    @property
    def n_images(self) -> int:
        """Image rows, skipped ones included."""
        return int(self._offsets[-1])

    @property
    def counts(self) -> dict:
        return dict(self.manifest["counts"])

    @property
    def n_objects(self) -> int:
        return int(self.manifest["counts"]["n_objects"])

    @property
    def n_skipped(self) -> int:
        return int(self.manifest["counts"]["n_skipped"])

    @property
    def embed_dim(self) -> int:
        return int(self.manifest["embed_dim"])

    @property
    def misalignment_dim(self) -> int:
        return int(self.manifest["misalignment_dim"])

    @property
    def models(self) -> dict:
        return self.manifest["models"]

    @property
    def compat(self) -> dict:
        return self.manifest["compat"]

    @property
    def random_weights(self) -> bool:
        return bool(self.manifest["random_weights"])

    @property
    def fingerprint(self) -> str:
        """Identifies this store's content (:func:`manifest_fingerprint` of its manifest)."""
        return manifest_fingerprint(self.manifest)

    # -- shard access ---------------------------------------------------------------------
    def _file(self, name: str):
        f = self._files.pop(name, None)
        if f is None:
            f = open_checked(self.root / schema.SHARD_DIR / name, self._entries[name], self.embed_dim,
                             self.misalignment_dim, self.root)
            # Each open HDF5 file keeps its own caches: a reader that walks every shard of a large store
            # would hold them all. Keep the most recently used few open (callers use a shard's datasets
            # before they move to the next shard).
            while len(self._files) >= MAX_OPEN_SHARDS:
                self._files.pop(next(iter(self._files))).close()
        self._files[name] = f  # re-inserted: the dict's order is least recently used first
        return f

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _locate(self, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Group global rows by shard: yields (shard index, positions in ``rows``, local rows)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_images):
            raise StoreError(f"row out of range 0..{self.n_images - 1}")
        shard_of = np.searchsorted(self._offsets, rows, side="right") - 1
        for k in np.unique(shard_of):
            pos = np.nonzero(shard_of == k)[0]
            yield int(k), pos, rows[pos] - self._offsets[k]

    # -- metadata -------------------------------------------------------------------------
    def _column(self, name: str) -> np.ndarray:
        """One metadata column over all rows, read once and kept (strings as an object array)."""
        col = self._columns.get(name)
        if col is None:
            if name not in schema.METADATA_COLUMNS:
                raise StoreError(f"unknown metadata column {name!r}; available: {', '.join(schema.METADATA_COLUMNS)}")
            parts = [self._read_column(k, name) for k in range(len(self.shards))]
            col = np.concatenate(parts) if parts else np.array([], dtype=object)
            self._columns[name] = col
        return col

    def _read_column(self, k: int, name: str, local=None) -> np.ndarray:
        g = self._file(self.shards[k])[schema.G_IMAGES]
        if name not in g and name in schema.COLUMN_DEFAULT:  # older shards: see COLUMN_SINCE
            n = int(g[schema.ID].shape[0])
            col = np.full(n, schema.COLUMN_DEFAULT[name], dtype=schema.column_dtype(
                next(c.kind for c in schema.IMAGE_COLUMNS if c.name == name)))
            return col if local is None else col[local]
        ds = g[name if name in g else schema.COLUMN_FALLBACK.get(name, name)]  # older shards: see COLUMN_SINCE
        raw = ds[()] if local is None else ds[()][local]
        col = _decode(raw) if raw.dtype.kind in "OS" else raw
        if name in (schema.LABEL, schema.GENERATOR, schema.SPLIT) and self.overlay.get("rows"):
            # label / generator / split as annotated since (overlay.py)
            col = apply_overlay({schema.ID: self._read_column(k, schema.ID, local), name: col}, self.overlay)[name]
        if name == schema.GENERATOR:
            col = _named_generators(col)
        return col

    @cached_property
    def overlay(self) -> dict:
        """The store's metadata overlay as read when first needed (version 0 when there is none)."""
        return read_overlay(self.root)

    def metadata(self, columns=None, rows=None) -> dict[str, np.ndarray]:
        """Per-image metadata columns (all of them if None) for ``rows`` (all if None), as numpy arrays
        (strings as object arrays). Only the columns asked for are read; with ``rows``, only their shards."""
        names = list(columns or schema.METADATA_COLUMNS)
        unknown = [c for c in names if c not in schema.METADATA_COLUMNS]
        if unknown:
            raise StoreError(f"unknown metadata column(s) {unknown}; available: {', '.join(schema.METADATA_COLUMNS)}")
        if rows is None:
            return {c: self._column(c) for c in names}
        rows = np.asarray(rows, dtype=np.int64)
        out = {}
        for c in names:
            if c in self._columns:
                out[c] = self._columns[c][rows]
                continue
            col = None
            for k, pos, local in self._locate(rows):
                part = self._read_column(k, c, local)
                if col is None:
                    col = np.empty(rows.size, dtype=part.dtype)
                col[pos] = part
            out[c] = col if col is not None else np.array([], dtype=object)
        return out

    def iter_metadata(self, columns=None):
        """Yield (rows, {column: values}) shard by shard: memory bounded by one shard's metadata."""
        names = list(columns or schema.METADATA_COLUMNS)
        for k in range(len(self.shards)):
            rows = np.arange(self._offsets[k], self._offsets[k + 1], dtype=np.int64)
            yield rows, {c: self._read_column(k, c) for c in names}

    def table(self):
        """Per-image metadata as a pandas DataFrame (requires pandas), one row per image row."""
        try:
            import pandas as pd
        except ImportError:
            raise StoreError("pandas is needed for StoreReader.table(): pip install pandas") from None
        df = pd.DataFrame(self.metadata())
        df.insert(0, "row", np.arange(self.n_images))
        return df

    def select(self, *, label=None, generator=None, split=None, status: str | None = schema.STATUS_OK) -> np.ndarray:
        """Global rows matching every given filter (a value or a list of values); sorted int64.

        Reads only the filtered columns, shard by shard."""
        filters = [(col, [generator_name(w) if col == schema.GENERATOR else w
                          for w in ([want] if isinstance(want, str) else list(want))])
                   for col, want in ((schema.LABEL, label), (schema.GENERATOR, generator), (schema.SPLIT, split),
                                     (schema.STATUS, status)) if want is not None]
        out = []
        for k in range(len(self.shards)):
            n = int(self._offsets[k + 1] - self._offsets[k])
            mask = np.ones(n, dtype=bool)
            for col, wanted in filters:
                values = self._columns[col][self._offsets[k]:self._offsets[k + 1]] if col in self._columns \
                    else self._read_column(k, col)
                mask &= np.isin(values.astype(str), wanted)
            out.append(np.nonzero(mask)[0].astype(np.int64) + self._offsets[k])
        return np.concatenate(out) if out else np.array([], dtype=np.int64)

    def find_id(self, key: str) -> int:
        """Row of the image whose id is ``key`` or starts with it (unique prefix of at least 6 chars)."""
        hits: list[int] = []
        for rows, meta in self.iter_metadata([schema.ID]):
            ids = meta[schema.ID].astype(str)
            found = np.nonzero(ids == key)[0]
            if found.size == 0 and len(key) >= 6:
                found = np.nonzero(np.char.startswith(ids.astype("U64"), key))[0]
            hits.extend(rows[found].tolist())
        exact = []
        if len(hits) > 1:
            exact = [h for h in hits if str(self.metadata([schema.ID], [h])[schema.ID][0]) == key]
        if exact:
            hits = exact
        if not hits:
            raise StoreError(f"no image with id {key!r} in {self.root}")
        if len(hits) > 1:
            raise StoreError(f"id prefix {key!r} matches {len(hits)} images; give more characters")
        return int(hits[0])

    # -- vectors --------------------------------------------------------------------------
    def read(self, name: str, rows=None, dtype=np.float32) -> np.ndarray:
        """Vectors of one image column (image_emb, caption_emb, misalignment) for ``rows`` (all if None).

        Returns (len(rows), width) in ``dtype``, in the order of ``rows``.
        """
        if name not in schema.VECTOR_COLUMNS:
            raise StoreError(f"{name!r} is not a vector column; choose one of {', '.join(schema.VECTOR_COLUMNS)}")
        rows = np.arange(self.n_images) if rows is None else np.asarray(rows, dtype=np.int64)
        width = self.embed_dim if name != schema.MISALIGNMENT else self.misalignment_dim
        out = np.empty((rows.size, width), dtype=dtype)
        for k, pos, local in self._locate(rows):
            ds = self._file(self.shards[k])[schema.G_IMAGES][name]
            uniq, inverse = np.unique(local, return_inverse=True)
            lo, hi = int(uniq[0]), int(uniq[-1]) + 1
            if hi - lo <= 2 * uniq.size:  # dense enough: one contiguous read is fastest
                block = ds[lo:hi][uniq - lo]
            else:  # h5py point selection wants increasing, unique indices
                block = ds[uniq]
            out[pos] = block[inverse]
        return out

    def iter_chunks(self, name: str, rows=None, chunk_rows: int = 65536, dtype=np.float32):
        """Yield (rows_chunk, vectors) blocks of at most ``chunk_rows`` rows: memory stays bounded."""
        rows = np.arange(self.n_images) if rows is None else np.asarray(rows, dtype=np.int64)
        for start in range(0, rows.size, chunk_rows):
            chunk = rows[start:start + chunk_rows]
            yield chunk, self.read(name, chunk, dtype=dtype)

    # -- objects --------------------------------------------------------------------------
    def objects(self, rows=None, columns=None) -> dict[str, np.ndarray]:
        """Object rows of the given images (all if None), image by image in the order of ``rows``.

        ``image`` holds each object's global image row. Vectors come as float32.
        """
        rows = np.arange(self.n_images) if rows is None else np.asarray(rows, dtype=np.int64)
        names = columns or [c.name for c in schema.OBJECT_COLUMNS]
        parts: list[tuple[np.ndarray, dict]] = []
        for k, pos, local in self._locate(rows):
            f = self._file(self.shards[k])
            g, og = f[schema.G_IMAGES], f[schema.G_OBJECTS]
            start = g[schema.OBJECT_START][()][local]
            count = g[schema.OBJECT_COUNT][()][local]
            idx = np.concatenate([np.arange(s, s + c) for s, c in zip(start, count)]) if local.size else \
                np.array([], np.int64)
            idx = idx.astype(np.int64)
            sel: dict[str, np.ndarray] = {}
            for c in names:
                ds = og[c]
                if idx.size == 0:
                    data = ds[:0]
                elif ds.shape[0] and idx.size > ds.shape[0] // 2:
                    data = ds[()][idx]
                else:
                    u, inv = np.unique(idx, return_inverse=True)
                    data = ds[u][inv]
                if c == schema.OBJ_IMAGE:
                    data = data.astype(np.int64) + self._offsets[k]
                elif data.dtype.kind in "OS":
                    data = _decode(data)
                elif data.dtype == np.float16:
                    data = data.astype(np.float32)
                sel[c] = data
            # order objects by the position of their image in ``rows``
            owner_pos = np.repeat(pos, count)
            parts.append((owner_pos, sel))
        if not parts:
            return {c: np.array([]) for c in names}
        owner = np.concatenate([p for p, _ in parts])
        order = np.argsort(owner, kind="stable")
        return {c: np.concatenate([s[c] for _, s in parts])[order] for c in names}

    def aliases(self) -> dict[str, np.ndarray]:
        """Alias rows (other paths of stored images) over all shards."""
        cols: dict[str, list] = {c.name: [] for c in schema.ALIAS_COLUMNS}
        for name in self.shards:
            g = self._file(name)[schema.G_ALIASES]
            for c in schema.ALIAS_COLUMNS:
                col = _decode(g[c.name][()])
                cols[c.name].append(_named_generators(col) if c.name == schema.ALIAS_GENERATOR else col)
        return {k: (np.concatenate(v) if v else np.array([], dtype=object)) for k, v in cols.items()}

    def nouns(self, row: int) -> list[str]:
        return json.loads(self.metadata([schema.NOUNS], [row])[schema.NOUNS][0])
