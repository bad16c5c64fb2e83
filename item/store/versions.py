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
