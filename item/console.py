"""What every ``item`` sub-command shares: one-line errors, progress bars, output helpers.

Stage cli modules import these from here, not from ``item.cli`` (which attaches those modules to the
root command), so importing any stage's cli module first works. Only cli modules use this module.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from contextlib import contextmanager

import typer

from item.outputs import RANDOM_WEIGHTS_LINE  # noqa: F401  (one definition; cli modules import it from here)


_CONTROL = None


def safe_text(text, keep_newlines: bool = True) -> str:
    """``text`` with every control character (C0, DEL, C1; newlines and tabs kept when asked) written as an
    escape (``\\x1b``), so a file name cannot retitle, recolour or clear the terminal it is printed on."""
    global _CONTROL
    import re

    if _CONTROL is None:
        _CONTROL = (re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]"), re.compile(r"[\x00-\x1f\x7f-\x9f]"))
    pattern = _CONTROL[0] if keep_newlines else _CONTROL[1]
    return pattern.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


def human_bytes(n) -> str:
    """A size for people: 4978 -> '4.9 KiB', 3 * 2**30 -> '3.0 GiB' (never 'about 0 MiB')."""
    n = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _stderr():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def info(message: str) -> None:
    """A progress or status message: stderr, so stdout stays for results."""
    _stderr().print(safe_text(message), markup=False)


def warn(message: str) -> None:
    _stderr().print(f"warning: {safe_text(message)}", markup=False, style="yellow")


def _echo(text: str) -> None:
    """typer.echo (which flushes), a failure to write stdout raised as OutputError (one line in ``guarded``)."""
    try:
        typer.echo(text)
    except OSError as exc:
        raise _output_error(exc) from None


def _output_error(exc: OSError):
    from item.errors import OutputError

    return OutputError(f"cannot write to standard output: {exc.strerror or exc}")


def _silence_stdout() -> None:
    """After stdout failed: point it at /dev/null, so the interpreter's flush at exit does not fail again
    (which printed 'Exception ignored ... OSError' and exited 120)."""
    try:
        fd = sys.stdout.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
    except (AttributeError, OSError, ValueError):
        pass
    try:
        sys.stdout = open(os.devnull, "w")
    except OSError:
        pass


def emit(text: str = "") -> None:
    """A result line on stdout (control characters escaped)."""
    _echo(safe_text(text))


def emit_json(obj) -> None:
    _echo(json.dumps(obj, indent=2, default=_json_default, ensure_ascii=False))


@contextmanager
def stdout_for_json(active: bool = True):
    """While a ``--json`` command works, whatever else writes to stdout goes to stderr instead (libraries'
    prints, and output at the file-descriptor level: Ray's driver relays its workers' and raylet's messages
    there), so that stdout carries the one JSON document, written after the block. Inactive: nothing changes."""
    if not active:
        yield
        return
    saved_py = sys.stdout
    saved_fd = None
    try:
        sys.stdout.flush()
        if sys.stdout.fileno() == 1:  # the process's real stdout (not a test runner's buffer)
            saved_fd = os.dup(1)
            os.dup2(2, 1)
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        saved_fd = None
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        sys.stdout = saved_py
        if saved_fd is not None:
            os.dup2(saved_fd, 1)
            os.close(saved_fd)


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def guarded(fn):
    """Turn the project's errors into a one-line message and exit status 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from item.errors import ItemError, OutputError

        try:
            try:
                out = fn(*args, **kwargs)
                sys.stdout.flush()  # a result still buffered fails here, not at the interpreter's exit
                return out
            except OSError as exc:  # not turned into an ItemError by the library: a write to stdout (rich,
                try:                # a library's print) or a bug; either way one line, not a traceback
                    sys.stdout.flush()
                except OSError as out_exc:
                    raise _output_error(out_exc) from None
                where = f": {os.fsdecode(exc.filename)}" if exc.filename is not None else ""
                raise ItemError(f"{exc.strerror or exc}{where}") from None
        except ItemError as exc:
            if isinstance(exc, OutputError):
                _silence_stdout()
            _stderr().print(f"error: {safe_text(exc, keep_newlines=False)}", markup=False, style="red")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            _stderr().print("interrupted", markup=False)
            raise typer.Exit(130) from None

    return wrapper


@contextmanager
def progress_bar(total: int | None, description: str, unit: str = "img"):
    """A rich progress bar on stderr with items per second; yields ``advance(n, total=None)`` (``total``
    sets the bar's length once it is known)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    class Rate(TextColumn):
        def __init__(self):
            super().__init__("")

        def render(self, task):
            from rich.text import Text

            speed = task.finished_speed or task.speed
            return Text(f"{speed:.1f} {unit}/s" if speed else f"- {unit}/s")

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(), TimeElapsedColumn(),
               TimeRemainingColumn()]
    with Progress(*columns, console=_stderr(), transient=False, disable=not sys.stderr.isatty()) as prog:
        task = prog.add_task(description, total=total)

        def advance(n: int = 1, total: int | None = None) -> None:
            if total is not None:
                prog.update(task, total=total)
            prog.advance(task, n)

        yield advance


def table(rows: list[dict], columns: list[str], title: str | None = None, stderr: bool = False) -> None:
    """Print rows as an aligned text table on stdout (on stderr when it is a message, not a result)."""
    out = info if stderr else emit

    def fmt(v):
        if isinstance(v, float):
            return "nan" if v != v else f"{v:.4f}"
        return safe_text(v, keep_newlines=False)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    if title:
        out(title)
    out("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in cells:
        out("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def heads_random(heads) -> bool:
    """Whether any head folder's config records random weights (read from head.json; nothing loads). An
    unreadable head counts as not random here: loading it later says what is wrong."""
    from pathlib import Path

    from item.names import HEAD_CONFIG_FILE

    for h in heads:
        try:
            if json.loads((Path(h) / HEAD_CONFIG_FILE).read_text()).get("random_weights"):
                return True
        except (OSError, ValueError):
            continue
    return False
