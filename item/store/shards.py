"""Shard files: encoding rows into one HDF5 file, the counts a manifest entry records, and the checks
a reader and ``validate`` make of a shard against its entry.

A shard is built whole in memory (h5py's ``core`` driver, no backing file) and written to disk with
plain ``write`` calls. So its sha256 is computed from the very bytes written, never by reading the
file back, and a full disk or an I/O error is an ``OSError`` from ``write`` (HDF5 writing to a full
disk itself can crash the process while freeing its cache). The cost is one shard's size in memory
(about 30 MB for 1,000 rows at embed_dim 768 with 8 objects each).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from item import __version__
from item.errors import StoreError
from item.store import schema
from item.store.records import AliasRecord, ImageRecord, storable_text

SHARD_NAME = re.compile(schema.SHARD_NAME_PATTERN)
COUNT_KEYS = ("n_images", "n_ok", "n_skipped", "n_objects", "n_grounded", "n_aliases")

_ALIAS_ATTR = {schema.ALIAS_ID: "id", schema.ALIAS_PATH: "path", schema.ALIAS_LABEL: "label",
               schema.ALIAS_GENERATOR: "generator", schema.ALIAS_SPLIT: "split"}


def is_shard_name(name) -> bool:
    return isinstance(name, str) and SHARD_NAME.fullmatch(name) is not None


def partial_name(name: str) -> str:
    return "." + name + schema.PARTIAL_SUFFIX


def columns(images: list[ImageRecord], aliases: list[AliasRecord], embed_dim: int, misalignment_dim: int) -> dict:
    """Column arrays of the three groups, keyed group -> column name (strings as Python lists)."""
    d, m = embed_dim, misalignment_dim
    n = len(images)
    img = {c.name: [] for c in schema.IMAGE_COLUMNS if c.kind not in ("emb", "vec")}
    image_emb = np.zeros((n, d), np.float32)
    caption_emb = np.zeros((n, d), np.float32)
    mis = np.zeros((n, m), np.float32)
    objs = {c.name: [] for c in schema.OBJECT_COLUMNS}
    start = 0
    for i, r in enumerate(images):
        img[schema.ID].append(r.id)
        img[schema.PATH].append(r.path)
        img[schema.LABEL].append(r.label)
        img[schema.GENERATOR].append(r.generator)
        img[schema.SPLIT].append(r.split)
        img[schema.STATUS].append(r.status)
        img[schema.REASON].append(r.reason)
        img[schema.CAPTION].append(r.caption)
        img[schema.CAPTION_SOURCE].append(r.caption_source)
        img[schema.CAPTION_TRUNCATED].append(bool(r.caption_truncated))
        img[schema.CAPTION_ENCODED].append(r.caption_encoded)
        img[schema.NOUNS].append(json.dumps(list(r.nouns), ensure_ascii=False))
        img[schema.WIDTH].append(int(r.width))
        img[schema.HEIGHT].append(int(r.height))
        img[schema.FORMAT].append(r.format)
        img[schema.PERTURBATION].append(r.perturbation)
        img[schema.FILE_SIZE].append(int(r.file_size))
        img[schema.JPEG_QUALITY].append(int(r.jpeg_quality))
        img[schema.EXIF].append(int(r.exif))
        img[schema.OBJECT_START].append(start)
        img[schema.OBJECT_COUNT].append(len(r.objects))
        if r.status == schema.STATUS_OK:
            image_emb[i] = r.image_emb
            caption_emb[i] = r.caption_emb
            mis[i] = r.misalignment
        for o in r.objects:
            objs[schema.OBJ_IMAGE].append(i)
            objs[schema.NOUN].append(o.noun)
            objs[schema.BOX].append(o.box if o.box is not None else (0.0, 0.0, 0.0, 0.0))
            objs[schema.SCORE].append(float(o.score))
            objs[schema.GROUNDED].append(o.box is not None)
            objs[schema.CROP_EMB].append(o.crop_emb if o.box is not None else np.zeros(d, np.float32))
            objs[schema.NOUN_EMB].append(o.noun_emb)
        start += len(r.objects)
    img[schema.IMAGE_EMB] = image_emb
    img[schema.CAPTION_EMB] = caption_emb
    img[schema.MISALIGNMENT] = mis
    n_obj = len(objs[schema.NOUN])
    objs[schema.OBJ_IMAGE] = np.asarray(objs[schema.OBJ_IMAGE], np.int64)
    objs[schema.BOX] = np.asarray(objs[schema.BOX], np.float32).reshape(n_obj, 4)
    objs[schema.SCORE] = np.asarray(objs[schema.SCORE], np.float32)
    objs[schema.GROUNDED] = np.asarray(objs[schema.GROUNDED], bool)
    for k in (schema.CROP_EMB, schema.NOUN_EMB):
        objs[k] = np.asarray(objs[k], np.float32).reshape(n_obj, d)
    al = {c.name: [getattr(a, _ALIAS_ATTR[c.name]) for a in aliases] for c in schema.ALIAS_COLUMNS}
    return {schema.G_IMAGES: img, schema.G_OBJECTS: objs, schema.G_ALIASES: al}


def encode(images: list[ImageRecord], aliases: list[AliasRecord], *, compat: dict, writer_id: str = "",
           name: str = "") -> bytes:
    """The bytes of a complete shard file holding ``images`` (with their objects) and ``aliases``.

    ``name``: the file name it will be committed under, kept as an attribute so that a reader can tell
    a shard renamed or swapped with another (same sizes and counts) from the one the manifest lists.
    """
    import h5py

    d, m = int(compat["embed_dim"]), int(compat["misalignment_dim"])
    cols = columns(images, aliases, d, m)
    # A unique in-memory name: the core driver never touches the disk with backing_store=False.
    f = h5py.File(f"item-shard-{id(cols)}.h5", "w", driver="core", backing_store=False)
    try:
        f.attrs[schema.A_FORMAT] = schema.STORE_FORMAT
        f.attrs[schema.A_SCHEMA] = schema.SCHEMA_VERSION
        f.attrs[schema.A_PACKAGE] = __version__
        f.attrs[schema.A_COMPLETE] = False
        f.attrs[schema.A_EMBED_DIM] = d
        f.attrs[schema.A_MISALIGNMENT_DIM] = m
        f.attrs[schema.A_COMPAT] = json.dumps(compat, sort_keys=True)
        f.attrs[schema.A_WRITER] = writer_id
        f.attrs[schema.A_NAME] = name
        from item.store.versions import now

        f.attrs[schema.A_CREATED] = now()
        for group, cols_of in ((schema.G_IMAGES, schema.IMAGE_COLUMNS), (schema.G_OBJECTS, schema.OBJECT_COLUMNS),
                               (schema.G_ALIASES, schema.ALIAS_COLUMNS)):
            g = f.create_group(group)
            for col in cols_of:
                data = cols[group][col.name]
                if col.kind == "str":
                    g.create_dataset(col.name, data=np.array([storable_text(s) for s in data], dtype=object),
                                     dtype=schema.column_dtype("str"))
                else:
                    g.create_dataset(col.name, data=data, dtype=schema.column_dtype(col.kind))
        f.attrs[schema.A_N_IMAGES] = len(images)
        f.attrs[schema.A_N_OBJECTS] = len(cols[schema.G_OBJECTS][schema.NOUN])
        f.attrs[schema.A_N_ALIASES] = len(aliases)
        f.attrs[schema.A_COMPLETE] = True
        f.flush()
        return bytes(f.id.get_file_image())
    finally:
        f.close()


def stats(images: list[ImageRecord], aliases: list[AliasRecord]) -> dict:
    """The counts a manifest entry records, from the rows themselves."""
    by_reason: dict[str, int] = {}
    for r in images:
        if r.status == schema.STATUS_SKIPPED:
            by_reason[r.reason] = by_reason.get(r.reason, 0) + 1
    n_skipped = sum(by_reason.values())
    objects = [o for r in images for o in r.objects]
    return {"n_images": len(images), "n_ok": len(images) - n_skipped, "n_skipped": n_skipped,
            "n_objects": len(objects), "n_grounded": sum(o.box is not None for o in objects),
            "n_aliases": len(aliases), "skipped_by_reason": by_reason}


def shard_stats(f) -> dict:
    """Counts of an open shard, as recorded in the manifest's shard entry."""
    images = f[schema.G_IMAGES]
    status = [s.decode("utf-8") for s in images[schema.STATUS][()]]
    reasons = [s.decode("utf-8") for s in images[schema.REASON][()]]
    by_reason: dict[str, int] = {}
    for s, r in zip(status, reasons):
        if s == schema.STATUS_SKIPPED:
            by_reason[r] = by_reason.get(r, 0) + 1
    n_skipped = sum(by_reason.values())
    return {
        "n_images": len(status),
        "n_ok": len(status) - n_skipped,
        "n_skipped": n_skipped,
        "n_objects": int(f[schema.G_OBJECTS][schema.NOUN].shape[0]),
        "n_grounded": int(np.count_nonzero(f[schema.G_OBJECTS][schema.GROUNDED][()])),
        "n_aliases": int(f[schema.G_ALIASES][schema.ALIAS_PATH].shape[0]),
        "skipped_by_reason": by_reason,
    }


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(block)
            if not chunk:
                return h.hexdigest()
            h.update(chunk)


