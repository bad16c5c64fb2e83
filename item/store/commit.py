"""Committing shards to a store that any number of writers fill at once.

A shard is *staged* first, by its writer and without any lock: encoded in memory and written
complete as ``shards/.shard-ID-NNNNNN.h5.partial`` (ID: the writer's id, held locked in
``writers/ID.lock`` while the writer lives). A *commit* then takes ``commit.lock`` and, holding
it only for this: re-reads the manifest, checks that no staged row's id was committed meanwhile
by another writer, renames each staged file to ``shards/shard-ID-NNNNNN.h5`` and replaces the
manifest with one that lists them. The manifest replace is the commit point.

Recovery, also under ``commit.lock``, finds the leftovers of dead writers: a manifest temporary
file (its writer died inside a commit); a renamed shard the manifest does not list (its writer
died between the rename and the manifest replace, both inside the lock: it is adopted); and
partial files of writers whose ``writers/ID.lock`` nobody holds (they died before committing:
removed). A partial file of a live writer is never touched, nor is a listed shard, nor a
complete unlisted one that cannot be adopted (it is reported by validate instead).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from item.errors import IncompatibleError, StoreError
from item.faults import fault
from item.store import files, schema, shards
from item.store.locks import commit_lock, reap_dead_writer_files, writer_alive
from item.store.manifest import add_entry, atomic_write_json, is_debris, new_manifest, now, read_manifest
from item.store.records import AliasRecord, ImageRecord


@dataclass
class StagedShard:
    """A complete shard file written under its writer-unique name, not committed yet.

    ``entry`` is its manifest entry (name, counts, bytes, sha256, writer); ``ids`` and ``paths`` the
    image ids and the paths (image rows and aliases) it holds, to check against other writers' commits.
    """

    entry: dict
    ids: tuple
    paths: tuple
    published: bool = False  # already renamed to its final name (see stage_shard's ``publish``)

    @property
    def partial(self) -> str:
        return shards.partial_name(self.entry["name"])


def compat_mismatch(have: dict, want: dict) -> list[str]:
    """Human-readable differences between two compat dicts, over schema.COMPAT_KEYS."""
    return [f"{k}: store has {have.get(k)!r}, new rows have {want.get(k)!r}"
            for k in schema.COMPAT_KEYS if have.get(k) != want.get(k)]


def stage_shard(root, images: list[ImageRecord], aliases: list[AliasRecord], *, compat: dict, writer_id: str,
                number: int | None = None, publish: bool = False) -> StagedShard:
    """Encode rows and write them as a complete, fsynced partial shard of writer ``writer_id``.

    The name is ``shard-WRITER-NNNNNN.h5`` (``number``: the writer's own sequence; a random one when
    None, for writers that cannot count, e.g. parallel write tasks of one job). Nothing is committed:
    pass the result to :func:`commit_shards`. The writer must hold its ``writers/ID.lock`` (a
    :class:`~item.store.locks.WriterLock`) until then, or another writer's recovery removes the file.

    ``publish=True`` (write tasks of a distributed job, which outlive nothing but whose work should):
    the complete file is also renamed to its final name at once, unlisted. Should the job's driver die
    before committing, the next writer adopts it instead of removing it; while the writer ``writer_id``
    lives, nobody else touches it.
    """
    if number is None:
        number = int.from_bytes(secrets.token_bytes(4), "big")
    name = schema.shard_name(number, writer_id)
    data = shards.encode(images, aliases, compat=compat, writer_id=writer_id, name=name)
    path = Path(root) / schema.SHARD_DIR / shards.partial_name(name)
    files.write_new(path, data)
    try:
        fault("shard-written")
    except BaseException:
        path.unlink()
        raise
    entry = {"name": name, **shards.stats(images, aliases), "bytes": len(data), "sha256": shards.sha256_of(data),
             "writer": writer_id}
    if publish:
        final = path.with_name(name)
        if final.exists() or final.is_symlink():
            path.unlink()
            raise StoreError(f"{final}: exists already; refusing to overwrite it")
        os.replace(path, final)
        files.fsync_dir(path.parent)
    return StagedShard(entry, tuple(r.id for r in images), tuple(r.path for r in images) + tuple(a.path for a in aliases),
                       published=publish)


class Committed:
    """The ids and paths every listed shard holds, kept up to date as other writers commit."""

    def __init__(self, root):
        self.root = Path(root)
        self.names: set[str] = set()
        self.ids: set[str] = set()
        self.paths: set[str] = set()

    def refresh(self, manifest: dict) -> tuple[set[str], set[str]]:
        """Read the shards listed since the last refresh; returns the (ids, paths) they added."""
        import h5py

        new_ids, new_paths = set(), set()
        for entry in manifest["shards"]:
            name = entry["name"]
            if name in self.names:
                continue
            path = self.root / schema.SHARD_DIR / name
            try:
                with h5py.File(path, "r") as f:
                    g, al = f[schema.G_IMAGES], f[schema.G_ALIASES]
                    new_ids.update(s.decode("utf-8") for s in g[schema.ID][()])
                    new_paths.update(s.decode("utf-8") for s in g[schema.PATH][()])
                    new_paths.update(s.decode("utf-8") for s in al[schema.ALIAS_PATH][()])
            except (OSError, KeyError) as exc:
                raise StoreError(f"{path}: cannot read the ids of a listed shard ({exc}); "
                                 f"run `item store validate {self.root}`") from None
            self.names.add(name)
        self.ids |= new_ids
        self.paths |= new_paths
        return new_ids, new_paths


def commit_shards(root, staged: list[StagedShard], committed: Committed | None = None, *,
                  runs: list[dict] | None = None, check=None) -> tuple[dict, list[StagedShard]]:
    """Commit staged shards (in order) under the commit lock; returns (manifest, conflicting shards).

    A staged shard holding an image id that another writer committed meanwhile is not committed
    (it would list that image twice): its partial file is removed and it is returned among the
    conflicts, for the caller to stage its rows again without the duplicates. ``runs``: run summaries
    to append to the manifest in the same replace. ``check``: called under the commit lock before
    anything is renamed (a writer's :meth:`~item.store.locks.WriterLock.verify`); it raises to refuse.
    """
    root = Path(root)
    committed = committed or Committed(root)
    with commit_lock(root):
        if check is not None:
            check()
        manifest = read_manifest(root)
        committed.refresh(manifest)
        ok, conflicts = [], []
        for s in staged:
            if s.entry["name"] in committed.names or any(s.entry["name"] == o.entry["name"] for o in ok):
                raise StoreError(f"{root}: shard {s.entry['name']} is already listed; refusing to overwrite it")
            if committed.ids.intersection(s.ids):
                conflicts.append(s)
                try:
                    (root / schema.SHARD_DIR / (s.entry["name"] if s.published else s.partial)).unlink()
                except FileNotFoundError:
                    pass
            else:
                ok.append(s)
        if not ok and not runs:
            return manifest, conflicts
        shard_dir = root / schema.SHARD_DIR
        renamed = []
        try:
            for s in ok:
                final = shard_dir / s.entry["name"]
                if s.published:
                    if not final.is_file():
                        raise StoreError(f"{final}: the published shard is missing; refusing to list it")
                    continue
                if final.exists() or final.is_symlink():
                    raise StoreError(f"{final}: exists though the manifest does not list it; refusing to overwrite it")
                os.replace(shard_dir / s.partial, final)
                renamed.append(final)
            if ok:
                files.fsync_dir(shard_dir)
                fault("shard-renamed")
            for s in ok:
                add_entry(manifest, s.entry)
            manifest.setdefault("runs", []).extend(runs or [])
            manifest["updated"] = now()
            atomic_write_json(root / schema.MANIFEST, manifest)
        except BaseException:
            # Not committed: leave the store as it was (what this writer had staged is dropped; its rows
            # are still buffered by the caller).
            for p in renamed + [shard_dir / s.partial for s in ok if not s.published]:
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass
            raise
        for s in ok:
            committed.names.add(s.entry["name"])
            committed.ids.update(s.ids)
            committed.paths.update(s.paths)
    return manifest, conflicts


# -- opening a store for writing ----------------------------------------------------------------
def open_store(root, *, compat: dict, models: dict, recipe: str, overwrite: bool = False,
               exclusive: bool = False) -> dict:
    """Create the store (or finish an interrupted overwrite, or replace it when ``overwrite``), check
    its identity and clean up after dead writers, all under the commit lock. Returns the manifest.

    ``overwrite`` needs ``exclusive`` (the caller holds writer.lock exclusively).
    """
    root = Path(root)
    if overwrite and not exclusive:
        raise StoreError("overwrite needs the store's writer.lock held exclusively")
    (root / schema.SHARD_DIR).mkdir(exist_ok=True)
    with commit_lock(root):
        _drop_manifest_tmp(root)
        if overwrite and (root / schema.MANIFEST).exists():
            _refuse_foreign(root)
            _overwrite(root)
        _finish_overwrite(root)
        manifest_path = root / schema.MANIFEST
        if manifest_path.exists():
            manifest = read_manifest(root)
            diff = compat_mismatch(manifest["compat"], compat)
            if diff:
                differ = [k for k in schema.COMPAT_KEYS if manifest["compat"].get(k) != compat.get(k)]
                allowed = schema.mixable_keys(manifest["compat"], compat)
                mixable = all(k in allowed for k in differ)
                why = schema.why_not_mixable(differ, manifest["compat"], compat)
                raise IncompatibleError(
                    f"{root}: refusing to mix rows from different models or settings into one store ("
                    + "; ".join(diff) + "); use another --store or --overwrite"
                    + (", or --allow-mixed (rounding-level differences only)" if mixable else "")
                    + (f" ({why})" if why else ""))
        else:
            others = [p for p in root.iterdir() if p.name not in (schema.LOCK_FILE, schema.COMMIT_LOCK,
                                                                   schema.INDEX_LOCK, schema.WRITERS_DIR,
                                                                   schema.SHARD_DIR, "overlay.lock")]
            if others or not is_debris(root) and list((root / schema.SHARD_DIR).iterdir()):
                raise StoreError(f"{root}: exists, is not empty and is not an ITEM store; choose an empty folder")
            manifest = new_manifest(compat=compat, models=models, recipe=recipe)
            atomic_write_json(manifest_path, manifest)
        manifest = recover(root, manifest, compat)
    return manifest


def _drop_manifest_tmp(root: Path) -> None:
    # Manifest temporary files are only written under the commit lock: one seen now is a dead writer's.
    for p in root.glob("." + schema.MANIFEST + ".*.tmp"):
        p.unlink()


_STORE_ENTRIES = (schema.MANIFEST, schema.SHARD_DIR, schema.INDEX_DIR, schema.LOCK_FILE, schema.COMMIT_LOCK,
                  schema.INDEX_LOCK, schema.WRITERS_DIR, "overlay.json", "overlay.lock")


def _refuse_foreign(root: Path) -> None:
    """--overwrite replaces what an ITEM store holds, whatever that is, and nothing else."""
    try:
        fmt = json.loads((root / schema.MANIFEST).read_text("utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        fmt = None
    foreign = [p.name for p in root.iterdir() if p.name not in _STORE_ENTRIES
               and not p.name.startswith(schema.OVERWRITE_PREFIX) and not p.name.startswith(".")]
    if fmt != schema.STORE_FORMAT or foreign:
        raise StoreError(f"{root}: not an ITEM store ({'unknown files ' + ', '.join(sorted(foreign)[:3]) if foreign else 'its manifest.json is not one'}); "
                         "--overwrite only replaces ITEM stores")


def _overwrite(root: Path) -> None:
    """Move the manifest (first: from then on the folder holds no store), the index and the shards aside."""
    trash = root / (schema.OVERWRITE_PREFIX + secrets.token_hex(6))
    trash.mkdir()
    os.replace(root / schema.MANIFEST, trash / schema.MANIFEST)
    files.fsync_dir(root)
    fault("overwrite-moved")
    from item.store.overlay import OVERLAY_FILE

    if (root / OVERLAY_FILE).exists():  # annotations of the rows being removed
        os.replace(root / OVERLAY_FILE, trash / OVERLAY_FILE)


def _finish_overwrite(root: Path) -> None:
    trashes = [p for p in root.iterdir() if p.name.startswith(schema.OVERWRITE_PREFIX)]
    if not trashes:
        return
    from item.store.overlay import OVERLAY_FILE

    if not (root / schema.MANIFEST).exists():
        for name in (OVERLAY_FILE, schema.INDEX_DIR, schema.SHARD_DIR):
            if (root / name).exists():
                os.replace(root / name, trashes[0] / name)
        (root / schema.SHARD_DIR).mkdir()
        files.fsync_dir(root)
    for t in trashes:
        shutil.rmtree(t, ignore_errors=True)


def recover(root: Path, manifest: dict, compat: dict) -> dict:
    """Clean up after dead writers (call under the commit lock): adopt renamed unlisted shards, remove
    partial shards whose writer is gone. Returns the manifest (rewritten when a shard was adopted)."""
    shard_dir = root / schema.SHARD_DIR
    listed = {e["name"] for e in manifest["shards"]}
    committed = None
    adopted = False
    for p in sorted(shard_dir.iterdir()):
        name = p.name
        if name.endswith(schema.PARTIAL_SUFFIX):
            wid = schema.shard_writer(name)
            if wid is None or not writer_alive(root, wid):
                p.unlink()
        elif shards.is_shard_name(name) and name not in listed:
            wid = schema.shard_writer(name)
            if wid is not None and writer_alive(root, wid):
                continue  # published by a live job that will commit it
            if committed is None:
                committed = Committed(root)
                committed.refresh(manifest)
            entry, ids = _adoptable(p, compat)
            if entry is None:
                if ids is None:  # not a complete shard: a torn file nobody lists
                    p.unlink()
                continue
            if committed.ids.intersection(ids):
                continue  # would list an image twice: left for validate to report
            add_entry(manifest, entry)
            committed.ids.update(ids)
            listed.add(name)
            adopted = True
    if adopted:
        manifest["updated"] = now()
        atomic_write_json(root / schema.MANIFEST, manifest)
    reap_dead_writer_files(root)
    return manifest


def _adoptable(path: Path, compat: dict):
    """(entry, ids) of a complete shard of this store's identity; (None, ids) when complete but not
    adoptable; (None, None) when it is not a complete shard."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if not bool(f.attrs.get(schema.A_COMPLETE, False)):
                return None, None
            ids = [s.decode("utf-8") for s in f[schema.G_IMAGES][schema.ID][()]]
            if json.loads(f.attrs[schema.A_COMPAT]) != compat:
                return None, ids
            stats = shards.shard_stats(f)
            writer = str(f.attrs.get(schema.A_WRITER, ""))
    except (OSError, KeyError, ValueError):
        return None, None
    entry = {"name": path.name, **stats, "bytes": path.stat().st_size, "sha256": shards.file_sha256(path)}
    if writer:
        entry["writer"] = writer
    return entry, ids
