"""The ``item`` command. Each stage defines its sub-commands in its own ``cli.py``; this module
holds what they share (error handling, progress bars, output helpers) and attaches them.

Only cli modules import typer/rich, print or exit. Heavy libraries are imported inside commands so
that ``item --help`` starts instantly.
"""

from __future__ import annotations

import functools
import json
import sys
from contextlib import contextmanager

import typer
from typer.core import TyperGroup, _click

from item import __version__

#: The first line of every result computed with random weights (text); JSON carries ``random_weights``.
RANDOM_WEIGHTS_LINE = ("RANDOM WEIGHTS: features come from randomly initialised models; these numbers are not "
                       "detection accuracy")


class _Group(TyperGroup):
    """The root command: a usage error (unknown option, missing argument, bad value) is one line on
    stderr, ``error: ... (see `item CMD --help`)``, and exit status 2, instead of click's three-line
    usage block."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                                standalone_mode=False, **extra)
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                              **extra)
        except _click.exceptions.NoArgsIsHelpError as exc:
            typer.echo(exc.ctx.get_help())  # a bare `item` or `item store`: the help, as asked
            sys.exit(0)
        except _click.exceptions.ClickException as exc:
            # typer vendors click as typer._click: its exceptions are not the click package's.
            where = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else (prog_name or "item")
            message = " ".join(exc.format_message().split())
            typer.echo(f"error: {message} (see `{where} --help`)", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    name="item",
    cls=_Group,
    help="ITEM: detect AI-generated images by how badly they agree with their own captions in CLIP space.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: flags show as flags (typer's rich panels print "--json <bool>").
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


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


def _stderr():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def info(message: str) -> None:
    """A progress or status message: stderr, so stdout stays for results."""
    _stderr().print(safe_text(message), markup=False)


def warn(message: str) -> None:
    _stderr().print(f"warning: {safe_text(message)}", markup=False, style="yellow")


def emit(text: str = "") -> None:
    """A result line on stdout (control characters escaped)."""
    typer.echo(safe_text(text))


def emit_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=_json_default, ensure_ascii=False))


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
        from item.errors import ItemError

        try:
            return fn(*args, **kwargs)
        except ItemError as exc:
            _stderr().print(f"error: {safe_text(exc, keep_newlines=False)}", markup=False, style="red")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            _stderr().print("interrupted", markup=False)
            raise typer.Exit(130) from None

    return wrapper


@contextmanager
def progress_bar(total: int | None, description: str, unit: str = "img"):
    """A rich progress bar on stderr with items per second; yields ``advance(n)``."""
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

        def advance(n: int = 1) -> None:
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


def version_callback(value: bool):
    if value:
        emit(f"item {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True,
                                       help="Print the version and exit.")):
    """ITEM: detect AI-generated images by image-text misalignment in CLIP space."""


def _attach() -> None:
    # Imported here, after the shared helpers above exist: stage cli modules import them from item.cli.
    from item.store.cli import app as store_app

    app.add_typer(store_app, name="store", help="Inspect, validate, export and index an embedding store.")
    for module in ("item.featurize.cli", "item.classify.cli", "item.serve.cli", "item.protocols.cli"):
        try:
            mod = __import__(module, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register(app)


_attach()


def main() -> None:
    app()

