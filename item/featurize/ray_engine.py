"""``--engine ray``: the featurize run as a Ray Data job (see featurize_store_ray)."""

from __future__ import annotations

from item.errors import InputError

RAY_MISSING = 'the ray engine needs Ray Data: pip install -e ".[ray]"'


def import_ray():
    """The ``ray`` module, or InputError with the one line that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError(RAY_MISSING) from None
    return ray


def featurize_store_ray(rows, root, *, models, config, progress=None, overwrite=False, command="", lock=None):
    import_ray()
    raise InputError("--engine ray is not built yet in this commit")
