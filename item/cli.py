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

from item import __version__

app = typer.Typer(
    name="item",
    help="ITEM: detect AI-generated images by how badly they agree with their own captions in CLIP space.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _stderr():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def info(message: str) -> None:
    """A progress or status message: stderr, so stdout stays for results."""
    _stderr().print(message, markup=False)


def warn(message: str) -> None:
    _stderr().print(f"warning: {message}", markup=False, style="yellow")


def emit(text: str = "") -> None:
    """A result line on stdout."""
    typer.echo(text)


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
            _stderr().print(f"error: {exc}", markup=False, style="red")
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
        return str(v)

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
    for module in ("item.featurize.cli", "item.classify.cli", "item.serve.cli"):
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

