"""What every store file is stamped with and checked against: the store schema version (older ones read
through step-by-step migrations) and the UTC time it was written.

manifest.py and shards.py both need these; this module needs neither of them.
"""

from __future__ import annotations

from datetime import datetime, timezone

from item import __version__
from item.errors import SchemaError
from item.store import schema


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# Older schema versions are read by explicit, step-by-step migrations: MIGRATIONS[v] turns a
# version-v manifest into version v+1.
def migrate_compat(compat: dict, version: int) -> dict:
    """A store identity (manifest or shard ``compat``) written under schema ``version``, as the current
    schema reads it: the steps below applied to it in turn."""
    c = dict(compat)
    if version < 2:  # schema 2 records the identity keys: schema 1 never did
        c = {**{k: schema.UNRECORDED for k in schema.IDENTITY_KEYS if k != "caption_decoding"}, **c}
    if version < 3:
        # Schema 3 records how captions were decoded. Before it, ITEM decoded greedily, without a prompt
        # (item.featurize.models.blip.LEGACY_CAPTION_DECODING); where no captioner ran, nothing was decoded.
        c["caption_decoding"] = "greedy" if c.get("captioner", "") != schema.NO_MODEL else "-"
        # ... and the grounder's box selection rule, which changed for Grounding DINO: unknown before.
        c.setdefault("box_selection", schema.UNRECORDED)
        # ... and whether the fakes were re-encoded first (item reproduce --align-format): never, before it.
        c.setdefault("alignment", "")
    return c


def _v1_to_v2(manifest: dict) -> dict:
    """Schema 2 records a store's identity keys: a schema-1 store never recorded them, so they read as
    'unrecorded' (a writer or head with a known identity is then refused, naming them). Its shards lack the
    caption_encoded column; readers take the caption for it (schema.COLUMN_FALLBACK)."""
    m = dict(manifest)
    m["compat"] = {**{k: schema.UNRECORDED for k in schema.IDENTITY_KEYS if k != "caption_decoding"},
                   **manifest.get("compat", {})}
    m["schema_version"] = 2
    return m


def _v2_to_v3(manifest: dict) -> dict:
    """Schema 3 records two identity keys. ``caption_decoding``: older stores captioned greedily, so they read
    as 'greedy', or '-' where no captioner ran. ``box_selection``: Grounding DINO's rule changed (queries are
    kept by every prompt token, as the reference does, no longer by the nouns' alone), so a schema-2 store's
    rule reads as 'unrecorded' and new rows are refused, naming the key. It also records file cues per image
    (file_size, jpeg_quality, exif: read as UNKNOWN_CUE in older shards, schema.COLUMN_DEFAULT) and the compat
    key ``alignment``: a schema-2 store was never format-aligned ('')."""
    m = dict(manifest)
    m["compat"] = migrate_compat(manifest.get("compat", {}), 2)
    m["schema_version"] = 3
    return m


MIGRATIONS: dict = {1: _v1_to_v2, 2: _v2_to_v3}


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
