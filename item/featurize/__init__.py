"""The featurize stage: image files -> captions -> nouns -> grounded crops -> CLIP embeddings -> store.

Its front door (everything a caller needs; the modules behind it are the stage's insides):

- ``featurize_store(sources, store, *, models="default", config=FeaturizeConfig(), progress=None)
  -> RunSummary``: featurize folders / manifests into a store, resuming where a run stopped;
- ``featurize_images(images_or_paths, *, models, captions=None) -> list[ImageRecord]``: featurize
  files or PIL images in memory (prediction, a server);
- ``ModelSpec`` (``from_store``, ``from_head``), ``resolve_models`` (presets), ``load_models``
  (load once, pass the loaded ``Models`` to either call), ``compat_for`` (the identity loaded models
  give a store's rows), ``FeaturizeConfig``, ``RunSummary``, ``backbone_of`` (the registered backbone
  name of a CLIP model + tag, for what a head records).

Importing this package is cheap: the names resolve on first use (torch and the models load inside
the functions that need them).
"""

from __future__ import annotations

_EXPORTS = {
    "featurize_store": "item.featurize.run.engine",
    "featurize_images": "item.featurize.run.local",
    "RunSummary": "item.featurize.run.local",
    "FeaturizeConfig": "item.featurize.run.config",
    "ENGINES": "item.featurize.run.config",
    "ModelSpec": "item.featurize.models.presets",
    "PRESETS": "item.featurize.models.presets",
    "resolve_models": "item.featurize.models.presets",
    "Models": "item.featurize.models.loading",
    "load_models": "item.featurize.models.loading",
    "compat_for": "item.featurize.models.loading",
    "full_precision": "item.featurize.models.hub",
    "backbone_of": "item.featurize.models.backbones",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'item.featurize' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
