"""Issue 13: `item reproduce` end to end on tiny-random models, on synthetic UniversalFakeDetect- and
GenImage-shaped trees (2 images per folder), and a test-only benchmark with a head trained elsewhere."""

import json
import re
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from item.classify.metrics import binary_metrics
from item.classify.train import score_rows
from item.cli import app
from item.protocols import get_protocol
from item.store import StoreReader
from tests._schemas import assert_valid
from tests._protocol_trees import chameleon_tree, genimage_tree, ufd_tree

# Each module fixture featurizes a whole made-up benchmark tree and trains heads (minutes on 2 cores):
# the quick subset (-m "not slow") leaves these out; test_protocols.py covers the protocol files.
pytestmark = pytest.mark.slow

RANDOM = "RANDOM WEIGHTS"


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(*args):
    r = cli(*args)
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    return r


@pytest.fixture(scope="module")
def ufd_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("ufd")
    root = ufd_tree(base / "data")
    work = base / "work"
    r = ok("reproduce", "ufd", "--root", root, "--work", work, "--models", "tiny-random")
    return root, work, r


def _table_lines(stdout):
    return [ln for ln in stdout.splitlines() if ln.strip()]


def test_ufd_prints_all_19_test_sets_with_the_shared_real_pairing_and_the_anchors(ufd_run):
    root, work, r = ufd_run
    lines = _table_lines(r.stdout)
    assert lines[0].startswith(RANDOM)
    header = next(ln for ln in lines if ln.startswith("test set"))
    for col in ("ITEM hierarchical acc", "ITEM hierarchical acc@0.5", "ITEM hierarchical AP", "ITEM visual acc",
                "NPR acc", "UnivFD acc"):
        assert col in header
    rows = {ln.split()[0]: ln.split() for ln in lines[lines.index(header) + 1:]
            if not ln.startswith(("results", "report", "audit:"))}
    tests = [t.name for t in get_protocol("ufd").parts("test")]
    assert set(tests) | {"mean"} == set(rows)
    for name in tests:
        want = "laion" if name.startswith(("ldm_", "glide_")) or name == "dalle" else \
            "imagenet" if name == "guided" else "own"
        assert rows[name][1] == want, rows[name]
    # The anchors' published numbers, printed beside ITEM's.
    npr = next(a for a in get_protocol("ufd").anchors if a.method == "NPR")
    assert rows["progan"][-2] == f"{npr.results['progan']['acc']:.1f}"
    assert rows["ldm_200"][-2] == "—"  # NPR's source has no row for it


def test_ufd_results_follow_the_pairing_numerically(ufd_run):
    root, work, _ = ufd_run
    doc = assert_valid(json.loads((work / "results.json").read_text()), "cli_reproduce")
    assert doc["random_weights"] is True and doc["note"].startswith(RANDOM)
    assert doc["pairing"]["ldm_200"] == "laion" and doc["pairing"]["guided"] == "imagenet"
    rows = {row["test_set"]: row for row in doc["rows"]}
    assert len(rows) == 19
    assert rows["ldm_200"]["n_real"] == 2 and rows["guided"]["n_real"] == 2  # the pools: 2 images each
    assert rows["progan"]["n_real"] == 4 and rows["progan"]["n_fake"] == 4  # 2 categories x 2
    # Recompute one paired row from the store: ldm_200's fakes against the LAION reals only.
    head = work / "heads" / "hierarchical"
    store = work / "stores" / "test"
    scores, scored, info = score_rows(store, head)
    with StoreReader(store) as reader:
        meta = reader.metadata(["generator", "label"])
    gen, lab = meta["generator"][scored], meta["label"][scored]
    for name, pool in (("ldm_200", "laion"), ("guided", "imagenet")):
        sel = ((gen == pool) & (lab == "real")) | ((gen == name) & (lab == "fake"))
        m = binary_metrics(scores[sel], (lab[sel] == "fake").astype(int), info["threshold"])
        m05 = binary_metrics(scores[sel], (lab[sel] == "fake").astype(int), 0.5)
        item = rows[name]["item"]["ITEM hierarchical"]
        assert item["acc"] == pytest.approx(100 * m["acc"]) and item["acc_05"] == pytest.approx(100 * m05["acc"])
        assert item["ap"] == pytest.approx(100 * m["ap"])
    mean = doc["mean"]["item"]["ITEM hierarchical"]["acc"]
    assert mean == pytest.approx(np.mean([rows[t]["item"]["ITEM hierarchical"]["acc"] for t in rows]))
    assert doc["mean"]["complete"] is True
    assert "not published" in doc["mean"]["anchors"]["NPR"]["how"]  # 7 of 19 sets: no made-up mean
    # Unverified anchors are listed with their source and no numbers.
    fat = next(a for a in doc["anchors"] if a["method"] == "FatFormer")
    assert fat["verified"] == "no"


