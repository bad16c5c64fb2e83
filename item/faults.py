"""Fault injection for crash and failure tests: one function, :func:`fault`, called at named points.

Set ``ITEM_FAULT`` to one or more comma-separated specs ``POINT:COUNT[:ACTION]``; when the process
reaches ``POINT`` for the COUNT-th time (counting from 1, per process) the ACTION happens:

- ``kill`` (the default): ``SIGKILL`` to this process, which is what a power cut or the OOM killer does
  (no ``finally``, no ``atexit``, no flush);
- ``sleep=SECONDS``: sleep, once (tests use it to hold the writer lock for a while);
- ``raise=ENOSPC`` (or any ``errno`` name, e.g. ``EIO``): raise ``OSError`` there and at every later
  arrival, as a full disk stays full.

Points (where they are checked):

- ``batch``: featurize, after a batch went through the models, before its rows go to the writer;
- ``shard-written``: a shard's ``.partial`` file is complete and fsynced, before its rename;
- ``shard-renamed``: the shard is renamed into place, before the manifest lists it;
- ``manifest-tmp``: the manifest's temporary file is written and fsynced, before ``os.replace``;
- ``overlay-tmp``: the metadata overlay's temporary file is written and fsynced, before ``os.replace``
  (``store split`` / ``store annotate``);
- ``index-written``: an index's ``.faiss`` and ``.rows.npy`` are in place, before its JSON sidecar;
- ``overwrite-moved``: ``--overwrite`` moved the old manifest aside, before the old shards and index;
- ``head-weights-written``: a head's ``head.safetensors`` is in place, before its ``head.json``.

Example: ``ITEM_FAULT=shard-renamed:2 item featurize ...`` dies right after renaming its second shard.
Unset (the normal case) it costs one dictionary lookup per call.
"""

from __future__ import annotations

import errno
import os
import signal
import time

POINTS = ("batch", "shard-written", "shard-renamed", "manifest-tmp", "overlay-tmp", "index-written",
          "overwrite-moved", "head-weights-written")

_hits: dict[str, int] = {}


def fault(point: str) -> None:
    """Act as ``ITEM_FAULT`` asks when ``point`` is reached for the configured time; else nothing."""
    spec = os.environ.get("ITEM_FAULT")
    if not spec:
        return
    n = _hits[point] = _hits.get(point, 0) + 1
    for part in spec.split(","):
        name, _, rest = part.strip().partition(":")
        if name != point:
            continue
        count, _, action = rest.partition(":")
        count = int(count or 1)
        if action.startswith("raise="):
            if n >= count:
                code = getattr(errno, action[len("raise="):])
                raise OSError(code, os.strerror(code) + f" (ITEM_FAULT at {point})")
        elif n == count:
            if action.startswith("sleep="):
                time.sleep(float(action[len("sleep="):]))
            else:
                os.kill(os.getpid(), signal.SIGKILL)
