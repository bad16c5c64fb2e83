"""Change stored rows' metadata without re-encoding: ``item store split`` and ``item store annotate``.

Both write the metadata overlay (:mod:`item.store.overlay`); no shard is touched and no model is
loaded, so they run in seconds on any store.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from item.errors import InputError
from item.manifests import UNKNOWN_GENERATOR, generator_name
from item.store import schema
from item.store.overlay import FIELDS, SPLIT_BY, Change, assign_splits, write_changes
from item.store.reader import StoreReader
from item.store.writer import storable_text

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class SplitResult:
    version: int
    digest: str
    n_changed: int
    counts: list[dict]  # {'split', 'label', 'n'}: ok rows per split and label after the change


def split_store(root, *, val: float = 0.2, test: float = 0.2, by: str = "generator", seed: int = 0,
                overwrite: bool = False, new_only: bool = False, command: str = "") -> SplitResult:
    """Assign train / val / test to every ok row, stratified ``by`` generator (and label) or label, seeded.

    Rows that already have a split are refused unless ``overwrite`` (then every row is reassigned) or
    ``new_only`` (then only rows without a split are assigned, stratified among themselves, e.g. rows
    committed after an earlier split; the others keep theirs). ``counts`` covers every ok row after the
    change.
    """
    if by not in SPLIT_BY:
        raise InputError(f"unknown --by {by!r}; choose {', '.join(SPLIT_BY)}")
    if overwrite and new_only:
        raise InputError("--overwrite reassigns every row and --new-only only rows without a split: give one")
    with StoreReader(root) as reader:
        rows = reader.select()
        if rows.size == 0:
            raise InputError(f"{root}: no ok rows to split")
        meta = reader.metadata([schema.ID, schema.LABEL, schema.GENERATOR, schema.SPLIT])
        have = meta[schema.SPLIT][rows].astype(str)
        if not overwrite and not new_only and (have != "").any():
            found = ", ".join(f"{s} {n}" for s, n in sorted(Counter(have[have != ""].tolist()).items()))
            n_new = int((have == "").sum())
            raise InputError(f"{int((have != '').sum())} of {rows.size} rows already have a split ({found}); "
                             + (f"add --new-only to split the {n_new} rows without one, or " if n_new else "")
                             + "add --overwrite to reassign every row")
        todo = have == "" if new_only else np.ones(rows.size, bool)
        if not todo.any():
            raise InputError(f"every one of the {rows.size} ok rows has a split already; nothing to do "
                             "(--overwrite reassigns them all)")
        labels = meta[schema.LABEL][rows].astype(str)
        groups = None if by == "label" else meta[schema.GENERATOR][rows][todo].astype(str)
        ids = meta[schema.ID][rows].astype(str)
        new = assign_splits(ids[todo], labels[todo], groups, val=val, test=test, seed=seed)
        current = {i: {schema.SPLIT: s} for i, s in zip(ids[todo], have[todo])}
    res = write_changes(root, [Change(i, split=str(s)) for i, s in zip(ids[todo], new)], current, command=command)
    final = have.astype(object)
    final[todo] = new
    counts = Counter(zip(final.tolist(), labels.tolist()))
    order = {s: k for k, s in enumerate(SPLIT_NAMES)}
    table = [{"split": s, "label": lab, "n": n} for (s, lab), n in
             sorted(counts.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1]))]
    return SplitResult(res.version, res.digest, res.n_changed, table)


@dataclass(frozen=True)
class Update:
    """One manifest row for ``annotate``: which image (``id`` or ``path``) and its new values (None: keep)."""

    origin: str
    path: str = ""
    id: str = ""
    label: str | None = None
    generator: str | None = None
    split: str | None = None


@dataclass
class AnnotateResult:
    version: int
    digest: str
    n_rows: int  # manifest rows read
    n_matched: int
    n_changed: int  # stored images whose metadata changed
    changed_by_field: dict = field(default_factory=dict)
    matched_by: dict = field(default_factory=dict)  # 'id' / 'path' / 'content' -> rows
    not_in_store: list = field(default_factory=list)  # (origin, path or id)
    warnings: list = field(default_factory=list)  # e.g. a label flipped while the generator was kept


def updates_from_manifest(manifest) -> list[Update]:
    """The Updates a CSV / JSON Lines manifest asks for: ``path`` and / or ``id``, and any of ``label``,
    ``generator``, ``split`` (empty values keep what the store holds). Raises InputError."""
    from item.manifests import normalize_label, read_manifest_records

    columns, records = read_manifest_records(str(manifest), keys=("path", "id"))
    fields = [c for c in ("label", "generator", "split") if c in columns]
    if not fields:
        raise InputError(f"manifest {manifest}: nothing to annotate; give a label, generator or split column "
                         f"(found: {', '.join(columns)})")
    updates = []
    for origin, rec in records:
        values = {}
        for c in fields:
            raw = rec.get(c)
            text = "" if raw is None else str(raw).strip()
            if not text:
                continue
            if c == "label":
                text = normalize_label(text)
                if text is None:
                    raise InputError(f"{origin}: unknown label {raw!r} (valid: real, fake, unknown, or 0/1, "
                                     "nature/ai)")
            values[c] = text
        path = str(rec.get("path") or "")
        ident = str(rec.get("id") or "").strip()
        if not path and not ident:
            raise InputError(f"{origin}: no path or id")
        updates.append(Update(origin=origin, path=path, id=ident, **values))
    return updates


def _sha256(path: str) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def annotate_store(root, updates: list[Update], command: str = "") -> AnnotateResult:
    """Match each update to a stored image (by id, by stored or duplicate path, else by the sha256 of
    the file at its path) and record its new label / generator / split in the overlay.

    Updates that match no stored image are returned in ``not_in_store``. Two updates of one image
    that disagree are refused (naming both rows).
    """
    with StoreReader(root) as reader:
        meta = reader.metadata([schema.ID, schema.PATH, *FIELDS])
        ids = meta[schema.ID].astype(str)
        id_set = set(ids.tolist())
        by_path = {p: i for p, i in zip(meta[schema.PATH].astype(str), ids)}
        aliases = reader.aliases()
        for p, i in zip(aliases[schema.ALIAS_PATH].astype(str), aliases[schema.ALIAS_ID].astype(str)):
            by_path.setdefault(p, i)
        current = {i: {c: str(meta[c][k]) for c in FIELDS} for k, i in enumerate(ids)}
    changes: dict[str, Change] = {}
    first: dict[str, str] = {}
    matched_by: Counter = Counter()
    missing = []
    for u in updates:
        key, how = None, ""
        if u.id:
            key, how = (u.id, "id") if u.id in id_set else (None, "")
        elif u.path:
            key = by_path.get(storable_text(u.path))
            how = "path"
            if key is None:
                digest = _sha256(u.path)
                key, how = (digest, "content") if digest in id_set else (None, "")
        if key is None:
            missing.append((u.origin, u.id or u.path))
            continue
        matched_by[how] += 1
        new = Change(key, label=u.label, generator=u.generator, split=u.split)
        old = changes.get(key)
        if old is not None:
            for c in FIELDS:
                a, b = getattr(old, c), getattr(new, c)
                if a is not None and b is not None and a != b:
                    raise InputError(f"{first[key]} and {u.origin} ({u.path or u.id}) name the same image (identical "
                                     f"bytes) with different {c} ({a!r}, {b!r}); one image cannot be both: correct "
                                     "one of these rows")
                if a is None:
                    setattr(old, c, b)
        else:
            changes[key] = new
            first[key] = f"{u.origin} ({u.path or u.id})"
    res = write_changes(root, list(changes.values()), current, command=command)
    return AnnotateResult(res.version, res.digest, len(updates), sum(matched_by.values()), res.n_changed,
                          res.changed_by_field, dict(matched_by), missing,
                          generator_warnings(changes.values(), current, first))


def generator_warnings(changes, current: dict, origin_of: dict) -> list[str]:
    """Say so when a label is flipped (real <-> fake) and the generator is kept: a real photo's
    generator (``camera``, a dataset's real pool) on a fake, or a generator's name on a real, is
    then what eval groups and pairs by."""
    kept: dict[tuple[str, str], list[str]] = {}
    for ch in changes:
        have = current.get(ch.id, {})
        old, new = have.get("label"), ch.label
        if new is None or new == old or ch.generator is not None or {old, new} != {"real", "fake"}:
            continue
        kept.setdefault((new, have.get("generator", "")), []).append(origin_of.get(ch.id, ch.id))
    out = []
    for (label, gen), origins in sorted(kept.items()):
        was = "real" if label == "fake" else "fake"
        out.append(f"{len(origins)} image(s) relabelled {label} keep the generator {gen!r} they had as {was} "
                   f"(first: {origins[0]}); eval groups them under {gen!r}. Set the generator too: give the manifest "
                   f"a generator column (path,label,generator) and run `item store annotate` again")
    return out


def _stored_rows_of(reader) -> tuple[dict, dict]:
    """({stored path or alias path: store row}, metadata) for matching inputs with stored images."""
    meta = reader.metadata([schema.ID, schema.PATH, *FIELDS])
    row_of = {p: k for k, p in enumerate(meta[schema.PATH].astype(str))}
    id_row = {i: k for k, i in enumerate(meta[schema.ID].astype(str))}
    aliases = reader.aliases()
    for p, i in zip(aliases[schema.ALIAS_PATH].astype(str), aliases[schema.ALIAS_ID].astype(str)):
        if p not in row_of and i in id_row:
            row_of[p] = id_row[i]
    return row_of, meta


def _given(field: str, value) -> bool:
    """Does an input name this field? '' never does, nor 'unknown' for a label or a generator (the name of
    none, :data:`item.manifests.UNKNOWN_GENERATOR`)."""
    if field == schema.GENERATOR:
        return generator_name(value) != UNKNOWN_GENERATOR
    return bool(value) and not (field == schema.LABEL and value == "unknown")


def input_conflicts(root, rows) -> list[list[tuple[str, str, str]]]:
    """Inputs that are one stored image (the same bytes) under different labels, generators or splits.

    ``rows``: (path, label, generator, split) of a run's inputs, as for :func:`metadata_disagreements`.
    Returns one group per image: [(path, field, given value), ...] for the inputs that disagree (in input
    order). No annotation can apply both values: one of the rows is wrong and must be corrected.
    """
    with StoreReader(root) as reader:
        row_of, _ = _stored_rows_of(reader)
    given: dict[int, list] = {}
    for path, *values in rows:
        k = row_of.get(storable_text(path))
        if k is not None:
            given.setdefault(k, []).append((path, values))
    out = []
    for entries in given.values():
        for j, c in enumerate(FIELDS):
            named = [(p, v[j]) for p, v in entries if _given(c, v[j])]
            if len({v for _, v in named}) > 1:
                out.append([(p, c, v) for p, v in named])
    return out


def metadata_disagreements(root, rows) -> list[tuple[str, str, str, str]]:
    """Inputs already stored whose given metadata differs from what readers see.

    ``rows``: (path, label, generator, split) of a featurize run's inputs; an empty value (and label or
    generator 'unknown') counts as not given. Inputs that contradict each other (:func:`input_conflicts`) are
    left out: annotating cannot resolve them. Returns (path, field, stored value, given value), one per
    field.
    """
    conflicting = {(p, c) for group in input_conflicts(root, rows) for p, c, _ in group}
    with StoreReader(root) as reader:
        row_of, meta = _stored_rows_of(reader)
    out = []
    for path, *values in rows:
        k = row_of.get(storable_text(path))
        if k is None:
            continue
        for c, v in zip(FIELDS, values):
            if not _given(c, v) or (path, c) in conflicting:
                continue
            if str(meta[c][k]) != v:
                out.append((path, c, str(meta[c][k]), v))
    return out


def conflict_message(group: list[tuple[str, str, str]], n_groups: int = 1) -> str:
    """One line for inputs that are the same bytes under different values of one field, and the fix."""
    field = group[0][1]
    named = " and ".join(f"{p} ({field} {v!r})" for p, _, v in group[:3])
    more = f" ({n_groups - 1} more such images)" if n_groups > 1 else ""
    return (f"{named} are the same image (identical bytes) given different {field}s{more}; one image cannot be "
            f"both: correct the {field} of one of these rows in the manifest (the store keeps the first, "
            f"{group[0][2]!r}; `item store annotate` applies a corrected manifest)")
