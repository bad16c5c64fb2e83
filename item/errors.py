"""The project's exceptions. Library code raises these; only CLI modules print or exit."""


class ItemError(Exception):
    """Base class of every error ITEM raises on purpose (bad input, bad store, missing model)."""


class StoreError(ItemError):
    """The store on disk is missing, malformed, locked or incompatible."""


class SchemaError(StoreError):
    """A file was written by a newer (or unknown) schema than this version reads."""


class IncompatibleError(StoreError):
    """Rows or heads from a different model / embedding size / preprocessing."""


class LockedError(StoreError):
    """Another process holds the store's writer lock."""


class InputError(ItemError):
    """A source, manifest or flag value cannot be used."""


class ModelLoadError(ItemError):
    """Pretrained weights could not be found or loaded."""


class HeadError(ItemError):
    """A head file is missing, malformed or does not fit the store."""


class OutputError(ItemError):
    """Standard output cannot be written (a full device, a closed pipe): the result could not be printed."""
