"""Append rows to a store: buffered in memory, written as immutable shards, committed by the manifest.

Crash safety, in the order things happen when a shard is closed:

1. the shard is written to ``shards/.shard-NNNNNN.h5.partial`` with attribute ``complete = False``;
2. ``complete`` is set True, the file is flushed, closed and fsynced;
3. it is renamed to ``shards/shard-NNNNNN.h5`` (atomic);
4. the manifest, which lists the shard, is replaced atomically. This is the commit point.

A process killed before step 4 leaves rows that no reader sees. On reopening, ``.partial`` files
are deleted and a complete, renamed shard that the manifest does not list yet (killed between 3
and 4) is adopted after its attributes and counts are checked. Only one process writes at a
time: the writer holds an flock on ``writer.lock`` (released by the kernel when the process dies).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from item import __version__
from item.errors import IncompatibleError, LockedError, StoreError
from item.faults import fault
from item.store import schema
from item.store.manifest import atomic_write_json, fsync_dir, new_manifest, now, read_manifest


@dataclass
class ObjectRecord:
    """One noun of an image. ``box`` is (x0, y0, x1, y1) in pixels, None when ungrounded."""

    noun: str
    noun_emb: np.ndarray  # (embed_dim,) float32, L2-normalised
    box: tuple[float, float, float, float] | None = None
    score: float = 0.0
    crop_emb: np.ndarray | None = None  # (embed_dim,) float32 L2-normalised; None when ungrounded


@dataclass
class ImageRecord:
    """One image row. Embeddings are None for skipped rows (stored as zeros)."""

    id: str
    path: str
    label: str = "unknown"
    generator: str = ""
    split: str = ""
    status: str = schema.STATUS_OK
    reason: str = ""
    caption: str = ""
    caption_source: str = ""
    caption_truncated: bool = False
    caption_encoded: str = ""  # the text CLIP encoded (the caption after clean-up)
    nouns: list[str] = field(default_factory=list)
    width: int = 0
    height: int = 0
    format: str = ""
    perturbation: str = ""
    image_emb: np.ndarray | None = None  # (embed_dim,) float32
    caption_emb: np.ndarray | None = None  # (embed_dim,) float32
    misalignment: np.ndarray | None = None  # (misalignment_dim,) float32
    objects: list[ObjectRecord] = field(default_factory=list)


@dataclass(frozen=True)
class AliasRecord:
    """Another path whose bytes equal those of the stored image ``id``."""

    id: str
    path: str
    label: str = "unknown"
    generator: str = ""
    split: str = ""


def storable_text(text: str) -> str:
    """``text`` as the store keeps it (HDF5 strings are UTF-8): unchanged when it encodes as UTF-8.

    A file name whose bytes are not UTF-8 reaches Python as lone surrogates (PEP 383,
    ``os.fsdecode``), which UTF-8 cannot encode; such text is stored with every byte that is not
    UTF-8 written as the four characters ``\\xNN`` (e.g. ``caf\\xe9.png`` for the bytes
    ``b"caf\\xe9.png"``), and any other lone surrogate as ``\\udNNN``. Compare paths through this
    function when matching them with stored ones.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def compat_mismatch(have: dict, want: dict) -> list[str]:
    """Human-readable differences between two compat dicts, over schema.COMPAT_KEYS."""
    return [f"{k}: store has {have.get(k)!r}, new rows have {want.get(k)!r}"
            for k in schema.COMPAT_KEYS if have.get(k) != want.get(k)]


class WriterLock:
    """An exclusive, non-blocking flock on DIR/writer.lock, holding a JSON note about its holder."""

    def __init__(self, root: Path):
        self.path = Path(root) / schema.LOCK_FILE
        self.fd: int | None = None

    def acquire(self, command: str = "") -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
            except ValueError:
                holder = {}
            os.close(fd)
            who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')}"
                   + (f" ({holder['command']})" if holder.get("command") else ""))
            raise LockedError(f"{self.path.parent}: another process is writing this store: {who}; "
                              "wait for it to finish or use another --store") from None
        note = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": now(),
                           "command": command}).encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, note, 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None


