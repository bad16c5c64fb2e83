"""Describe a store (``item store info``) and export its per-image metadata (CSV or Parquet)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np

from item.errors import InputError, StoreError
from item.store import schema
from item.store.reader import StoreReader

EXPORT_FORMATS = {".csv": "CSV (UTF-8, header row)", ".parquet": "Apache Parquet (needs pyarrow)"}

EXPORT_COLUMNS = ("row", schema.ID, schema.PATH, schema.LABEL, schema.GENERATOR, schema.SPLIT, schema.STATUS,
                  schema.REASON, schema.CAPTION, schema.CAPTION_SOURCE, schema.CAPTION_TRUNCATED, schema.NOUNS,
                  "n_objects", "n_grounded", schema.WIDTH, schema.HEIGHT, schema.FORMAT, schema.PERTURBATION)


def store_info(root) -> dict:
    """What the store holds, as a JSON-able dict (the keys of ``item store info --json``)."""
    from item.store.index import list_indexes

    with StoreReader(root) as r:
        m = r.manifest
        meta = r.metadata([schema.LABEL, schema.GENERATOR, schema.SPLIT, schema.STATUS])
        ok = meta[schema.STATUS] == schema.STATUS_OK
        groups = Counter(zip(meta[schema.GENERATOR][ok], meta[schema.LABEL][ok], meta[schema.SPLIT][ok]))
        size = sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())
        return {
            "store": str(Path(root).resolve()),
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
            "models": m["models"],
            "identity": {k: m["compat"].get(k) for k in schema.IDENTITY_KEYS},
            "random_weights": r.random_weights,
            "fingerprint": r.fingerprint,
            "groups": [{"generator": g, "label": lab, "split": s, "n": n}
                       for (g, lab, s), n in sorted(groups.items())],
            "indexes": [{k: i.get(k) for k in ("file", "kind", "on", "count", "fresh", "problem")}
                        for i in list_indexes(root)],
            "bytes_on_disk": size,
        }


def export_metadata(root, out) -> int:
    """Write one row per image row (and per alias path, status 'duplicate') to ``out``; returns rows written."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in EXPORT_FORMATS:
        raise InputError(f"cannot export to {out.name}: choose an extension among {', '.join(EXPORT_FORMATS)}")
    with StoreReader(root) as r:
        meta = r.metadata()
        objs = r.objects(columns=[schema.OBJ_IMAGE, schema.GROUNDED])
        n_obj = np.bincount(objs[schema.OBJ_IMAGE].astype(np.int64), minlength=r.n_images)
        n_gr = np.bincount(objs[schema.OBJ_IMAGE].astype(np.int64), weights=objs[schema.GROUNDED].astype(float),
                           minlength=r.n_images).astype(np.int64)
        records = []
        row_of_id = {}
        for i in range(r.n_images):
            rec = {"row": i, "n_objects": int(n_obj[i]), "n_grounded": int(n_gr[i])}
            for c in schema.METADATA_COLUMNS:
                if c in (schema.OBJECT_START, schema.OBJECT_COUNT):
                    continue
                v = meta[c][i]
                rec[c] = "; ".join(json.loads(v)) if c == schema.NOUNS else (v.item() if hasattr(v, "item") else v)
            records.append(rec)
            row_of_id[rec[schema.ID]] = i
        al = r.aliases()
        for j in range(len(al[schema.ALIAS_PATH])):
            base = dict(records[row_of_id[al[schema.ALIAS_ID][j]]])
            base.update({schema.PATH: al[schema.ALIAS_PATH][j], schema.LABEL: al[schema.ALIAS_LABEL][j],
                         schema.GENERATOR: al[schema.ALIAS_GENERATOR][j], schema.SPLIT: al[schema.ALIAS_SPLIT][j],
                         schema.STATUS: schema.STATUS_DUPLICATE})
            records.append(base)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name("." + out.name + ".tmp")
    if suffix == ".csv":
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=EXPORT_COLUMNS)
            w.writeheader()
            for rec in records:
                w.writerow({k: rec.get(k, "") for k in EXPORT_COLUMNS})
    else:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise StoreError("Parquet export needs pyarrow: pip install 'item-detect[parquet]' "
                             "(or export to .csv)") from None
        table = pa.table({k: [rec.get(k) for rec in records] for k in EXPORT_COLUMNS})
        pq.write_table(table, tmp)
    tmp.replace(out)
    return len(records)
