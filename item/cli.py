"""The ``item`` command. Each stage defines its sub-commands in its own ``cli.py``; this module attaches
them. What they share (error handling, progress bars, output helpers) is in ``item.console``.

Only cli modules import typer/rich, print or exit. Heavy libraries are imported inside commands so
that ``item --help`` starts instantly.
"""

from __future__ import annotations

import errno
import sys

import typer
from typer.core import TyperGroup, _click

from item import __version__
from item.console import emit

class _Group(TyperGroup):
    """The root command: a usage error (unknown option, missing argument, bad value) is one line on
    stderr, ``error: ... (see `item CMD --help`)``, and exit status 2, instead of click's three-line
    usage block. Every command's options are checked as :mod:`item.options` declares, before any
    command body runs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from item.options import apply

        apply(self)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        _plain_metavars(self)
        if not standalone_mode:
            return super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                                standalone_mode=False, **extra)
        from item.errors import OutputError

        try:
            rv = self._main(args, prog_name, complete_var, **extra)
        except (OSError, OutputError) as exc:  # --help, --version or a bare `item` onto a full device or a closed pipe
            from item.console import _output_error, _silence_stdout

            if isinstance(exc, OSError):
                # a command's body turns its own OSErrors into one line (console.guarded): what reaches here
                # was raised by click writing the help, and a failed write can leave nothing to flush again
                if exc.filename is not None or exc.errno not in _WRITE_ERRNOS:
                    raise
                exc = _output_error(exc)
            _silence_stdout()
            typer.echo(f"error: {exc}", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def _main(self, args, prog_name, complete_var, **extra):
        try:
            return super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
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


#: A write to stdout failing: a full device, a closed pipe or terminal, a quota.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EPIPE, errno.EIO, errno.EBADF, errno.EDQUOT}


#: Metavariables by click type name, for parameters that do not set their own (typer would print
#: ``<list[Path]>`` or ``{store}``).
_METAVARS = {"Path": "PATH", "int": "N", "float": "X", "str": "TEXT", "bool": "BOOL"}


#: Folders by the parameter's name.
_DIR_NAMES = {"store", "head", "heads", "work", "root"}


def _plain_metavars(group) -> None:
    """Give every parameter of every command a real metavariable: an argument its name in capitals on
    the usage line (``item train [OPTIONS] DIR``, ``INPUTS...``), an option its type (``PATH``, ``N``,
    ``X``, ``TEXT``; ``DIR`` for stores and heads) unless it names its own."""
    stack = [group]
    while stack:
        cmd = stack.pop()
        stack.extend(getattr(cmd, "commands", {}).values())
        for param in getattr(cmd, "params", []):
            if getattr(param, "is_flag", False) or getattr(param, "_item_metavar", False):
                continue
            param._item_metavar = True
            desc = getattr(param, "type_descriptor", None)
            choices = getattr(desc, "choices", None) if getattr(desc, "is_choice", False) else None
            if param.metavar is None and choices:  # a choice (an Enum option) shows its values
                param.metavar = "[" + "|".join(str(getattr(c, "value", c)) for c in choices) + "]"
            if param.metavar is None:
                bare = param.bare_type() if hasattr(param, "bare_type") else ""
                if bare.startswith("list[") and bare.endswith("]"):
                    bare = bare[5:-1]
                param.metavar = "DIR" if param.name in _DIR_NAMES and bare == "Path" else \
                    param.name.upper() if param.param_type_name == "argument" else _METAVARS.get(bare, "VALUE")
            if param.param_type_name == "argument":
                # typer writes a required argument as {name} on the usage line and its type after it
                param._usage_display_name = (lambda p=param: (p.metavar if p.required else f"[{p.metavar}]")
                                             + ("..." if p.nargs != 1 else ""))
                param.display_type_rich = lambda ctx: ""


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


def version_callback(value: bool):
    if value:
        emit(f"item {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True,
                                       help="Print the version and exit.")):
    """ITEM: detect AI-generated images by image-text misalignment in CLIP space."""


def _attach() -> None:
    from item.store.cli import app as store_app

    app.add_typer(store_app, name="store", help="A store: info, validate, export, index, split, annotate.")
    for module in ("item.featurize.cli", "item.classify.cli", "item.serve.cli", "item.protocols.cli", "item.check.cli"):
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

