"""The on-disk embedding store: HDF5 shards, a JSON manifest, FAISS indexes. Depends on numpy, h5py, faiss."""

from item.store.index import INDEX_KINDS, INDEX_ON, StoreIndex, build_index, list_indexes
from item.store.reader import StoreReader
from item.store.records import openable_path
from item.store.schema import SCHEMA_VERSION
from item.store.summary import export_metadata, store_info
from item.store.validate import validate
from item.store.writer import (AliasRecord, ImageRecord, ObjectRecord, StagedShard, StoreWriter, WriterLock,
                               commit_shards, stage_shard)

__all__ = [
    "INDEX_KINDS", "INDEX_ON", "SCHEMA_VERSION", "AliasRecord", "ImageRecord", "ObjectRecord", "StagedShard",
    "StoreIndex", "StoreReader", "StoreWriter", "WriterLock", "build_index", "commit_shards", "export_metadata",
    "list_indexes", "openable_path", "stage_shard", "store_info", "validate",
]
