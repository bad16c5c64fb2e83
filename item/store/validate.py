"""Check a store against itself: manifest vs shards (names, sizes, checksums, counts), shapes, dtypes,
values, and every index (opened, its files' checksums, the store fingerprint it was built for).

:func:`validate` never raises: whatever it finds, however malformed, becomes a listed problem."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from item.errors import ItemError
from item.store import schema
from item.store.manifest import EMPTY_DEBRIS, check_version, is_debris, read_manifest
from item.store.shards import file_sha256, is_shard_name, shard_stats
from item.store.versions import migrate_compat

NORM_TOLERANCE = 2e-2  # float16 storage of unit vectors keeps norms within ~1e-3; be generous


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)  # the store is not valid
    warnings: list[str] = field(default_factory=list)  # valid, but something needs attention
    state: str = ""  # e.g. "empty store (interrupted before the first commit)"

    @property
    def ok(self) -> bool:
        return not self.problems


def validate(root, *, check_values: bool = True, check_sums: bool | None = None, chunk_rows: int = 65536) -> Report:
    """Every check; never raises (problems are listed). ``check_values=False`` (``--quick``) skips
    reading vectors and computing checksums."""
    rep = Report()
    try:
        _validate(Path(root), rep, check_values, check_values if check_sums is None else check_sums, chunk_rows)
    except Exception as exc:  # a check that met something nobody foresaw: still a report, never a traceback
        rep.problems.append(f"validation stopped early: {type(exc).__name__}: {exc}")
    return rep


def _validate(root: Path, rep: Report, check_values: bool, check_sums: bool, chunk_rows: int) -> None:
    import h5py

    if is_debris(root):
        rep.state = EMPTY_DEBRIS
        rep.warnings.append(f"{root}: {EMPTY_DEBRIS}; the next featurize starts it afresh")
        return
    try:
        manifest = read_manifest(root)
    except ItemError as exc:
        rep.problems.append(str(exc))
        return
    d, m = int(manifest["embed_dim"]), int(manifest["misalignment_dim"])
    shard_dir = root / schema.SHARD_DIR
    listed = [e["name"] for e in manifest["shards"]]
    totals = {"n_images": 0, "n_ok": 0, "n_skipped": 0, "n_objects": 0, "n_grounded": 0, "n_aliases": 0}
    ids: list[str] = []
    for entry in manifest["shards"]:
        name = entry["name"]
        path = shard_dir / name
        if not path.is_file():
            rep.problems.append(f"{name}: listed in the manifest but missing")
            continue
        try:
            with h5py.File(path, "r") as f:
                check_version(int(f.attrs.get(schema.A_SCHEMA, -1)), name)
        except ItemError as exc:
            rep.problems.append(str(exc))
            continue
        except OSError:
            pass  # reported below, after the size and checksum say why
        if "bytes" in entry and path.stat().st_size != entry["bytes"]:
            rep.problems.append(f"{name}: {path.stat().st_size} bytes, the manifest says {entry['bytes']}")
            continue
        if "sha256" not in entry:
            rep.warnings.append(f"{name}: no checksum recorded (written by an older ITEM); contents not verified")
        elif check_sums and file_sha256(path) != entry["sha256"]:
            rep.problems.append(f"{name}: contents differ from what was written (sha256 mismatch): the file "
                                "was changed or damaged after its commit")
            continue
        try:
            with h5py.File(path, "r") as f:
                _check_shard(f, name, entry, d, m, manifest, rep, ids, totals, check_values, chunk_rows)
        except OSError as exc:
            rep.problems.append(f"{name}: unreadable HDF5 ({exc})")
    for p in sorted(shard_dir.iterdir()) if shard_dir.is_dir() else []:
        if p.name.endswith(schema.PARTIAL_SUFFIX):
            rep.warnings.append(f"{p.name}: unfinished shard of a running writer or of an interrupted run (the next "
                                "featurize removes it once its writer is gone)")
        elif p.name not in listed and is_shard_name(p.name):
            rep.warnings.append(f"{p.name}: shard not in the manifest (ignored by readers; the next featurize "
                                "adopts it if complete)")
        elif p.name not in listed:
            rep.warnings.append(f"{p.name}: not a shard file; readers ignore it")
    counts = manifest["counts"]
    for k, v in totals.items():
        if counts.get(k) != v:
            rep.problems.append(f"manifest counts {k}={counts.get(k)} but the shards hold {v}")
    if len(ids) != len(set(ids)):
        rep.problems.append(f"{len(ids) - len(set(ids))} image id(s) appear more than once")
    _check_indexes(root, rep, check_sums)
    from item.store.overlay import check_overlay

    problems, warnings = check_overlay(root, ids)
    rep.problems += problems
    rep.warnings += warnings


def _check_shard(f, name, entry, d, m, manifest, rep, ids, totals, check_values, chunk_rows) -> None:
    from item.store.manifest import check_version

    try:
        check_version(int(f.attrs.get(schema.A_SCHEMA, -1)), name)
    except ItemError as exc:
        rep.problems.append(str(exc))
        return
    if not bool(f.attrs.get(schema.A_COMPLETE, False)):
        rep.problems.append(f"{name}: not marked complete")
        return
    try:
        shard_compat = json.loads(f.attrs[schema.A_COMPAT])
        shard_compat = migrate_compat(shard_compat, int(f.attrs.get(schema.A_SCHEMA, -1)))
        if shard_compat != manifest["compat"]:
            rep.problems.append(f"{name}: written with other models/preprocessing than the manifest says")
    except (KeyError, ValueError):
        rep.problems.append(f"{name}: no readable compat attribute")
    for group, columns in ((schema.G_IMAGES, schema.IMAGE_COLUMNS), (schema.G_OBJECTS, schema.OBJECT_COLUMNS),
                           (schema.G_ALIASES, schema.ALIAS_COLUMNS)):
        if group not in f:
            rep.problems.append(f"{name}: group {group!r} missing")
            return
        g = f[group]
        lengths = set()
        for col in columns:
            if col.name not in g and schema.COLUMN_SINCE.get(col.name, 1) > int(f.attrs.get(schema.A_SCHEMA, -1)):
                continue  # a column added after this shard's schema: readers use COLUMN_FALLBACK
            if col.name not in g:
                rep.problems.append(f"{name}: {group}/{col.name} missing")
                continue
            ds = g[col.name]
            want_dtype = schema.column_dtype(col.kind)
            width = schema.column_width(col.kind, d, m)
            if col.kind == "str":
                if ds.dtype.kind != "O":
                    rep.problems.append(f"{name}: {group}/{col.name} dtype {ds.dtype}, expected UTF-8 strings")
            elif ds.dtype != want_dtype:
                rep.problems.append(f"{name}: {group}/{col.name} dtype {ds.dtype}, expected {want_dtype}")
            want_ndim = 1 if width is None else 2
            if ds.ndim != want_ndim or (width is not None and ds.shape[1] != width):
                rep.problems.append(f"{name}: {group}/{col.name} shape {ds.shape}, expected (n,{width or ''})"
                                    .replace(",)", ")"))
            lengths.add(ds.shape[0])
        if len(lengths) > 1:
            rep.problems.append(f"{name}: {group} columns have different lengths {sorted(lengths)}")
            return
    if rep.problems and any(p.startswith(name) for p in rep.problems):
        return
    stats = shard_stats(f)
    for k in totals:
        totals[k] += stats[k]
        if entry.get(k) != stats[k]:
            rep.problems.append(f"{name}: manifest says {k}={entry.get(k)}, the shard holds {stats[k]}")
    if int(f.attrs.get(schema.A_N_IMAGES, -1)) != stats["n_images"]:
        rep.problems.append(f"{name}: attribute n_images disagrees with its rows")
    g, og = f[schema.G_IMAGES], f[schema.G_OBJECTS]
    ids.extend(s.decode("utf-8") for s in g[schema.ID][()])
    start, count = g[schema.OBJECT_START][()], g[schema.OBJECT_COUNT][()]
    n_obj = og[schema.NOUN].shape[0]
    expect_start = np.concatenate([[0], np.cumsum(count)[:-1]]) if count.size else count
    if count.size and (not np.array_equal(start, expect_start) or int(count.sum()) != n_obj):
        rep.problems.append(f"{name}: object offsets do not cover the objects table")
    elif n_obj and not np.array_equal(og[schema.OBJ_IMAGE][()], np.repeat(np.arange(count.size), count)):
        rep.problems.append(f"{name}: objects point at the wrong image rows")
    if not check_values:
        return
    status = np.array([s.decode("utf-8") for s in g[schema.STATUS][()]])
    ok = status == schema.STATUS_OK
    bad_status = set(status[~np.isin(status, [schema.STATUS_OK, schema.STATUS_SKIPPED])])
    if bad_status:
        rep.problems.append(f"{name}: unknown status values {sorted(bad_status)}")
    labels = set(s.decode("utf-8") for s in g[schema.LABEL][()])
    if labels - set(schema.LABELS):
        rep.problems.append(f"{name}: unknown labels {sorted(labels - set(schema.LABELS))}")
    for col in (schema.IMAGE_EMB, schema.CAPTION_EMB, schema.MISALIGNMENT):
        ds = g[col]
        for s in range(0, ds.shape[0], chunk_rows):
            block = ds[s:s + chunk_rows].astype(np.float32)
            okb = ok[s:s + chunk_rows]
            if not np.all(np.isfinite(block)):
                rows = np.nonzero(~np.all(np.isfinite(block), axis=1))[0] + s
                rep.problems.append(f"{name}: {col} has non-finite values in rows {rows[:5].tolist()}")
                continue
            if col != schema.MISALIGNMENT:
                norms = np.linalg.norm(block, axis=1)
                off = okb & (np.abs(norms - 1) > NORM_TOLERANCE)
                if off.any():
                    rows = np.nonzero(off)[0] + s
                    rep.problems.append(f"{name}: {col} not unit-norm in rows {rows[:5].tolist()} "
                                        f"(norm {norms[off][0]:.3f})")
            if (~okb).any() and np.any(block[~okb] != 0):
                rep.problems.append(f"{name}: skipped rows carry non-zero {col}")
    grounded = og[schema.GROUNDED][()]
    for col, mask in ((schema.CROP_EMB, grounded), (schema.NOUN_EMB, np.ones_like(grounded))):
        ds = og[col]
        for s in range(0, ds.shape[0], chunk_rows):
            block = ds[s:s + chunk_rows].astype(np.float32)
            if not np.all(np.isfinite(block)):
                rep.problems.append(f"{name}: objects/{col} has non-finite values")
                continue
            norms = np.linalg.norm(block, axis=1)
            mk = mask[s:s + chunk_rows].astype(bool)
            if np.any(mk & (np.abs(norms - 1) > NORM_TOLERANCE)):
                rep.problems.append(f"{name}: objects/{col} not unit-norm")
    boxes = og[schema.BOX][()]
    if boxes.size and (not np.all(np.isfinite(boxes)) or
                       np.any(grounded & ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])))):
        rep.problems.append(f"{name}: objects have empty or non-finite boxes")


def _check_indexes(root: Path, rep: Report, check_sums: bool) -> None:
    from item.store.index import list_indexes, orphan_command, orphan_files, verify_index_files

    try:
        infos = list_indexes(root)
    except ItemError as exc:
        rep.problems.append(f"indexes: {exc}")
        return
    for info in infos:
        if info.get("problem", "").startswith("unreadable"):
            rep.problems.append(f"index {info['file']}: {info['problem']}")
            continue
        if not info.get("fresh"):
            rep.warnings.append(f"index {info['file']}: {info['problem']}")
        problem = verify_index_files(root, info, check_sums=check_sums, open_index=True)
        if problem:
            rebuild = f"item store index {root} --on {info.get('on')} --kind {info.get('kind')}"
            rep.problems.append(f"index {info['file']}: {problem}"
                                + ("" if "item store index" in problem else f"; rebuild it with `{rebuild}`"))
    for orphan in orphan_files(root):
        rep.warnings.append(f"index/{orphan.name}: left by an index build that did not finish (no sidecar names "
                            f"it); the index in use, if any, is the previous one; run `{orphan_command(root, orphan)}` "
                            "to finish the job (it removes the file)")
