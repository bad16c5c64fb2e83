"""The store manifest: read with schema checks and migrations, written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from item import __version__
from item.errors import SchemaError, StoreError
from item.faults import fault
from item.store import schema


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then os.replace: readers see old or new, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if path.name == schema.MANIFEST:
            fault("manifest-tmp")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: Path, obj: dict) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def new_manifest(*, compat: dict, models: dict, recipe: str) -> dict:
    return {
        "format": schema.STORE_FORMAT,
        "schema_version": schema.SCHEMA_VERSION,
        "package_version": __version__,
        "created": now(),
        "updated": now(),
        "embed_dim": int(compat["embed_dim"]),
        "misalignment_dim": int(compat["misalignment_dim"]),
        "recipe": recipe,
        "random_weights": bool(compat["random_weights"]),
        "compat": compat,
        "models": models,
        "counts": {"n_images": 0, "n_ok": 0, "n_skipped": 0, "n_objects": 0, "n_grounded": 0,
                   "n_aliases": 0, "skipped_by_reason": {}},
        "shards": [],
        "runs": [],
    }


# Older schema versions are read by explicit, step-by-step migrations: MIGRATIONS[v] turns a
# version-v manifest into version v+1.
def _v1_to_v2(manifest: dict) -> dict:
    """Schema 2 records a store's identity keys: a schema-1 store never recorded them, so they read as
    'unrecorded' (a writer or head with a known identity is then refused, naming them). Its shards lack the
    caption_encoded column; readers take the caption for it (schema.COLUMN_FALLBACK)."""
    m = dict(manifest)
    m["compat"] = {**{k: schema.UNRECORDED for k in schema.IDENTITY_KEYS}, **manifest.get("compat", {})}
    m["schema_version"] = 2
    return m


MIGRATIONS: dict = {1: _v1_to_v2}


def check_version(version, what: str) -> None:
    """Refuse a newer or unknown schema with a message that says what to do."""
    if not isinstance(version, int):
        raise SchemaError(f"{what} has no valid schema_version ({version!r}); it was not written by ITEM")
    if version > schema.SCHEMA_VERSION:
        raise SchemaError(
            f"{what} uses store schema {version}, newer than the {schema.SCHEMA_VERSION} this ITEM "
            f"{__version__} reads: upgrade with `pip install -U item-detect`"
        )
    if version < schema.SCHEMA_VERSION and version not in MIGRATIONS:
        raise SchemaError(f"{what} uses store schema {version}, which this ITEM cannot migrate")


def read_manifest(root: Path) -> dict:
    path = Path(root) / schema.MANIFEST
    if not Path(root).is_dir():
        raise StoreError(f"{root}: no such store (not a directory)")
    if not path.is_file():
        raise StoreError(f"{root}: not an ITEM store (no {schema.MANIFEST})")
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != schema.STORE_FORMAT:
        raise StoreError(f"{path}: not an ITEM store manifest")
    version = manifest.get("schema_version")
    check_version(version, str(path))
    while manifest["schema_version"] < schema.SCHEMA_VERSION:
        manifest = MIGRATIONS[manifest["schema_version"]](manifest)
    return manifest
