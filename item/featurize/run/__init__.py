"""The featurize run: config, planning (ids, dedup, resume), decode workers and loader, the per-batch
model steps, the local run loop (``local``), the Ray Data engine (``ray_engine``), and ``engine``, the one
place that picks between them (``featurize_store``). ``lookup`` embeds whole images with CLIP alone.

Nothing is re-exported here: import from the module that defines a name (or from ``item.featurize``).
"""
