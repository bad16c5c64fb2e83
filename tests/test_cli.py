"""The `item` command itself: start-up cost, help for every command, version."""

import subprocess
import sys

from typer.testing import CliRunner

from item import __version__
from item.cli import app

COMMANDS = ["featurize", "train", "eval", "predict", "neighbors", "report", "demo",
            "store info", "store validate", "store export", "store index", "store split", "store annotate"]


def test_help_imports_no_heavy_library():
    code = ("import sys; from item.cli import app; "
            "heavy = [m for m in ('torch', 'open_clip', 'transformers', 'faiss', 'h5py', 'sklearn') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_every_command_has_help():
    r = CliRunner().invoke(app, ["--help"])
    assert r.exit_code == 0
    for name in ("featurize", "train", "eval", "predict", "neighbors", "report", "demo", "store"):
        assert name in r.output
    for cmd in COMMANDS:
        r = CliRunner().invoke(app, cmd.split() + ["--help"])
        assert r.exit_code == 0, (cmd, r.output)
        assert "Usage" in r.output


def test_version():
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and __version__ in r.output
