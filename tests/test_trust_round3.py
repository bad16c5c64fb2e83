"""Trust, round 3 (issue 30): the cases of the issue through the real CLI, on real files.

Manifests (repeated columns, over-long fields, URLs), spreadsheet-safe exports, a full disk and a
broken stdout, RANDOM WEIGHTS before any warning, and index parameters the store's size cannot take."""

import csv
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

import item
from item.cli import app

SAMPLES = Path(item.__file__).resolve().parent / "samples"
PICKS = [("real/000000458054.jpg", "real", "train"), ("real/000000361919.jpg", "real", "train"),
         ("real/000000553664.jpg", "real", "val"), ("real/coffee.png", "real", "test"),
         ("fake/000001.1863159593.png", "fake", "train"), ("fake/000002.1151955949.png", "fake", "train"),
         ("fake/000003.2736230502.png", "fake", "val"), ("fake/sdturbo_sdxlturbo_example.png", "fake", "test")]


def run(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def ok(*args):
    r = run(*args)
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    return r


def one_error_line(r) -> str:
    assert r.exit_code != 0, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.exception is None or isinstance(r.exception, SystemExit), r.exception
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error")]
    assert len(errors) == 1, lines
    return errors[0]


def _manifest(path: Path, rows, header=("path", "label", "generator", "split", "caption")) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _rows(picks=PICKS, caption=None):
    return [[str(SAMPLES / p), lab, "camera" if lab == "real" else "sd", split, caption or ""]
            for p, lab, split in picks]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    base = tmp_path_factory.mktemp("round3")
    s = base / "store"
    ok("featurize", _manifest(base / "m.csv", _rows()), "--store", s, "--models", "tiny-random", "--workers", "0")
    return s


# -- (10) manifests ------------------------------------------------------------------------------------
def test_featurize_lists_a_10mb_caption_and_a_url_as_their_rows_and_featurizes_the_rest(tmp_path):
    rows = _rows(PICKS[:3]) + [[str(SAMPLES / PICKS[3][0]), "real", "camera", "test", "x" * 10_000_000],
                               ["http://127.0.0.1:1/x.jpg", "fake", "sd", "test", ""]]
    r = ok("featurize", _manifest(tmp_path / "m.csv", rows), "--store", tmp_path / "s", "--models", "tiny-random",
           "--workers", "0")
    assert "m.csv:5" in r.stderr and "'caption' field has 10,000,000 characters" in r.stderr
    assert "m.csv:6" in r.stderr and "URLs are not supported: download the files first" in r.stderr
    assert "http:/127" not in r.stderr and "field larger than field limit" not in r.stderr
    info = json.loads(ok("store", "info", tmp_path / "s", "--json").stdout)
    assert info["n_ok"] == 3


def test_a_column_given_twice_is_refused_in_one_line_by_featurize_and_annotate(tmp_path, store):
    m = _manifest(tmp_path / "m.csv", [[str(SAMPLES / PICKS[0][0]), "real", "fake"]], header=("path", "label", "label"))
    line = one_error_line(run("featurize", m, "--store", tmp_path / "s", "--models", "tiny-random", "--workers", "0"))
    assert "column 'label' is given twice" in line
    assert not (tmp_path / "s").exists() or not list((tmp_path / "s").glob("shards/*.h5"))
    line = one_error_line(run("store", "annotate", store, m))
    assert "column 'label' is given twice" in line


def test_annotate_refuses_a_url_and_a_field_of_megabytes_in_one_line(tmp_path, store):
    before = (store / "overlay.json").read_bytes() if (store / "overlay.json").exists() else None
    m = _manifest(tmp_path / "u.csv", [["https://example.org/x.jpg", "fake"]], header=("path", "label"))
    assert "URLs are not supported: download the files first" in one_error_line(run("store", "annotate", store, m))
    m = _manifest(tmp_path / "big.csv", [[str(SAMPLES / PICKS[0][0]), "fake", "g" * 2_000_000]],
                  header=("path", "label", "generator"))
    assert "'generator' field has 2,000,000 characters" in one_error_line(run("store", "annotate", store, m))
    after = (store / "overlay.json").read_bytes() if (store / "overlay.json").exists() else None
    assert before == after  # nothing was annotated
