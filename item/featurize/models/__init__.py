"""The featurize stage's models: one module per model family, and what they share.

- ``hub``: hub ids and revisions, cache folders, offline mode, devices, autocast, pretrained or random
  weights: every family imports it, it imports no family;
- ``clip`` (open_clip encoder), ``blip`` (captioner);
- ``grounding`` (what every grounder family shares: Box, GroundImage, PreparedGrounder, box helpers),
  ``grounding_dino``, ``owlv2`` (one module per grounder family), ``grounders`` (the choice of family);
- ``presets`` (``ModelSpec``, ``PRESETS``, ``resolve_models``), ``loading`` (``load_models``, ``Models``,
  the identity loaded models give a store), ``tiny`` (the seeded tiny random builders).

Nothing is re-exported here: import from the module that defines a name (or from ``item.featurize``).
"""
