"""Issue 22: `item audit`: can a store's labels be read off its files (format, JPEG quality, size, EXIF)?

Stores are made by the real `item featurize --models tiny-random` from a manifest of files written here."""

import csv
import json
import os

import numpy as np
import pytest

from PIL import Image
from typer.testing import CliRunner

from item.classify.audit import file_cues
from item.imagefile import estimate_jpeg_quality
from item.cli import app
from tests._schemas import assert_valid


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(*args):
    r = cli(*args)
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    return r


def _noise(rng, size):
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _store(tmp, name, per_split, write):
    """Write files with ``write(path_stem, label, split, i) -> path`` and featurize them as one store."""
    rows = []
    for split, n in per_split.items():
        for label in ("real", "fake"):
            for i in range(n):
                folder = tmp / name / split / label
                folder.mkdir(parents=True, exist_ok=True)
                path = write(folder / f"{i:03d}", label, split, i)
                rows.append({"path": str(path), "label": label, "generator": "gen", "split": split,
                             "caption": f"a photo of a thing number {i}"})
    manifest = tmp / f"{name}.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "generator", "split", "caption"])
        w.writeheader()
        w.writerows(rows)
    store = tmp / f"{name}-store"
    ok("featurize", manifest, "--store", store, "--models", "tiny-random", "--batch-size", "32")
    return store


SPLITS = {"train": 14, "val": 8, "test": 14}


@pytest.fixture(scope="module")
def cue_store(tmp_path_factory):
    """Fakes all PNG, reals all JPEG (quality 90, with EXIF): the classic shortcut."""
    tmp = tmp_path_factory.mktemp("cue")
    rng = np.random.default_rng(0)

    def write(stem, label, split, i):
        size = [(48, 40), (64, 48), (40, 40)][i % 3]
        im = _noise(rng, size)
        if label == "fake":
            im.save(f"{stem}.png")
            return f"{stem}.png"
        exif = Image.Exif()
        exif[0x010F] = "Camera"
        im.save(f"{stem}.jpg", quality=90, exif=exif)
        return f"{stem}.jpg"

    return _store(tmp, "cue", SPLITS, write)


