"""The metadata overlay: label, generator and split of stored rows, changed without touching a shard.

Shards are immutable, yet a researcher's metadata is not: splits are assigned after featurizing,
labels get corrected, generators renamed. ``DIR/overlay.json`` holds those changes keyed by image
id (the sha256 of the file's bytes), so they survive any number of later featurize runs::

    {"format": "item-overlay", "schema_version": 1, "version": 3, "updated": "...",
     "rows": {"<image id>": {"split": "train", "label": "fake"}, ...},
     "history": [{"version": 3, "at": "...", "command": "item store annotate ...", "changed": 12}, ...]}

``version`` counts the writes (0 = no overlay); ``digest`` (a hash of ``rows``) names the exact
content. Every reader applies the overlay (:meth:`StoreReader.metadata`), so train, eval, info,
export and neighbours all see one truth; heads record the version and digest they were trained
with. Writes go through a lock file and an atomic replace: a reader sees the old or the new
overlay, never half of one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from item.errors import InputError, SchemaError, StoreError
from item.store import schema
from item.store.files import atomic_write_bytes
from item.store.manifest import now

OVERLAY_FILE = "overlay.json"
OVERLAY_LOCK = "overlay.lock"
OVERLAY_FORMAT = "item-overlay"
OVERLAY_SCHEMA = 1
#: Image columns the overlay may change; every other column is what featurize stored.
FIELDS = (schema.LABEL, schema.GENERATOR, schema.SPLIT)
#: How ``item store split`` stratifies: by label alone, or by (generator, label).
SPLIT_BY = {"generator": "each generator's reals and fakes apart", "label": "real and fake apart"}


def overlay_path(root) -> Path:
    return Path(root) / OVERLAY_FILE


def empty_overlay() -> dict:
    return {"format": OVERLAY_FORMAT, "schema_version": OVERLAY_SCHEMA, "version": 0, "updated": None,
            "rows": {}, "history": []}


def digest(overlay: dict) -> str:
    """16 hex characters naming the overlay's content (rows only, key order irrelevant)."""
    text = json.dumps(overlay.get("rows", {}), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def read_overlay(root) -> dict:
    """The store's overlay (an empty one, version 0, when it has none). Raises StoreError when malformed."""
    path = overlay_path(root)
    if not path.is_file():
        return empty_overlay()
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: unreadable metadata overlay ({exc}); run `item store validate {root}`") from None
    problems = _shape_problems(data)
    if problems:
        raise StoreError(f"{path}: {problems[0]}; run `item store validate {root}`")
    if data["schema_version"] > OVERLAY_SCHEMA:
        raise SchemaError(f"{path} uses overlay schema {data['schema_version']}, newer than the {OVERLAY_SCHEMA} "
                          "this ITEM reads: upgrade with `pip install -U item-detect`")
    return data


def overlay_version(overlay: dict) -> dict:
    """What a head records: ``{"version": int, "digest": str, "n_rows": int}``."""
    return {"version": int(overlay.get("version", 0)), "digest": digest(overlay), "n_rows": len(overlay["rows"])}


def _shape_problems(data) -> list[str]:
    if not isinstance(data, dict) or data.get("format") != OVERLAY_FORMAT:
        return ["not an ITEM metadata overlay"]
    problems = []
    if not isinstance(data.get("schema_version"), int) or isinstance(data.get("schema_version"), bool):
        problems.append("no valid schema_version")
    if not isinstance(data.get("version"), int) or data["version"] < 0:
        problems.append("no valid version")
    rows = data.get("rows")
    if not isinstance(rows, dict):
        return problems + ["'rows' is not an object"]
    for key, entry in rows.items():
        if not isinstance(entry, dict) or not entry or set(entry) - set(FIELDS) or \
                not all(isinstance(v, str) for v in entry.values()):
            problems.append(f"row {key!r}: expected an object of {', '.join(FIELDS)} strings")
            break
        if schema.LABEL in entry and entry[schema.LABEL] not in schema.LABELS:
            problems.append(f"row {key!r}: unknown label {entry[schema.LABEL]!r}")
            break
    return problems


def check_overlay(root, ids) -> tuple[list[str], list[str]]:
    """(problems, warnings) of the overlay against the store's image ids (for ``item store validate``)."""
    path = overlay_path(root)
    if not path.is_file():
        return [], []
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        return [f"{OVERLAY_FILE}: unreadable ({exc})"], []
    problems = [f"{OVERLAY_FILE}: {p}" for p in _shape_problems(data)]
    if problems:
        return problems, []
    unknown = set(data["rows"]) - set(ids)
    warnings = [f"{OVERLAY_FILE}: {len(unknown)} entr{'y' if len(unknown) == 1 else 'ies'} name no stored image "
                "(ignored by readers)"] if unknown else []
    return [], warnings


def apply_overlay(meta: dict[str, np.ndarray], overlay: dict) -> dict[str, np.ndarray]:
    """``meta`` (metadata columns over all rows) with the overlay's values put in; returns new arrays."""
    rows = overlay.get("rows") or {}
    if not rows or schema.ID not in meta:
        return meta
    out = dict(meta)
    cols = {c: np.array(meta[c], dtype=object, copy=True) for c in FIELDS if c in meta}
    for i, key in enumerate(meta[schema.ID]):
        entry = rows.get(key)
        if entry:
            for c, v in entry.items():
                if c in cols:
                    cols[c][i] = v
    out.update(cols)
    return out


@contextmanager
def _locked(root):
    """An exclusive flock on DIR/overlay.lock: one overlay writer at a time (read-modify-write)."""
    path = Path(root) / OVERLAY_LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(f"{path}: cannot open the overlay's lock ({exc.strerror or exc}); nothing was changed") \
            from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@dataclass
class Change:
    """New values for one stored image: fields left None are not changed."""

    id: str
    label: str | None = None
    generator: str | None = None
    split: str | None = None


@dataclass
class OverlayResult:
    version: int
    digest: str
    n_changed: int  # rows whose metadata changed
    changed_by_field: dict = field(default_factory=dict)  # field -> rows changed in it


def write_changes(root, changes: list[Change], current: dict[str, dict], command: str = "") -> OverlayResult:
    """Record ``changes`` in the overlay. ``current``: id -> {field: value} as readers see it now.

    Values equal to what readers show already are not recorded; a new version is written only
    when something changed.
    """
    for ch in changes:
        if ch.label is not None and ch.label not in schema.LABELS:
            raise InputError(f"unknown label {ch.label!r}; valid: {', '.join(schema.LABELS)}")
    with _locked(root):
        data = read_overlay(root)
        by_field: Counter = Counter()
        changed = set()
        for ch in changes:
            have = current.get(ch.id)
            if have is None:
                raise StoreError(f"image {ch.id} is not in the store")
            for c in FIELDS:
                v = getattr(ch, c)
                if v is None or have.get(c) == v:
                    continue
                data["rows"].setdefault(ch.id, {})[c] = v
                by_field[c] += 1
                changed.add(ch.id)
        if changed:
            data["version"] = int(data["version"]) + 1
            data["updated"] = now()
            data["history"].append({"version": data["version"], "at": data["updated"], "command": command,
                                    "changed": len(changed), "by_field": dict(by_field)})
            path = overlay_path(root)
            try:
                atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"),
                                   fault_point="overlay-tmp")
            except OSError as exc:
                raise StoreError(f"{path}: cannot write the metadata overlay ({exc.strerror or exc}); nothing was "
                                 f"changed: the store keeps overlay version {int(data['version']) - 1}, and the "
                                 "same command can be run again once there is room") from None
    return OverlayResult(int(data["version"]), digest(data), len(changed), dict(by_field))


