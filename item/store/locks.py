"""The store's locks: flock(2) on small files in the store folder, released by the kernel when
their process dies.

- ``writer.lock``: every writer (and ``store index``) holds it *shared* for its whole run;
  ``--overwrite`` needs it *exclusive*, so it never wipes a store someone is writing or indexing.
- ``writers/ID.lock``: each writer holds its own, exclusively, for its whole run, with a JSON note
  naming its holder (and whether it is an overwrite). A shard file of writer ID that is not committed yet is only ever removed by
  someone who can take this lock, i.e. after that writer died.
- ``commit.lock``: exclusive and short: held for a commit's rename and manifest replace (and for
  creating the manifest and cleaning up after dead writers), never while rows are encoded.
- ``index.lock``: one ``store index`` at a time.
- A long-lived reader (``item serve``) may hold ``writer.lock`` shared too (:class:`ReaderLock`), so an
  ``--overwrite`` is refused while it answers from the store; it opens the file read-only and creates
  nothing.

A flock protects an open file, not a name: after ``rm writer.lock`` the next process locks a new
file while running writers still hold the old one. So nobody trusts writer.lock alone: a taker
checks that the file it locked is still the one at the path (same device and inode), an
``--overwrite`` also refuses while any ``writers/ID.lock`` is held by a live process, a plain writer
refuses while a live writer's note says it is overwriting, and every commit re-checks (under
``commit.lock``) that this writer's two lock files are still the ones at their paths
(:meth:`WriterLock.verify`): a run whose lock was removed or replaced stops with an error instead of
reporting rows that an overwrite may have removed.

Lock files are opened without following symlinks (a planted ``writer.lock -> victim`` is refused,
never truncated). A flock belongs to an open file description, which a forked child shares: a
child that outlived its parent would keep the lock. Forked helpers (the decoding workers) call
:func:`release_inherited_locks` first thing; it closes their copies, which the parent's locks
survive.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from item.errors import LockedError, StoreError
from item.store import schema
from item.store.files import file_mode, open_existing_or_new

_HELD: set[int] = set()  # lock file descriptors this process holds (closed in forked children)


def release_inherited_locks() -> None:
    """In a forked child: close every lock descriptor inherited from the parent (its locks stay held)."""
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


def _now() -> str:
    from item.store.manifest import now

    return now()


def _open(path: Path) -> int:
    try:
        return open_existing_or_new(path)
    except OSError as exc:
        raise StoreError(f"{path}: cannot open the lock file ({exc.strerror or exc})") from None


def _flock(fd: int, how: int) -> bool:
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise


def _note(command: str, exclusive: bool = False) -> bytes:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": _now(),
                       "command": command, "exclusive": bool(exclusive)}).encode("utf-8")


def _is_file_at(fd: int, path: Path) -> bool:
    """True when the open file ``fd`` is the file now at ``path`` (not removed, not replaced)."""
    try:
        at = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (at.st_dev, at.st_ino) == (mine.st_dev, mine.st_ino)


def describe_holder(note: dict) -> str:
    return (f"pid {note.get('pid', '?')} on {note.get('host', '?')} since {note.get('since', '?')}"
            + (f" ({note['command']})" if note.get("command") else ""))


def _read_note(fd: int) -> dict:
    try:
        note = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
        return note if isinstance(note, dict) else {}
    except (OSError, ValueError):
        return {}


def live_writers(root: Path) -> list[dict]:
    """Notes of the writers whose ``writers/ID.lock`` is held now (their processes are alive)."""
    folder = Path(root) / schema.WRITERS_DIR
    out = []
    for p in sorted(folder.glob("*" + schema.LOCK_SUFFIX)) if folder.is_dir() else []:
        if p.is_symlink():
            continue
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if not _flock(fd, fcntl.LOCK_SH):
                out.append(dict(_read_note(fd), writer=p.name[:-len(schema.LOCK_SUFFIX)]))
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    return out


def writer_alive(root: Path, writer_id: str) -> bool:
    """True when writer ``writer_id`` still holds its lock (a process that may still commit)."""
    return any(w["writer"] == writer_id for w in live_writers(root))


def reap_dead_writer_files(root: Path) -> None:
    """Remove the lock files of writers that are gone (under the commit lock)."""
    folder = Path(root) / schema.WRITERS_DIR
    found = list(folder.glob("*" + schema.LOCK_SUFFIX)) + list(folder.glob("*.new")) if folder.is_dir() else []
    for p in found:
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if _flock(fd, fcntl.LOCK_EX):
                p.unlink()
        except OSError:
            pass
        finally:
            os.close(fd)


class WriterLock:
    """What one writing run holds on store ``root``: ``writer.lock`` (shared, or exclusive for an
    overwrite) and its own ``writers/ID.lock``. ``id`` names the writer's shards."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / schema.LOCK_FILE
        self.id = secrets.token_hex(6)
        self.exclusive = False
        self.fd: int | None = None
        self._own: int | None = None

    def _take_writer_lock(self, exclusive: bool) -> int:
        """writer.lock, flocked, and still the file at its path (it may be replaced between open and flock)."""
        for _ in range(20):
            fd = _open(self.path)
            if not _flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH):
                os.close(fd)
                who = "; ".join(describe_holder(w) for w in live_writers(self.root)) or (
                    "another process (a writer, `item store index` or an `item serve` answering from it)"
                    if exclusive else "another process")
                what = ("--overwrite needs the store to itself, and another process is using it" if exclusive
                        else "another process is overwriting this store")
                raise LockedError(f"{self.root}: {what}: {who}; wait for it to finish or use another --store")
            if _is_file_at(fd, self.path):
                return fd
            os.close(fd)  # removed or replaced meanwhile: lock the file that is there now
        raise LockedError(f"{self.path}: keeps being replaced; is another program removing it?")

    def acquire(self, command: str = "", *, exclusive: bool = False) -> None:
        fd = self._take_writer_lock(exclusive)
        _HELD.add(fd)
        # writer.lock may have been removed by hand while writers ran: their own locks still say who is alive.
        alive = [w for w in live_writers(self.root) if exclusive or w.get("exclusive")]
        if alive:
            _HELD.discard(fd)
            os.close(fd)
            who = "; ".join(describe_holder(w) for w in alive)
            what = ("--overwrite needs the store to itself, and a writer is still running" if exclusive
                    else "another process is overwriting this store")
            raise LockedError(f"{self.root}: {what} ({who}; its writer.lock was removed or replaced); wait for it "
                              "to finish or use another --store")
        own = None
        try:
            folder = self.root / schema.WRITERS_DIR
            folder.mkdir(exist_ok=True)
            # Created under another name, locked, then renamed into place: a writer's lock file is never
            # seen unlocked, so nobody takes a live writer for a dead one.
            fresh = folder / (self.id + ".new")
            own = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, file_mode())
            _HELD.add(own)
            fcntl.flock(own, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.pwrite(own, _note(command, exclusive), 0)
            os.replace(fresh, folder / (self.id + schema.LOCK_SUFFIX))
        except OSError as exc:
            self.fd, self._own = fd, own
            self.release()
            raise StoreError(f"{self.root}: cannot register this writer ({exc.strerror or exc})") from None
        except BaseException:
            self.fd, self._own = fd, own
            self.release()
            raise
        self.fd, self._own, self.exclusive = fd, own, exclusive

    @property
    def held(self) -> bool:
        return self.fd is not None

    def verify(self) -> None:
        """Raise LockedError unless writer.lock and writers/ID.lock are still the files this writer locked.

        Called under ``commit.lock`` before every commit: a lock file removed or replaced by hand means
        another process may have taken the store (an --overwrite may have removed this run's rows), so
        this run must stop rather than commit or report rows it can no longer vouch for.
        """
        if self.fd is None:
            raise LockedError(f"{self.root}: this writer no longer holds its lock")
        own_path = self.root / schema.WRITERS_DIR / (self.id + schema.LOCK_SUFFIX)
        for fd, path in ((self.fd, self.path), (self._own, own_path)):
            if fd is not None and not _is_file_at(fd, path):
                raise LockedError(
                    f"{self.root}: {path.name} was removed or replaced while this run was writing, so another "
                    "process (an --overwrite) may have changed the store under it; stopping without committing "
                    "more. Check the store with `item store validate` and run featurize again to add what is "
                    "missing.")

    def release(self) -> None:
        if self._own is not None:
            try:
                (self.root / schema.WRITERS_DIR / (self.id + schema.LOCK_SUFFIX)).unlink()
            except OSError:
                pass
            _HELD.discard(self._own)
            os.close(self._own)
            self._own = None
        if self.fd is not None:
            _HELD.discard(self.fd)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None


@contextmanager
def commit_lock(root: Path, timeout: float = 600.0):
    """The short exclusive lock of a commit. Waits (polling) up to ``timeout`` seconds."""
    path = Path(root) / schema.COMMIT_LOCK
    fd = _open(path)
    _HELD.add(fd)
    try:
        deadline = time.monotonic() + timeout
        delay = 0.002
        while not _flock(fd, fcntl.LOCK_EX):
            if time.monotonic() > deadline:
                raise LockedError(f"{path}: held for more than {timeout:.0f} s by another writer; is a commit "
                                  "stuck on a hung file system?")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        yield
    finally:
        _HELD.discard(fd)
        os.close(fd)  # closing the only descriptor releases the flock


class IndexLock:
    """``store index``: ``writer.lock`` shared (so --overwrite waits) and ``index.lock`` exclusive."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._fds: list[int] = []

    def __enter__(self):
        for name, how, what in ((schema.LOCK_FILE, fcntl.LOCK_SH, "the store is being overwritten"),
                                (schema.INDEX_LOCK, fcntl.LOCK_EX, "another `item store index` is running")):
            fd = _open(self.root / name)
            if not _flock(fd, how):
                os.close(fd)
                self.__exit__()
                raise LockedError(f"{self.root}: {what}; wait for it to finish")
            _HELD.add(fd)
            self._fds.append(fd)
        return self

    def __exit__(self, *exc):
        for fd in self._fds:
            _HELD.discard(fd)
            os.close(fd)
        self._fds.clear()
        return False


def remove_if_unused(root: Path) -> bool:
    """Remove store folder ``root`` when it holds nothing but the lock files of a run that wrote nothing
    (a featurize that failed before its first row: a model that would not load, say) and no other writer
    holds it. True when removed. A folder with anything else in it is left as it is."""
    root = Path(root)
    lock = root / schema.LOCK_FILE
    writers = root / schema.WRITERS_DIR
    try:
        if {p.name for p in root.iterdir()} - {schema.LOCK_FILE, schema.WRITERS_DIR}:
            return False
        if writers.is_dir() and any(writers.iterdir()):
            return False
        fd = _open(lock) if lock.exists() else None
    except (OSError, StoreError):
        return False
    try:
        if fd is not None and (not _flock(fd, fcntl.LOCK_EX) or not _is_file_at(fd, lock)):
            return False  # another writer holds (or has replaced) it: the folder is in use
        if writers.is_dir():
            writers.rmdir()  # fails when a writer registered meanwhile
        if fd is not None:
            lock.unlink()
        root.rmdir()
        return True
    except OSError:
        return False
    finally:
        if fd is not None:
            os.close(fd)


class ReaderLock:
    """A long-lived reader's hold on store ``root`` (``item serve``): ``writer.lock`` shared, for as long
    as it answers from the store, so that an ``--overwrite`` (which needs it exclusively) is refused
    instead of replacing the store under it. Writers that add rows still run (they hold it shared as
    well); the reader notices their commits by the store's fingerprint.

    The file is opened read-only and never created: a reader writes nothing in the store. A store
    without ``writer.lock`` (copied without it) is read unlocked (``held`` is False). Raises
    LockedError while an overwrite holds the store.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / schema.LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> "ReaderLock":
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                return self
            except OSError as exc:
                raise StoreError(f"{self.path}: cannot open the lock file ({exc.strerror or exc})") from None
            if not _flock(fd, fcntl.LOCK_SH):
                os.close(fd)
                raise LockedError(f"{self.root}: another process is overwriting this store; wait for it to finish")
            if _is_file_at(fd, self.path):
                break
            os.close(fd)
        else:
            raise LockedError(f"{self.path}: keeps being replaced; is another program removing it?")
        if any(w.get("exclusive") for w in live_writers(self.root)):
            os.close(fd)
            raise LockedError(f"{self.root}: another process is overwriting this store; wait for it to finish")
        _HELD.add(fd)
        self.fd = fd
        return self

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        if self.fd is not None:
            _HELD.discard(self.fd)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
