"""Append rows to a store: buffered in memory, written as immutable shards, committed by the manifest.

Any number of writers (processes, on one machine or several sharing a file system) may fill one
store at once; one process is simply one writer. Each writer has a random id, holds
``writers/ID.lock`` for its run and ``writer.lock`` shared (``--overwrite``: exclusive). Crash
safety, in the order things happen when a writer closes a shard (:mod:`item.store.commit`):

1. the rows are encoded in memory as one complete HDF5 file (attribute ``complete = True``), its
   size and sha256 taken from those bytes;
2. the bytes are written to ``shards/.shard-ID-NNNNNN.h5.partial`` (a new file, no symlink
   followed) and fsynced; no lock is held so far;
3. ``commit.lock`` is taken; the manifest is re-read; rows whose image another writer committed
   meanwhile send the shard back to step 1 without them (their paths kept as aliases);
4. the partial file is renamed to ``shards/shard-ID-NNNNNN.h5`` (atomic);
5. the manifest, which now lists the shard with its counts, size and checksum, is replaced
   atomically. This is the commit point; ``commit.lock`` is released.

A writer killed before step 5 leaves rows that no reader sees; it loses at most the shard it was
closing and the rows it had buffered. The next writer to open the store cleans up under
``commit.lock``: a manifest temporary file is removed, a renamed shard the manifest does not list
(killed between 4 and 5) is adopted after its attributes and counts are checked, and the partial
files of writers whose lock nobody holds are removed. Shard names come from the writer's id and
its own count, never from the manifest's length, so no writer can overwrite another's shard, and
nothing listed (or complete) is ever removed. A resumed run knows every id any writer committed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from item.errors import IncompatibleError, StoreError
from item.store import schema
from item.store.commit import Committed, StagedShard, commit_shards, compat_mismatch, open_store, stage_shard
from item.store.locks import WriterLock
from item.store.manifest import read_manifest
from item.store.records import (AliasRecord, ImageRecord, ObjectRecord, as_unstorable, storable_text,
                                unstorable_fields)
from item.store.shards import shard_stats

__all__ = ["AliasRecord", "ImageRecord", "ObjectRecord", "StagedShard", "StoreWriter", "WriterLock", "commit_shards",
           "compat_mismatch", "shard_stats", "stage_shard", "storable_text"]


class StoreWriter:
    """Append image rows (with their ragged object rows) and aliases to a store.

    Use as a context manager, or call :meth:`close`. Rows are buffered and written in shards of
    ``shard_size`` image rows: :meth:`add` closes a shard as soon as one is full, :meth:`add_batch`
    only between batches; :meth:`flush` closes the current shard early.
    """

    def __init__(self, root, *, compat: dict, models: dict, recipe: str, shard_size: int = 1024,
                 overwrite: bool = False, command: str = "", lock: WriterLock | None = None,
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
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.root}: cannot create the store folder ({exc.strerror or exc})") from None
        # A caller may take the lock first (before loading models for minutes) and hand it over.
        if lock is not None and (not lock.held or Path(lock.root).resolve() != self.root.resolve()):
            raise StoreError("the lock handed to StoreWriter is not held on this store")
        self._lock = lock or WriterLock(self.root)
        if lock is None:
            self._lock.acquire(command, exclusive=overwrite)
        elif overwrite and not lock.exclusive:
            raise StoreError("--overwrite needs the lock taken with exclusive=True")
        self.auto_flush = auto_flush
        self._committed = Committed(self.root)
        try:
            self._lock.verify()
            manifest = open_store(self.root, compat=self.compat, models=models, recipe=recipe,
                                  overwrite=overwrite, exclusive=self._lock.exclusive)
            self._committed.refresh(manifest)
        except OSError as exc:
            self._lock.release()
            raise StoreError(f"{self.root}: cannot open the store for writing: {exc}") from None
        except BaseException:
            self._lock.release()
            raise
        self.manifest = manifest
        self._at_open = set(self._committed.ids)  # what a caller must not add again
        self._own: set[str] = set()  # ids this writer buffered or committed
        self._own_paths: set[str] = set()
        self._images: list[ImageRecord] = []
        self._aliases: list[AliasRecord] = []
        self._runs: list[dict] = []
        self._seq = 0
        self._closed = False

    # -- public API ------------------------------------------------------------------------
    @property
    def writer_id(self) -> str:
        return self._lock.id

    @property
    def done_ids(self) -> set[str]:
        """Ids committed by any writer (as of this writer's last commit) or buffered here: a resumed run
        skips them."""
        return self._committed.ids | self._own

    @property
    def known_paths(self) -> set[str]:
        """Paths already recorded, as an image row or as an alias of one (as :func:`storable_text`)."""
        return self._committed.paths | self._own_paths

    def add(self, record: ImageRecord) -> None:
        """Buffer one image row; with ``auto_flush``, closes a shard when ``shard_size`` rows are buffered.

        A row whose text the store cannot keep (a NUL character) is stored as a skipped row with reason
        ``unstorable-text`` instead. A row whose image another writer committed after this one opened
        the store is dropped at commit (its path kept as an alias).
        """
        self._check_new(record)
        bad = unstorable_fields(record)
        if bad:
            record = as_unstorable(record, bad)
        self._images.append(record)
        self._own.add(record.id)
        self._own_paths.add(storable_text(record.path))
        if self.auto_flush and len(self._images) >= self.shard_size:
            self.flush()

    def add_batch(self, records) -> None:
        """Buffer a batch of rows, then close a shard if ``shard_size`` rows are buffered: shards end
        between batches only, so a resumed run re-forms the batches of an uninterrupted one."""
        records = list(records)
        for rec in records:
            self._check_new(rec)
        for rec in records:
            bad = unstorable_fields(rec)
            self._images.append(as_unstorable(rec, bad) if bad else rec)
            self._own.add(rec.id)
            self._own_paths.add(storable_text(rec.path))
        self.flush_if_full()

    @property
    def pending(self) -> int:
        """Image rows buffered and not yet committed."""
        return len(self._images)

    def flush_if_full(self) -> None:
        """Close a shard when at least ``shard_size`` rows are buffered."""
        if len(self._images) >= self.shard_size:
            self.flush()

    def add_alias(self, alias: AliasRecord) -> None:
        path = storable_text(alias.path)
        if path in self._committed.paths or path in self._own_paths:
            return
        if alias.id not in self._own and alias.id not in self._committed.ids:
            raise StoreError(f"alias {alias.path} names image {alias.id}, which is not in the store")
        if "\x00" in "".join((alias.label, alias.generator, alias.split)):
            return  # not storable as given; the image row it names is stored
        self._aliases.append(alias)
        self._own_paths.add(path)

    def record_run(self, summary: dict) -> None:
        """Append a run summary (JSON-able) to the manifest; written with the last commit."""
        self._runs.append(summary)

    def flush(self) -> None:
        """Write buffered rows as one complete shard and commit it to the manifest."""
        try:
            while True:
                self._drop_committed_elsewhere()
                if not self._images and not self._aliases:
                    return
                staged = stage_shard(self.root, self._images, self._aliases, compat=self.compat,
                                     writer_id=self.writer_id, number=self._seq)
                self._seq += 1
                self.manifest, conflicts = commit_shards(self.root, [staged], self._committed,
                                                         check=self._lock.verify)
                if not conflicts:
                    self._images, self._aliases = [], []
                    return
        except OSError as exc:  # a full disk, an I/O error: one clear line, not a traceback
            raise self._write_error(exc) from None

    def commit_staged(self, staged: list[StagedShard]) -> list[StagedShard]:
        """Commit shards staged (by :func:`stage_shard`, under this writer's id) elsewhere, e.g. by the
        write tasks of a distributed job. Returns those not committed because another writer committed
        some of their images meanwhile (their files are removed; a rerun featurizes what they missed)."""
        try:
            self.manifest, conflicts = commit_shards(self.root, list(staged), self._committed,
                                                     check=self._lock.verify)
        except OSError as exc:
            raise self._write_error(exc) from None
        for s in staged:
            self._own.update(s.ids)
        return conflicts

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
            try:
                self.manifest, _ = commit_shards(self.root, [], self._committed, runs=self._runs,
                                                 check=self._lock.verify)
                self._runs = []
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
    def _check_new(self, record: ImageRecord) -> None:
        # An image another writer committed after this one opened is accepted here and dropped at commit.
        if record.id in self._own or record.id in self._at_open:
            raise StoreError(f"image {record.id} ({record.path}) is already in the store")
        self._check_record(record)

    def _drop_committed_elsewhere(self) -> None:
        """Another writer committed some of the buffered images: keep their paths as aliases only."""
        keep = []
        for r in self._images:
            if r.id not in self._committed.ids:
                keep.append(r)
            elif storable_text(r.path) not in self._committed.paths and r.status == schema.STATUS_OK:
                self._aliases.append(AliasRecord(r.id, r.path, r.label, r.generator, r.split))
        self._images = keep
        self._aliases = [a for a in self._aliases if storable_text(a.path) not in self._committed.paths]

    def _write_error(self, exc: OSError) -> StoreError:
        try:
            on_disk = read_manifest(self.root)["counts"]["n_images"]
        except StoreError:
            on_disk = "?"
        return StoreError(f"{self.root}: cannot write the store ({exc.strerror or exc}); it holds its {on_disk} "
                          "committed image rows and is valid; fix the cause and run the same command again to resume")

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
