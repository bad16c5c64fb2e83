"""Helper processes of a featurize run (the DataLoader's decoding workers) are part of the run:
they hold none of its locks and die with it.

A forked worker starts with copies of the parent's descriptors, the store's flock descriptors
included; a flock lives as long as any copy of its descriptor, so a worker orphaned by a SIGKILL
of its parent would keep the store locked. :func:`detach_from_parent_run` closes those copies and
asks the kernel to SIGKILL the worker when its parent dies (``PR_SET_PDEATHSIG``, Linux); where
that is not available, a daemon thread polls the parent's pid and exits the worker.
"""

from __future__ import annotations

import os
import signal
import threading
import time

PR_SET_PDEATHSIG = 1


def _parent_death_signal() -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int, every: float = 0.5) -> None:
    def watch():
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="item-parent-watchdog", daemon=True).start()


def detach_from_parent_run(parent: int) -> None:
    """Call in a forked helper; ``parent``: the run's pid, taken before the fork."""
    from item.store.locks import release_inherited_locks

    release_inherited_locks()
    if not _parent_death_signal():
        _watch_parent(parent)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
