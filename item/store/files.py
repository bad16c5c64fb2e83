"""Creating files in a store folder that others may share: no symlink is followed, temporary names
are random and created exclusively, and every file gets the ordinary mode a new file would get
(``0666`` less the umask, e.g. ``0644``), so a store can be shared read-only with a group."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from item.faults import fault


def umask() -> int:
    """The process's umask, read without changing it (Linux /proc), else by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode() -> int:
    """Mode of a new store file: what ``open(..., 'w')`` would give (``0666 & ~umask``)."""
    return 0o666 & ~umask()


def open_new(path: Path, mode: int | None = None) -> int:
    """Create ``path`` for writing: fails if anything (a file, a symlink) is there already."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                   file_mode() if mode is None else mode)


def open_existing_or_new(path: Path) -> int:
    """Open (creating if absent) a regular file read-write without following a symlink at ``path``."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, file_mode())
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: path is a symlink
            raise OSError(exc.errno, f"{path} is a symbolic link; refusing to follow it") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(21, f"{path} is not a regular file")
    return fd


def temp_name(path: Path) -> Path:
    """A random, hidden name beside ``path`` (``.NAME.RANDOM.tmp``)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")


def write_new(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Write ``data`` to a file that must not exist yet; removes it again when writing fails."""
    fd = open_new(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            view = memoryview(data)
            while view:
                view = view[fh.write(view):]
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
    except BaseException:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: Path, data: bytes, *, fault_point: str | None = None) -> None:
    """Write to a random temporary name in the same folder, fsync, then os.replace: readers see old or new."""
    path = Path(path)
    tmp = temp_name(path)
    write_new(tmp, data)
    try:
        if fault_point:
            fault(fault_point)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def write_with(path: Path, writer) -> None:
    """Create ``path`` atomically from ``writer(binary file object)`` (a random temporary name, then replace)."""
    path = Path(path)
    tmp = temp_name(path)
    fd = open_new(tmp)
    try:
        with os.fdopen(fd, "wb") as fh:
            writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def write_output(path: Path, writer) -> None:
    """Write a file the user named (an export, a report) from ``writer(binary file object)``: atomically as
    :func:`write_with` does, except that a device, FIFO or socket at ``path`` (``/dev/stdout``, ``/dev/null``,
    a named pipe) is written in place, and a symlink's target is replaced, not the link. Replacing them put
    a regular file where the device (or the link) was: ``--out /dev/stdout`` as root replaced /dev/stdout."""
    path = Path(path)
    try:
        st = os.stat(path)  # follows symlinks
    except (FileNotFoundError, NotADirectoryError):
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
        with open(path, "wb") as fh:
            writer(fh)
            fh.flush()
        return
    write_with(Path(os.path.realpath(path)) if path.is_symlink() else path, writer)


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