def test_ufd_writes_markdown_and_the_html_report(ufd_run):
    _, work, _ = ufd_run
    md = (work / "results.md").read_text()
    assert md.startswith(RANDOM)
    assert "| ldm_200 | laion |" in md and "| guided | imagenet |" in md and "| mean |" in md
    assert "NPR-DeepfakeDetection" in md and "numbers not verified here, left out" in md
    html = (work / "report.html").read_text()
    body = html.split("<body>", 1)[1].lstrip()
    assert body.startswith('<p class="banner">RANDOM WEIGHTS')
    assert "UniversalFakeDetect: ITEM beside the published numbers" in html and "laion" in html
    assert "oracle acc (test labels)" in html
    man = (work / "manifests" / "test.csv").read_text().splitlines()
    assert man[0] == "path,label,generator,split" and any(",real,laion,test" in ln for ln in man)


def test_ufd_rerun_resumes(ufd_run):
    root, work, _ = ufd_run
    with StoreReader(work / "stores" / "test") as r:
        before = r.counts["n_images"]
    r = ok("reproduce", "ufd", "--root", root, "--work", work, "--models", "tiny-random")
    assert "0 written" in r.stderr and "already trained on this store, kept" in r.stderr
    with StoreReader(work / "stores" / "test") as rd:
        assert rd.counts["n_images"] == before


@pytest.fixture(scope="module")
def genimage_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("gi")
    root = genimage_tree(base / "data", skip=("BigGAN",))
    work = base / "work"
    refused = cli("reproduce", "genimage", "--root", root, "--work", work, "--models", "tiny-random")
    r = ok("reproduce", "genimage", "--root", root, "--work", work, "--models", "tiny-random", "--allow-missing",
           "--heads", "hierarchical")
    return root, work, r, refused


def test_genimage_missing_set_is_refused_then_run_with_allow_missing(genimage_run):
    root, work, r, refused = genimage_run
    assert refused.exit_code == 1 and "--allow-missing" in refused.stderr and "biggan" in refused.stderr
    lines = _table_lines(r.stdout)
    assert lines[0].startswith(RANDOM)
    assert any(ln.startswith("biggan (missing)") for ln in lines)
    assert any(ln.startswith("mean (7 of the protocol's sets)") for ln in lines)
    header = next(ln for ln in lines if ln.startswith("test set"))
    for col in ("ITEM hierarchical acc", "ResNet-50 acc", "NPR acc", "AIDE acc", "UnivFD acc",
                "DDA [fakes jpeg:96] acc"):  # DDA's mean was measured with its fakes re-encoded, and says so
        assert col in header
    assert "files as distributed (no format alignment)" in lines[1]  # the title: ITEM's own alignment
    assert "ITEM visual" not in header  # --heads hierarchical only
    doc = assert_valid(json.loads((work / "results.json").read_text()), "cli_reproduce")
    rows = {row["test_set"]: row for row in doc["rows"]}
    assert all(rows[t]["reals"] == "own" for t in rows)
    assert rows["biggan"]["missing"] is True and doc["missing_sets"] == ["biggan"]
    assert doc["mean"]["anchors"]["ResNet-50"] == {"acc": 72.1, "how": "published"}
    assert "over 7 sets" in doc["mean"]["anchors"]["NPR"]["how"]
    with StoreReader(work / "stores" / "train") as reader:
        assert set(reader.metadata(["generator"])["generator"]) == {"sdv14"}
    head = json.loads((work / "heads" / "hierarchical" / "head.json").read_text())
    assert "training rows" in head["threshold_from"]  # GenImage has no val split: a hold-out of train


