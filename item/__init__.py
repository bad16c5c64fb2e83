"""ITEM: AI-generated image detection by image-text misalignment in CLIP space.

The Python API (``item.open_store``, ``item.train_head``, ``item.load_head``, ``item.evaluate``,
``item.predict``) lives in :mod:`item.api` and is loaded on first use, so ``import item`` and
``item --help`` import no heavy library.
"""

__version__ = "0.1.0"

_API = ("open_store", "train_head", "load_head", "evaluate", "predict", "Store", "Head")
__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        from item import api

        return getattr(api, name)
    raise AttributeError(f"module 'item' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