class StoreWriter:
    """Append image rows (with their ragged object rows) and aliases to a store.

    Use as a context manager, or call :meth:`close`. Rows are buffered and written in shards of
    ``shard_size`` image rows; :meth:`flush` closes the current shard early.
    """

    def __init__(self, root, *, compat: dict, models: dict, recipe: str, shard_size: int = 1024,
                 overwrite: bool = False, command: str = "", lock: "WriterLock | None" = None,
                 auto_flush: bool = True):
        self.root = Path(root)
        self.shard_size = int(shard_size)
        if self.shard_size < 1:
            raise StoreError("shard_size must be at least 1")
        missing = [k for k in schema.COMPAT_KEYS if k not in compat]
        if missing:
            raise StoreError(f"compat is missing keys: {', '.join(missing)}")
        self.compat = dict(compat)
        self.embed_dim = int(compat["embed_dim"])
        self.misalignment_dim = int(compat["misalignment_dim"])
        self.root.mkdir(parents=True, exist_ok=True)
        # A caller may take the lock first (before loading models for minutes) and hand it over.
        if lock is not None and (lock.fd is None or Path(lock.path).parent.resolve() != self.root.resolve()):
            raise StoreError("the lock handed to StoreWriter is not held on this store")
        self._lock = lock or WriterLock(self.root)
        if lock is None:
            self._lock.acquire(command)
        # auto_flush=False: the caller decides where shards end (flush_if_full), e.g. only between batches.
        self.auto_flush = auto_flush
        try:
            self._open(models=models, recipe=recipe, overwrite=overwrite)
        except OSError as exc:
            self._lock.release()
            raise StoreError(f"{self.root}: cannot open the store for writing: {exc}") from None
        except BaseException:
            self._lock.release()
            raise
        self._images: list[ImageRecord] = []
        self._aliases: list[AliasRecord] = []
        self._closed = False

    # -- opening and recovery ---------------------------------------------------------------
    def _open(self, *, models: dict, recipe: str, overwrite: bool) -> None:
        shard_dir = self.root / schema.SHARD_DIR
        manifest_path = self.root / schema.MANIFEST
        # A writer killed between writing the manifest's temporary file and its os.replace leaves
        # the temporary file behind; under the lock nobody else can be writing one, so drop it.
        for p in self.root.glob("." + schema.MANIFEST + ".*.tmp"):
            p.unlink()
        if overwrite and manifest_path.exists():
            read_manifest(self.root)  # refuse to wipe something that is not an ITEM store
            for p in shard_dir.glob("*") if shard_dir.is_dir() else []:
                p.unlink()
            for p in (self.root / schema.INDEX_DIR).glob("*") if (self.root / schema.INDEX_DIR).is_dir() else []:
                p.unlink()
            manifest_path.unlink()
        shard_dir.mkdir(exist_ok=True)
        if manifest_path.exists():
            self.manifest = read_manifest(self.root)
            diff = compat_mismatch(self.manifest["compat"], self.compat)
            if diff:
                mixable = all(k in schema.ALLOW_MIXED_KEYS for k in schema.COMPAT_KEYS
                              if self.manifest["compat"].get(k) != self.compat.get(k))
                raise IncompatibleError(
                    f"{self.root}: refusing to mix rows from different models or settings into one store ("
                    + "; ".join(diff) + "); use another --store or --overwrite"
                    + (", or --allow-mixed (rounding-level differences only)" if mixable else ""))
        else:
            others = [p for p in self.root.iterdir() if p.name not in (schema.LOCK_FILE, schema.SHARD_DIR)]
            if others:
                raise StoreError(f"{self.root}: exists, is not empty and is not an ITEM store; choose an empty folder")
            self.manifest = new_manifest(compat=self.compat, models=models, recipe=recipe)
            atomic_write_json(manifest_path, self.manifest)
        self._recover(shard_dir)
        self._done: set[str] = set()
        self._paths: set[str] = set()
        for entry in self.manifest["shards"]:
            self._load_ids(shard_dir / entry["name"])

    def _recover(self, shard_dir: Path) -> None:
        listed = {e["name"] for e in self.manifest["shards"]}
        for p in sorted(shard_dir.iterdir()):
            if p.name.endswith(schema.PARTIAL_SUFFIX):
                p.unlink()  # a shard whose writer died before it was complete
            elif p.name.startswith(schema.SHARD_PREFIX) and p.name not in listed:
                entry = self._check_orphan(p)
                if entry is None:
                    p.unlink()
                else:
                    self._commit(entry)
                    listed.add(p.name)

    def _check_orphan(self, path: Path) -> dict | None:
        """A renamed shard that the manifest does not list: adopt it when it is complete and consistent."""
        import h5py

        expected = schema.shard_name(len(self.manifest["shards"]))
        if path.name != expected:
            return None
        try:
            with h5py.File(path, "r") as f:
                if not bool(f.attrs.get(schema.A_COMPLETE, False)):
                    return None
                if json.loads(f.attrs[schema.A_COMPAT]) != self.compat:
                    return None
                stats = shard_stats(f)
        except (OSError, KeyError, ValueError):
            return None
        return {"name": path.name, **stats}

    def _load_ids(self, path: Path) -> None:
        import h5py

        with h5py.File(path, "r") as f:
            self._done.update(s.decode("utf-8") for s in f[schema.G_IMAGES][schema.ID][()])
            self._paths.update(s.decode("utf-8") for s in f[schema.G_IMAGES][schema.PATH][()])
            self._paths.update(s.decode("utf-8") for s in f[schema.G_ALIASES][schema.ALIAS_PATH][()])

    # -- public API ------------------------------------------------------------------------
    @property
    def done_ids(self) -> set[str]:
        """Ids already written or buffered (skipped rows included): a resumed run skips them."""
        return self._done

    @property
    def known_paths(self) -> set[str]:
        """Paths already recorded, as an image row or as an alias of one (as :func:`storable_text`)."""
        return self._paths

    def add(self, record: ImageRecord) -> None:
        """Buffer one image row; closes a shard when ``shard_size`` rows are buffered."""
        if record.id in self._done:
            raise StoreError(f"image {record.id} ({record.path}) is already in the store")
        self._check_record(record)
        self._images.append(record)
        self._done.add(record.id)
        self._paths.add(storable_text(record.path))
        if self.auto_flush and len(self._images) >= self.shard_size:
            self.flush()

    @property
    def pending(self) -> int:
        """Image rows buffered and not yet committed."""
        return len(self._images)

    def flush_if_full(self) -> None:
        """Close a shard when at least ``shard_size`` rows are buffered (for callers with auto_flush=False)."""
        if len(self._images) >= self.shard_size:
            self.flush()

    def add_alias(self, alias: AliasRecord) -> None:
        if storable_text(alias.path) in self._paths:
            return
        if alias.id not in self._done:
            raise StoreError(f"alias {alias.path} names image {alias.id}, which is not in the store")
        self._aliases.append(alias)
        self._paths.add(storable_text(alias.path))

    def record_run(self, summary: dict) -> None:
        """Append a run summary (JSON-able) to the manifest; written with the next commit."""
        self.manifest.setdefault("runs", []).append(summary)

    def flush(self) -> None:
        """Write buffered rows as one complete shard and commit it to the manifest."""
        if not self._images and not self._aliases:
            return
        images, aliases = self._images, self._aliases
        try:
            entry = self._write_shard(images, aliases)
            self._images, self._aliases = [], []
            self._commit(entry)
        except OSError as exc:  # a full disk, an I/O error: one clear line, not a traceback
            raise self._write_error(exc) from None

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
            self.manifest["updated"] = now()
            try:
                atomic_write_json(self.root / schema.MANIFEST, self.manifest)
            except OSError as exc:
                raise self._write_error(exc) from None
        finally:
            self._closed = True
            self._lock.release()

    def abort(self) -> None:
        """Drop buffered rows and release the lock (what a crash would do, minus the crash)."""
        self._images, self._aliases = [], []
        self._closed = True
        self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            # Complete rows buffered before the error are kept; if writing them fails too, the
            # store stays at its last committed shard.
            try:
                self.close()
            except Exception:
                self.abort()
        return False

    # -- internals -------------------------------------------------------------------------
    def _write_error(self, exc: OSError) -> StoreError:
        try:
            on_disk = read_manifest(self.root)["counts"]["n_images"]
        except StoreError:
            on_disk = "?"
        return StoreError(f"{self.root}: cannot write the store ({exc}); it holds its {on_disk} committed image "
                          "rows and is valid; fix the cause and run the same command again to resume")

    def _check_record(self, r: ImageRecord) -> None:
        if r.label not in schema.LABELS:
            raise StoreError(f"{r.path}: label {r.label!r} is not one of {', '.join(schema.LABELS)}")
        if r.status not in (schema.STATUS_OK, schema.STATUS_SKIPPED):
            raise StoreError(f"{r.path}: status {r.status!r} is not 'ok' or 'skipped'")
        if r.status != schema.STATUS_OK:
            return
        for name, vec, dim in ((schema.IMAGE_EMB, r.image_emb, self.embed_dim),
                               (schema.CAPTION_EMB, r.caption_emb, self.embed_dim),
                               (schema.MISALIGNMENT, r.misalignment, self.misalignment_dim)):
            self._check_vec(r, name, vec, dim)
        for o in r.objects:
            self._check_vec(r, schema.NOUN_EMB, o.noun_emb, self.embed_dim)
            if o.box is not None:
                self._check_vec(r, schema.CROP_EMB, o.crop_emb, self.embed_dim)

    def _check_vec(self, r: ImageRecord, name: str, vec, dim: int) -> None:
        if vec is None:
            raise StoreError(f"{r.path}: {name} is missing")
        arr = np.asarray(vec)
        if arr.shape != (dim,):
            raise IncompatibleError(f"{r.path}: {name} has shape {arr.shape}, the store expects ({dim},)")
        if not np.all(np.isfinite(arr)):
            raise StoreError(f"{r.path}: {name} has non-finite values; refusing to write them")

    def _write_shard(self, images: list[ImageRecord], aliases: list[AliasRecord], name: str | None = None) -> dict:
        import h5py

        name = name or schema.shard_name(len(self.manifest["shards"]))
        final = self.root / schema.SHARD_DIR / name
        partial = final.with_name("." + name + schema.PARTIAL_SUFFIX)
        cols = self._columns(images, aliases)
        try:
            with h5py.File(partial, "w") as f:
                f.attrs[schema.A_FORMAT] = schema.STORE_FORMAT
                f.attrs[schema.A_SCHEMA] = schema.SCHEMA_VERSION
                f.attrs[schema.A_PACKAGE] = __version__
                f.attrs[schema.A_COMPLETE] = False
                f.attrs[schema.A_EMBED_DIM] = self.embed_dim
                f.attrs[schema.A_MISALIGNMENT_DIM] = self.misalignment_dim
                f.attrs[schema.A_COMPAT] = json.dumps(self.compat, sort_keys=True)
                f.attrs[schema.A_CREATED] = now()
                for group, columns in ((schema.G_IMAGES, schema.IMAGE_COLUMNS),
                                       (schema.G_OBJECTS, schema.OBJECT_COLUMNS),
                                       (schema.G_ALIASES, schema.ALIAS_COLUMNS)):
                    g = f.create_group(group)
                    for col in columns:
                        data = cols[group][col.name]
                        if col.kind == "str":
                            g.create_dataset(col.name, data=np.array([storable_text(s) for s in data],
                                                                     dtype=object),
                                             dtype=schema.column_dtype("str"))
                        else:
                            g.create_dataset(col.name, data=data, dtype=schema.column_dtype(col.kind))
                f.attrs[schema.A_N_IMAGES] = len(images)
                f.attrs[schema.A_N_OBJECTS] = len(cols[schema.G_OBJECTS][schema.NOUN])
                f.attrs[schema.A_N_ALIASES] = len(aliases)
                f.attrs[schema.A_COMPLETE] = True
                f.flush()
            with open(partial, "rb+") as fh:
                os.fsync(fh.fileno())
            fault("shard-written")
            os.replace(partial, final)
            fsync_dir(final.parent)
        except BaseException:
            try:
                partial.unlink()
            except FileNotFoundError:
                pass
            raise
        fault("shard-renamed")
        with h5py.File(final, "r") as f:
            return {"name": name, **shard_stats(f)}

    def _columns(self, images: list[ImageRecord], aliases: list[AliasRecord]) -> dict:
        d, m = self.embed_dim, self.misalignment_dim
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

    def _commit(self, entry: dict) -> None:
        m = self.manifest
        m["shards"].append(entry)
        c = m["counts"]
        for k in ("n_images", "n_ok", "n_skipped", "n_objects", "n_grounded", "n_aliases"):
            c[k] = c.get(k, 0) + entry[k]
        for reason, k in entry["skipped_by_reason"].items():
            c["skipped_by_reason"][reason] = c["skipped_by_reason"].get(reason, 0) + k
        m["updated"] = now()
        atomic_write_json(self.root / schema.MANIFEST, m)


_ALIAS_ATTR = {schema.ALIAS_ID: "id", schema.ALIAS_PATH: "path", schema.ALIAS_LABEL: "label",
               schema.ALIAS_GENERATOR: "generator", schema.ALIAS_SPLIT: "split"}


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
