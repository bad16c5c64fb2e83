"""Describe a store (``item store info``) and export its per-image metadata (CSV or Parquet)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np

from item.errors import InputError, StoreError
from item.manifests import GENERATOR_RULE, UNKNOWN_GENERATOR
from item.spreadsheet import safe_row
from item.store import schema
from item.store.reader import StoreReader

EXPORT_FORMATS = {".csv": "CSV (UTF-8, header row)", ".parquet": "Apache Parquet (needs pyarrow)"}

EXPORT_COLUMNS = ("row", schema.ID, schema.PATH, schema.LABEL, schema.GENERATOR, schema.SPLIT, schema.STATUS,
                  schema.REASON, schema.CAPTION, schema.CAPTION_SOURCE, schema.CAPTION_TRUNCATED, schema.NOUNS,
                  "n_objects", "n_grounded", schema.WIDTH, schema.HEIGHT, schema.FORMAT, schema.PERTURBATION)


def split_models(models: dict) -> tuple[dict, dict]:
    """The manifest's ``models`` record split into models (entries naming weights: CLIP, captioner,
    grounder) and extractors (rule-based steps with a version, e.g. nouns). Flags such as
    ``random_weights`` and the ``spec`` the models are rebuilt from are neither (store info shows
    random weights on their own line)."""
    found, extractors = {}, {}
    for role, spec in (models or {}).items():
        if not isinstance(spec, dict):
            continue
        if any(k in spec for k in ("model", "id", "name", "path")):
            found[role] = spec
        elif "extractor" in spec or "version" in spec:
            extractors[role] = spec
    return found, extractors


def caption_counts(manifest: dict) -> dict:
    """Captions without any noun and captions not in English, summed over the runs the manifest records
    (featurize's run summaries; runs from before these counts, or killed before their summary was written,
    are not counted: ``runs_counted`` of ``runs``)."""
    runs = [r for r in manifest.get("runs", []) if isinstance(r, dict)]
    counted = [r for r in runs if "n_captions_without_nouns" in r]
    return {"without_nouns": sum(int(r["n_captions_without_nouns"]) for r in counted),
            "not_english": sum(int(r.get("n_captions_not_english", 0)) for r in counted),
            "runs_counted": len(counted), "runs": len(runs)}


def store_info(root) -> dict:
    """What the store holds, as a JSON-able dict (the keys of ``item store info --json``)."""
    from item.store.index import list_indexes
    from item.store.manifest import EMPTY_DEBRIS, is_debris
    from item.store.overlay import overlay_version

    if is_debris(root):
        return {"store": str(Path(root).resolve()), "state": EMPTY_DEBRIS, "n_images": 0, "n_ok": 0, "n_skipped": 0,
                "n_objects": 0, "n_grounded": 0, "n_aliases": 0, "n_shards": 0, "indexes": [],
                "random_weights": False}
    with StoreReader(root) as r:
        m = r.manifest
        meta = r.metadata([schema.LABEL, schema.GENERATOR, schema.SPLIT, schema.STATUS])
        ok = meta[schema.STATUS] == schema.STATUS_OK
        groups = Counter(zip(meta[schema.GENERATOR][ok], meta[schema.LABEL][ok], meta[schema.SPLIT][ok]))
        size = sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())
        return {
            "store": str(Path(root).resolve()),
            "state": "ok",
            "schema_version": m["schema_version"],
            "package_version": m["package_version"],
            "created": m["created"],
            "updated": m["updated"],
            "n_images": r.n_images,
            "n_ok": int(m["counts"]["n_ok"]),
            "n_objects": r.n_objects,
            "n_grounded": int(m["counts"]["n_grounded"]),
            "n_skipped": r.n_skipped,
            "skipped_by_reason": dict(m["counts"]["skipped_by_reason"]),
            "n_aliases": int(m["counts"]["n_aliases"]),
            "n_shards": len(r.shards),
            "embed_dim": r.embed_dim,
            "misalignment_dim": r.misalignment_dim,
            "recipe": m["recipe"],
            "models": split_models(m["models"])[0],
            "extractors": split_models(m["models"])[1],
            "identity": {k: m["compat"].get(k) for k in schema.IDENTITY_KEYS},
            # featurize --objects-from: the store whose captions, nouns and boxes these rows reuse; None otherwise
            "objects_from": {k: v for k, v in m["models"].get("objects_from", {}).items()
                             if k in ("store", "fingerprint", "clip_model", "clip_pretrained", "captioner", "grounder")}
            if isinstance(m["models"].get("objects_from"), dict) else None,
            "captions": caption_counts(m),
            "random_weights": r.random_weights,
            "overlay": {**overlay_version(r.overlay), "updated": r.overlay.get("updated")},
            "fingerprint": r.fingerprint,
            "generator_rule": GENERATOR_RULE,
            "n_unknown_generator": int((meta[schema.GENERATOR][ok] == UNKNOWN_GENERATOR).sum()),
            "groups": [{"generator": g, "label": lab, "split": s, "n": n}
                       for (g, lab, s), n in sorted(groups.items())],
            "indexes": [{k: i.get(k) for k in ("file", "kind", "on", "count", "fresh", "problem")}
                        for i in list_indexes(root)],
            "bytes_on_disk": size,
        }


def export_metadata(root, out) -> int:
    """Write one row per image row (and per alias path, status 'duplicate') to ``out``; returns rows written.

    Reads and writes shard by shard (memory bounded by one shard's metadata plus a map from image id
    to row for the aliases), into a temporary file beside ``out`` that replaces it when complete. In a
    CSV, a text cell starting with a formula character (``=``, ``+``, ``-``, ``@``, tab, CR, ...) gets a
    leading apostrophe so a spreadsheet shows it as text (:mod:`item.spreadsheet`); Parquet keeps the
    raw values.
    """
    from item.store import files

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in EXPORT_FORMATS:
        raise InputError(f"cannot export to {out.name}: choose an extension among {', '.join(EXPORT_FORMATS)}")
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise StoreError("Parquet export needs pyarrow: pip install 'item-detect[parquet]' "
                             "(or export to .csv)") from None
    with StoreReader(root) as r:
        al = r.aliases()
        wanted = set(al[schema.ALIAS_ID])

        def blocks():
            keep = {}  # image id -> its exported record, for the alias rows (aliased images only)
            for rows, meta in r.iter_metadata():
                objs = r.objects(rows, columns=[schema.OBJ_IMAGE, schema.GROUNDED])
                local = objs[schema.OBJ_IMAGE].astype(np.int64) - (rows[0] if rows.size else 0)
                n_obj = np.bincount(local, minlength=rows.size)
                n_gr = np.bincount(local, weights=objs[schema.GROUNDED].astype(float), minlength=rows.size)
                block = []
                for i, row in enumerate(rows):
                    rec = {"row": int(row), "n_objects": int(n_obj[i]), "n_grounded": int(n_gr[i])}
                    for c in schema.METADATA_COLUMNS:
                        if c in (schema.OBJECT_START, schema.OBJECT_COUNT):
                            continue
                        v = meta[c][i]
                        rec[c] = "; ".join(json.loads(v)) if c == schema.NOUNS else (v.item() if hasattr(v, "item") else v)
                    block.append(rec)
                    if rec[schema.ID] in wanted:
                        keep[rec[schema.ID]] = rec
                yield block
            block = []
            for j in range(len(al[schema.ALIAS_PATH])):
                base = dict(keep[al[schema.ALIAS_ID][j]])
                base.update({schema.PATH: al[schema.ALIAS_PATH][j], schema.LABEL: al[schema.ALIAS_LABEL][j],
                             schema.GENERATOR: al[schema.ALIAS_GENERATOR][j], schema.SPLIT: al[schema.ALIAS_SPLIT][j],
                             schema.STATUS: schema.STATUS_DUPLICATE})
                base.update(r.overlay["rows"].get(al[schema.ALIAS_ID][j], {}))  # annotated: same content, same truth
                block.append(base)
            yield block

        n = 0

        def write_csv(fh):
            nonlocal n
            import io

            text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
            w = csv.DictWriter(text, fieldnames=EXPORT_COLUMNS)
            w.writeheader()
            for block in blocks():
                for rec in block:  # text a spreadsheet would run as a formula is written as text
                    w.writerow(safe_row({k: rec.get(k, "") for k in EXPORT_COLUMNS}))
                n += len(block)
            text.flush()
            text.detach()

        def write_parquet(fh):
            nonlocal n
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq_writer = None
            for block in blocks():
                if not block:
                    continue
                table = pa.table({k: [rec.get(k) for rec in block] for k in EXPORT_COLUMNS})
                if pq_writer is None:
                    pq_writer = pq.ParquetWriter(fh, table.schema)
                pq_writer.write_table(table.cast(pq_writer.schema))
                n += len(block)
            if pq_writer is None:
                table = pa.table({k: [] for k in EXPORT_COLUMNS})
                pq.write_table(table, fh)
            else:
                pq_writer.close()

        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            files.write_output(out, write_csv if suffix == ".csv" else write_parquet)
        except OSError as exc:
            raise StoreError(f"{out}: cannot write the export ({exc.strerror or exc}); nothing was written") from None
    return n