def assign_splits(ids, labels, groups=None, *, val: float, test: float, seed: int) -> np.ndarray:
    """A split name per row ('train' / 'val' / 'test'), stratified by label (and ``groups``), seeded.

    Each label is split apart; with ``groups`` (e.g. generators) each group of a label is split
    apart too, in a seeded order, with the rounding carried from group to group so that the label's
    totals come out at ``round(val * n)`` and ``round(test * n)`` while a group too small for a
    share of its own (one or two rows) lands wholly in one split. A group of three rows or more
    gets at least one validation, one test (when the fraction is above 0) and one training row.
    Within a group rows are ordered by id before the seeded shuffle, so the result depends on the
    store's content, not on the order files were featurized in.
    """
    if not (0.0 <= val < 1.0 and 0.0 <= test < 1.0 and val + test < 1.0):
        raise InputError(f"--val {val} and --test {test}: each in [0, 1) and together below 1")
    ids = np.asarray(ids).astype(str)
    labels = np.asarray(labels).astype(str)
    groups = np.full(ids.size, "", dtype=object) if groups is None else np.asarray(groups).astype(str)
    out = np.full(ids.size, "train", dtype=object)
    rng = np.random.default_rng(seed)
    for lab in sorted(set(labels.tolist())):
        names = sorted(set(groups[labels == lab].tolist()))
        names = [names[k] for k in rng.permutation(len(names))]
        seen = n_test_done = n_val_done = 0
        for g in names:
            idx = np.flatnonzero((labels == lab) & (groups == g))
            idx = idx[np.argsort(ids[idx], kind="stable")]
            idx = idx[rng.permutation(idx.size)]
            n = idx.size
            seen += n
            n_test = min(max(int(round(test * seen)) - n_test_done, 0), n)
            n_val = min(max(int(round(val * seen)) - n_val_done, 0), n - n_test)
            if n >= 3:
                n_test = max(n_test, 1 if test > 0 else 0)
                n_val = max(n_val, 1 if val > 0 else 0)
                while n_test + n_val > n - 1:
                    if n_val >= n_test:
                        n_val -= 1
                    else:
                        n_test -= 1
            n_test_done += n_test
            n_val_done += n_val
            out[idx[:n_test]] = "test"
            out[idx[n_test:n_test + n_val]] = "val"
    return out
