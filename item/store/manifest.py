"""The store manifest: read with schema checks and migrations, written atomically."""

from __future__ import annotations

import json
from pathlib import Path

from item import __version__
from item.errors import StoreError
from item.store import files, schema
from item.store.versions import MIGRATIONS, check_version, now  # noqa: F401  (importable from here as before)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a random temporary name in the same folder, fsync, then os.replace: readers see old or new."""
    path = Path(path)
    files.atomic_write_bytes(path, data, fault_point="manifest-tmp" if path.name == schema.MANIFEST else None)


fsync_dir = files.fsync_dir


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


def add_entry(manifest: dict, entry: dict) -> None:
    """Append a shard entry and add its counts to the manifest's."""
    from item.store.shards import COUNT_KEYS

    manifest["shards"].append(entry)
    c = manifest["counts"]
    for k in COUNT_KEYS:
        c[k] = c.get(k, 0) + entry[k]
    for reason, k in entry["skipped_by_reason"].items():
        c["skipped_by_reason"][reason] = c["skipped_by_reason"].get(reason, 0) + k


EMPTY_DEBRIS = "empty store (interrupted before the first commit)"


def is_debris(root: Path) -> bool:
    """True for a folder that holds only what a run killed before its first commit leaves (lock files,
    writer notes, unfinished shards, a manifest's temporary file) or an interrupted --overwrite."""
    root = Path(root)
    if not root.is_dir() or (root / schema.MANIFEST).exists():
        return False
    entries = list(root.iterdir())
    if not entries:
        return False
    overwriting = any(p.name.startswith(schema.OVERWRITE_PREFIX) for p in entries)
    for p in entries:
        name = p.name
        if name in (schema.LOCK_FILE, schema.COMMIT_LOCK, schema.INDEX_LOCK, "overlay.lock") and not p.is_symlink():
            continue
        if name == schema.WRITERS_DIR and p.is_dir() and not p.is_symlink():
            continue
        if name.startswith("." + schema.MANIFEST + ".") and name.endswith(".tmp"):
            continue
        if name.startswith(schema.OVERWRITE_PREFIX) or (overwriting and name in (schema.SHARD_DIR, schema.INDEX_DIR,
                                                                                "overlay.json")):
            continue
        if name == schema.SHARD_DIR and p.is_dir() and not p.is_symlink() and all(
                q.name.endswith(schema.PARTIAL_SUFFIX) for q in p.iterdir()):
            continue
        return False
    return True


def check_structure(manifest: dict, path) -> None:
    """Refuse (StoreError) a manifest whose shard list or counts are malformed: a name outside shards/,
    a name listed twice, a missing or non-numeric count. Checked before anything reads or writes."""
    from item.store.shards import COUNT_KEYS, check_entry

    for key in ("embed_dim", "misalignment_dim"):
        v = manifest.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise StoreError(f"{path}: {key} is {v!r}, not a size; the manifest is damaged")
    if not isinstance(manifest.get("compat"), dict):
        raise StoreError(f"{path}: no compat section; the manifest is damaged")
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise StoreError(f"{path}: no shard list; the manifest is damaged")
    seen = set()
    for i, entry in enumerate(shards):
        problem = check_entry(i, entry)
        if problem:
            raise StoreError(f"{path}: {problem}; the manifest is damaged, refusing to use it")
        if entry["name"] in seen:
            raise StoreError(f"{path}: shard {entry['name']} is listed twice; the manifest is damaged, "
                             "refusing to use it")
        seen.add(entry["name"])
    counts = manifest.get("counts")
    if not isinstance(counts, dict) or any(not isinstance(counts.get(k), int) for k in COUNT_KEYS) \
            or not isinstance(counts.get("skipped_by_reason"), dict):
        raise StoreError(f"{path}: counts are missing or not numbers; the manifest is damaged")


def read_manifest(root: Path) -> dict:
    path = Path(root) / schema.MANIFEST
    if not Path(root).is_dir():
        raise StoreError(f"{root}: no such store (not a directory)")
    if not path.is_file():
        if is_debris(root):
            raise StoreError(f"{root}: {EMPTY_DEBRIS}; nothing to read yet")
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
    check_structure(manifest, path)
    return manifest