@pytest.fixture(scope="module")
def fair_store(tmp_path_factory):
    """Both classes share formats, qualities and sizes: each fake is a flipped twin of a real."""
    tmp = tmp_path_factory.mktemp("fair")
    rng = np.random.default_rng(1)
    twins = {}

    def write(stem, label, split, i):
        key = (split, i)
        if key not in twins:
            twins[key] = _noise(rng, [(48, 40), (64, 48), (40, 40)][i % 3])
        im = twins[key] if label == "real" else twins[key].transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if i % 2:
            im.save(f"{stem}.jpg", quality=[75, 95][(i // 2) % 2])
            return f"{stem}.jpg"
        im.save(f"{stem}.png")
        return f"{stem}.png"

    return _store(tmp, "fair", SPLITS, write)


@pytest.mark.parametrize("quality", [10, 50, 75, 90, 96, 100])
def test_jpeg_quality_is_read_back_from_the_quantisation_tables(tmp_path, quality):
    path = tmp_path / "a.jpg"
    _noise(np.random.default_rng(0), (32, 32)).save(path, quality=quality)
    cues = file_cues(path)
    assert cues["format"] == "JPEG" and cues["jpeg_quality"] == quality
    assert cues["file_size"] == os.path.getsize(path) and cues["exif"] is False
    with Image.open(path) as im:
        assert estimate_jpeg_quality(im.quantization[0]) == (quality, 0.0)


def test_png_fakes_and_jpeg_reals_are_called_a_shortcut(cue_store):
    r = ok("audit", cue_store)
    lines = r.stdout.splitlines()
    assert lines[0].startswith("RANDOM WEIGHTS")
    verdict = next(ln for ln in lines if ln.startswith("labels are predictable from file format and size alone"))
    acc = float(verdict.rsplit(" ", 1)[1])
    assert acc >= 0.9
    data = assert_valid(json.loads(ok("audit", cue_store, "--json").stdout), "cli_audit")
    tc = data["trivial_cue"]
    assert tc["test_acc"] >= 0.9 and tc["test_auroc"] >= 0.9
    assert abs(tc["test_acc"] - acc) < 0.01
    assert tc["threshold_from"] == "val" and "train" in tc["trained_on"]
    assert data["per_class"]["fake"]["formats"] == {"PNG": SPLITS["test"]}
    assert data["per_class"]["real"]["formats"] == {"JPEG": SPLITS["test"]}
    assert data["per_class"]["real"]["jpeg_quality_median"] == 90
    assert data["per_class"]["real"]["exif_share"] == 1.0 and data["per_class"]["fake"]["exif_share"] == 0.0
    # This store recorded the cues when it was featurized (schema 3): nothing is read from the files.
    assert set(data["sources"].values()) == {"store"}
    assert [g["generator"] for g in tc["per_generator"]] == ["gen", "mean"]


def test_shared_formats_and_sizes_are_not_a_shortcut(fair_store):
    data = assert_valid(json.loads(ok("audit", fair_store, "--json").stdout), "cli_audit")
    assert data["trivial_cue"]["test_acc"] <= 0.65
    assert data["per_class"]["real"]["formats"] == data["per_class"]["fake"]["formats"]
    r = ok("audit", fair_store)
    assert "file format and size do not predict the labels" in r.stdout


def test_an_unknown_split_is_one_line(cue_store):
    r = cli("audit", cue_store, "--split", "nope")
    assert r.exit_code == 1
    assert "no labelled rows in split 'nope'" in r.stderr and "train" in r.stderr


def test_report_holds_the_audit_with_its_plots(cue_store, tmp_path):
    head = tmp_path / "head"
    ok("train", cue_store, "--out", head, "--head", "logistic", "--recipe", "global")
    out = tmp_path / "r.html"
    ok("report", cue_store, "--head", head, "--out", out)
    text = out.read_text()
    assert "Trivial cues: can the labels be read off the files?" in text
    assert "labels are predictable from file format and size alone" in text
    assert "file cues by class and generator" in text


def _older_store(tmp_path, keep_files=True):
    """A store whose rows carry no recorded file cues (as schema-2 stores): synthetic rows pointing at real files,
    reals JPEG and fakes PNG."""
    from item.store import StoreWriter
    from item.store.synthetic import synthetic_compat, synthetic_records

    rng = np.random.default_rng(3)
    compat = synthetic_compat(16, 8)
    with StoreWriter(tmp_path / "old", compat=compat, models={"clip": {"model": "synthetic", "random_weights": True}},
                     recipe="hierarchical") as w:
        for i, rec in enumerate(synthetic_records(90, 16, generators=("gen_a",), seed=3)):
            folder = tmp_path / "files"
            folder.mkdir(exist_ok=True)
            path = folder / f"{i:03d}.{'png' if rec.label == 'fake' else 'jpg'}"
            _noise(rng, (40, 32)).save(path, quality=80)
            rec.path, rec.format, rec.width, rec.height = str(path), "PNG" if rec.label == "fake" else "JPEG", 40, 32
            assert rec.file_size == -1 and rec.jpeg_quality == -1  # nothing recorded
            w.add(rec)
    return tmp_path / "old"


def test_a_store_without_recorded_cues_reads_them_from_its_files(tmp_path):
    store = _older_store(tmp_path)
    data = json.loads(ok("audit", store, "--json").stdout)
    assert data["sources"]["jpeg_quality"] == "files" and data["sources"]["file_size"] == "files"
    assert data["per_class"]["real"]["jpeg_quality_median"] == 80
    assert data["trivial_cue"]["test_acc"] >= 0.9
    assert "jpeg_quality" in data["trivial_cue"]["features"]
    # The files gone: the store's own columns (format, size) still audit; the rest is said to be unavailable.
    import shutil

    shutil.rmtree(tmp_path / "files")
    r = ok("audit", store)
    assert "file_size: unavailable (not recorded in the store; the files are gone)" in r.stderr
    data = json.loads(ok("audit", store, "--json").stdout)
    assert "jpeg_quality" not in data["trivial_cue"]["features"] and "format=PNG" in data["trivial_cue"]["features"]
    assert data["trivial_cue"]["test_acc"] >= 0.9  # the format alone gives the labels away here