def test_test_only_benchmark_needs_a_head_and_uses_it(genimage_run, tmp_path):
    _, gi_work, _, _ = genimage_run
    root = chameleon_tree(tmp_path / "cham")
    r = cli("reproduce", "chameleon", "--root", root, "--work", tmp_path / "w", "--models", "tiny-random")
    assert r.exit_code == 1 and "test-only" in r.stderr and "--head" in r.stderr
    r = ok("reproduce", "chameleon", "--root", root, "--work", tmp_path / "w", "--head",
           gi_work / "heads" / "hierarchical")
    lines = _table_lines(r.stdout)
    assert lines[0].startswith(RANDOM)
    header = next(ln for ln in lines if ln.startswith("test set"))
    assert "ITEM hierarchical acc" in header and "UnivFD (trained on SD v1.4) acc" in header
    row = next(ln for ln in lines if ln.startswith("chameleon"))
    assert "58.0" in row  # UnivFD trained on SD v1.4, AIDE's Table 4
    # The protocol's columns: real and fake accuracy beside accuracy, for ITEM and the anchors.
    for col in ("ITEM hierarchical real", "ITEM hierarchical fake", "UnivFD (trained on SD v1.4) real",
                "UnivFD (trained on SD v1.4) fake"):
        assert col in header
    assert "75.0" in row and "41.1" in row  # UnivFD's fake and real accuracy as published
    md = (tmp_path / "w" / "results.md").read_text()
    md_header = next(ln for ln in md.splitlines() if ln.startswith("| test set"))
    assert "| ITEM hierarchical real |" in md_header and "| ITEM hierarchical fake |" in md_header
    assert "| UnivFD (trained on SD v1.4) real |" in md_header and "| DIRE (trained on SD v1.4) fake |" in md_header
    md_row = next(ln for ln in md.splitlines() if ln.startswith("| chameleon"))
    assert "| 95.7 |" in md_row and "| 11.9 |" in md_row  # DIRE's real and fake accuracy
    doc = json.loads((tmp_path / "w" / "results.json").read_text())
    item = doc["rows"][0]["item"]["ITEM hierarchical"]
    assert item["real_acc"] is not None and item["fake_acc"] is not None
    assert not (tmp_path / "w" / "stores" / "train").exists()


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["archives", "cnndetection-root"])
def test_ufd_runs_on_the_other_training_layouts(tmp_path, layout):
    """progan_train/<class>/ (the archives as unpacked) and train/<class>/ (CNNDetection's data root)."""
    root = ufd_tree(tmp_path / "data", train_layout=layout)
    work = tmp_path / "work"
    r = ok("reproduce", "ufd", "--root", root, "--work", work, "--models", "tiny-random", "--heads", "hierarchical")
    assert f"layout recognised: {layout}" in r.stderr
    lines = _table_lines(r.stdout)
    header = next(ln for ln in lines if ln.startswith("test set"))
    rows = {ln.split()[0] for ln in lines[lines.index(header) + 1:] if not ln.startswith(("results", "report", "audit:"))}
    assert rows == {t.name for t in get_protocol("ufd").parts("test")} | {"mean"}
    assert "NPR acc" in header
    doc = json.loads((work / "results.json").read_text())
    assert doc["layout"]["layout"] == layout
    with StoreReader(work / "stores" / "train") as reader:
        meta = reader.metadata(["split", "path"])
    assert sorted(set(meta["split"])) == ["train", "val"]
    assert not any("airplane" in p for p in meta["path"])  # the unused class stays out
    # The audit's verdict beside the results.
    assert any(ln.startswith("audit: ") for ln in lines)
    assert doc["audit"]["test_acc"] is not None and "## Trivial cues" in (work / "results.md").read_text()


@pytest.mark.slow
def test_align_format_reencodes_the_fakes_into_a_run_of_its_own(tmp_path):
    """--align-format jpeg:96: fakes (train and test) re-encoded as JPEG 96, reals as they are; the run has its own
    stores, heads and results, recorded in the stores' identity, and every table says which alignment it used."""
    from tests._protocol_trees import wildrf_tree

    root = wildrf_tree(tmp_path / "data")
    work = tmp_path / "work"
    bad = cli("reproduce", "wildrf", "--root", root, "--work", work, "--align-format", "png:3")
    assert bad.exit_code == 1 and "unknown alignment" in bad.stderr and "jpeg:N" in bad.stderr
    r = ok("reproduce", "wildrf", "--root", root, "--work", work, "--models", "tiny-random", "--heads", "hierarchical",
           "--align-format", "jpeg:96")
    run = work / "aligned-jpeg-96"
    assert "fakes re-encoded as JPEG quality 96" in r.stdout
    assert not (work / "stores").exists()  # nothing of an unaligned run
    for name in ("train", "test"):
        with StoreReader(run / "stores" / name) as reader:
            meta = reader.metadata(["label", "format", "path"])
            assert reader.compat["alignment"] == "jpeg:96"
        fake = meta["label"] == "fake"
        assert set(meta["format"][fake]) == {"JPEG"} and set(meta["format"][~fake]) == {"PNG"}
        assert all(str(p).startswith(str(run / "files")) for p in meta["path"][fake])
        assert not any(str(p).startswith(str(run / "files")) for p in meta["path"][~fake])
    doc = json.loads((run / "results.json").read_text())
    assert doc["alignment"] == "jpeg:96"
    md = (run / "results.md").read_text()
    assert "Format alignment of ITEM's run: fakes re-encoded as JPEG quality 96" in md
    assert "DDA" in md  # its published WildRF mean, as distributed (no alignment on WildRF)
    # The aligned fakes are JPEG quality 96 on disk, as the audit reads them.
    assert doc["audit"]["test_acc"] is not None
    from item.classify.audit import file_cues

    path = next(p for p, lab in zip(meta["path"], meta["label"]) if lab == "fake")
    assert file_cues(path)["jpeg_quality"] == 96
    again = ok("reproduce", "wildrf", "--root", root, "--work", work, "--models", "tiny-random", "--heads",
               "hierarchical", "--align-format", "jpeg:96")
    assert "written 0" in again.stderr and "0 written" in again.stderr  # files and stores resumed
