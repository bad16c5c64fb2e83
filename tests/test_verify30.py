"""Issue 30, independent re-check: variants of its cases through the real CLI."""

import csv
from pathlib import Path

from typer.testing import CliRunner

import item
from item.cli import app

SAMPLES = Path(item.__file__).resolve().parent / "samples"


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _manifest(path: Path, rows, header=("path", "label")) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_a_data_url_in_a_manifest_or_on_the_command_line_is_refused_as_a_url(tmp_path):
    m = _manifest(tmp_path / "m.csv", [["data:image/png;base64,iVBORw0KGgo=", "real"],
                                       ["DATA:image/png;base64,iVBORw0KGgo=", "fake"],
                                       [str(SAMPLES / "real/coffee.png"), "real"]])
    r = run("featurize", m, "--store", tmp_path / "s", "--models", "tiny-random", "--workers", "0")
    assert r.exit_code == 0, (r.stderr, r.exception)
    assert "m.csv:2: data:image/png;base64,iVBORw0KGgo=: URLs are not supported" in r.stderr
    assert "m.csv:3: DATA:image" in r.stderr and "missing file" not in r.stderr
    r = run("featurize", "data:image/png;base64,iVBORw0KGgo=", "--store", tmp_path / "t", "--models", "tiny-random")
    assert r.exit_code == 1 and "URLs are not supported" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "t").exists()