def check_entry(i: int, entry) -> str:
    """Why manifest shard entry number ``i`` is malformed ('' when it is well formed)."""
    if not isinstance(entry, dict):
        return f"shard entry {i} is not an object"
    name = entry.get("name")
    if not is_shard_name(name):
        return f"shard entry {i} names {name!r}, which is not a shard file name inside shards/"
    for k in COUNT_KEYS:
        v = entry.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            return f"shard entry {name}: {k} is {v!r}, not a count"
    if not isinstance(entry.get("skipped_by_reason", {}), dict):
        return f"shard entry {name}: skipped_by_reason is not an object"
    for k in ("bytes",):
        if k in entry and (not isinstance(entry[k], int) or entry[k] < 0):
            return f"shard entry {name}: {k} is {entry[k]!r}, not a size"
    if "sha256" in entry and not (isinstance(entry["sha256"], str) and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])):
        return f"shard entry {name}: sha256 is not a checksum"
    return ""


def check_open_shard(f, entry: dict, embed_dim: int, misalignment_dim: int) -> str:
    """What disagrees between an open shard and its manifest entry and the store's dims ('' if nothing).

    Cheap: attributes and dataset shapes only, so every reader can afford it on every open. A shard
    that names itself (attribute ``shard_name``) must carry the entry's name; an older one without it
    must at least come from the entry's writer (see :func:`open_checked` for what else is checked).
    """
    try:
        own = f.attrs.get(schema.A_NAME)
        own = own.decode("utf-8") if isinstance(own, bytes) else own
        if own and own != entry.get("name"):
            return (f"the file holds shard {own}, not {entry.get('name')}: shard files were renamed or swapped; "
                    "put them back under their own names or restore the store")
        writer = f.attrs.get(schema.A_WRITER)
        writer = writer.decode("utf-8") if isinstance(writer, bytes) else writer
        if not own and writer and entry.get("writer") and writer != entry["writer"]:
            return (f"the file was written by writer {writer}, the manifest's entry by {entry['writer']}: shard "
                    "files were renamed or swapped")
        if int(f.attrs.get(schema.A_EMBED_DIM, -1)) != embed_dim:
            return f"embed_dim is {f.attrs.get(schema.A_EMBED_DIM)} in the shard, {embed_dim} in the manifest"
        if int(f.attrs.get(schema.A_MISALIGNMENT_DIM, -1)) != misalignment_dim:
            return (f"misalignment_dim is {f.attrs.get(schema.A_MISALIGNMENT_DIM)} in the shard, "
                    f"{misalignment_dim} in the manifest")
        g, og = f[schema.G_IMAGES], f[schema.G_OBJECTS]
        n = entry["n_images"]
        version = int(f.attrs.get(schema.A_SCHEMA, -1))
        for col in schema.IMAGE_COLUMNS:
            if col.name not in g and schema.COLUMN_SINCE.get(col.name, 1) > version:
                continue  # added after this shard's schema: readers use COLUMN_FALLBACK
            width = schema.column_width(col.kind, embed_dim, misalignment_dim)
            shape = g[col.name].shape
            if shape[0] != n or (width is not None and shape[1:] != (width,)):
                return f"images/{col.name} has shape {shape}, the manifest says n_images={n}" + (
                    f" of width {width}" if width else "")
        for col in schema.OBJECT_COLUMNS:
            width = schema.column_width(col.kind, embed_dim, misalignment_dim)
            shape = og[col.name].shape
            if shape[0] != entry["n_objects"] or (width is not None and shape[1:] != (width,)):
                return f"objects/{col.name} has shape {shape}, the manifest says n_objects={entry['n_objects']}"
        if int(f.attrs.get(schema.A_N_IMAGES, -1)) != n:
            return f"its n_images attribute is {f.attrs.get(schema.A_N_IMAGES)}, the manifest says {n}"
    except (KeyError, ValueError, TypeError) as exc:
        return f"unexpected layout ({exc})"
    return ""


#: Shards without a ``shard_name`` attribute (written before it existed) up to this size have their
#: checksum compared with the manifest's on open, once per process: what tells two such shards of one
#: writer, swapped, apart. Larger ones are checked by ``item store validate`` only.
LEGACY_CHECKSUM_MAX_BYTES = 64 * 1024 * 1024
_LEGACY_VERIFIED: set[tuple] = set()


def open_checked(path: Path, entry: dict, embed_dim: int, misalignment_dim: int, root) -> object:
    """Open a listed shard read-only, refusing (StoreError, one line) one that does not match its entry."""
    import h5py

    from item.store.versions import check_version

    hint = f"run `item store validate {root}`"
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise StoreError(f"{path}: cannot open shard ({exc}); {hint}") from None
    try:
        check_version(int(f.attrs.get(schema.A_SCHEMA, -1)), str(path))
        if not bool(f.attrs.get(schema.A_COMPLETE, False)):
            raise StoreError(f"{path}: shard is not marked complete; {hint}")
        if "bytes" in entry and path.stat().st_size != entry["bytes"]:
            raise StoreError(f"{path}: {path.stat().st_size} bytes, the manifest says {entry['bytes']}; {hint}")
        problem = check_open_shard(f, entry, embed_dim, misalignment_dim)
        if problem:
            raise StoreError(f"{path}: {problem}; {hint}")
        if not f.attrs.get(schema.A_NAME) and entry.get("sha256"):
            st = path.stat()
            key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, entry["sha256"])
            if st.st_size <= LEGACY_CHECKSUM_MAX_BYTES and key not in _LEGACY_VERIFIED:
                if file_sha256(path) != entry["sha256"]:
                    raise StoreError(f"{path}: its checksum differs from the manifest's (a shard renamed, swapped "
                                     f"or changed); {hint}")
                _LEGACY_VERIFIED.add(key)
    except BaseException:
        f.close()
        raise
    return f
