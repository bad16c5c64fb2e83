"""Issue 22: every accepted layout of a benchmark is recognised by rule and named; a missing, an extra and a
misspelt folder are reported in each; the hint offers a folder of the same split."""

import shutil

import pytest
from typer.testing import CliRunner

from item.cli import app
from item.protocols import get_protocol
from item.protocols.layout import check_layout
from tests._protocol_trees import UFD_TRAIN_LAYOUTS, images, ufd_tree


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_every_protocol_lists_its_layouts_with_a_source():
    from item.protocols import protocol_names

    for name in protocol_names():
        p = get_protocol(name)
        assert p.layouts, name
        for lay in p.layouts:
            assert lay.source and lay.what and lay.verified in ("read", "no")
    assert [lay.name for lay in get_protocol("ufd").layouts] == list(UFD_TRAIN_LAYOUTS)


@pytest.mark.parametrize("layout", list(UFD_TRAIN_LAYOUTS))
def test_each_ufd_layout_is_recognised_and_named(tmp_path, layout):
    root = ufd_tree(tmp_path / "d", train_layout=layout)
    rep = check_layout(get_protocol("ufd"), root)
    assert rep.ok and rep.unexpected == [], rep.lines()
    assert rep.layout == layout
    assert len(rep.parts[("train", "progan")].real) == 4 * 2  # the 4 classes, not the unused airplane
    r = cli("reproduce", "ufd", "--root", root, "--work", tmp_path / "w", "--check-only")
    assert r.exit_code == 0, r.stderr
    assert f"layout recognised: {layout}:" in r.stderr
    assert "21 of 21 sets found, 0 missing, 0 unexpected" in r.stderr


@pytest.mark.parametrize("layout", list(UFD_TRAIN_LAYOUTS))
def test_missing_extra_and_misspelt_folders_in_each_ufd_layout(tmp_path, layout):
    root = ufd_tree(tmp_path / "d", train_layout=layout, skip=("biggan",))
    images(root / "zz_extra" / "1_fake", 3)
    # Misspell the training folder: the layout is still recognised (val and test are there).
    train = root / UFD_TRAIN_LAYOUTS[layout]["train"]
    misspelt = train.with_name({"distributed": "progna", "archives": "progan_trian",
                                "cnndetection-root": "trian"}[layout])
    train.rename(misspelt)
    rep = check_layout(get_protocol("ufd"), root)
    assert rep.layout == layout
    assert set(rep.missing_parts) == {("train", "progan"), ("test", "biggan")}
    assert dict(rep.unexpected).get("zz_extra") == 3
    rel = str(misspelt.relative_to(root))
    hints = [h for h in rep.hints if h.startswith("train set")]
    assert hints and all(repr(rel) in h for h in hints), rep.hints
    # A folder of another split is never offered for the training set.
    assert not any("val" in h.split("unexpected")[0] and h.startswith("train set") for h in rep.hints)
    assert not any("progan_val" in h or "'val" in h for h in hints)
    r = cli("reproduce", "ufd", "--root", root, "--work", tmp_path / "w", "--check-only")
    assert r.exit_code == 1
    assert f"layout recognised: {layout}" in r.stderr and "unexpected: zz_extra (3 images)" in r.stderr
    assert "19 of 21 sets found, 2 missing" in r.stderr


def test_the_archives_training_folder_is_not_matched_to_the_validation_one(tmp_path):
    """The reported bug: with progan_train misspelt under the archives layout, the hint named progan_val."""
    root = ufd_tree(tmp_path / "d", train_layout="archives")
    (root / "progan_train").rename(root / "progan_trainn")
    rep = check_layout(get_protocol("ufd"), root)
    assert any("'progan_trainn'" in h for h in rep.hints), rep.hints
    assert not any("progan_val" in h for h in rep.hints)


def test_an_empty_root_counts_sets_and_pools_apart(tmp_path):
    (tmp_path / "empty").mkdir()
    r = cli("reproduce", "ufd", "--root", tmp_path / "empty", "--work", tmp_path / "w", "--check-only")
    assert r.exit_code == 1
    assert "0 of 21 sets found, 21 missing (and 2 real pool(s) missing)" in r.stderr
    assert "no layout found any set" in r.stderr


def test_two_layouts_at_once_are_refused(tmp_path):
    root = ufd_tree(tmp_path / "d", train_layout="archives")
    ufd_tree(tmp_path / "d", train_layout="cnndetection-root")
    r = cli("reproduce", "ufd", "--root", root, "--work", tmp_path / "w", "--check-only")
    assert r.exit_code == 1 and "two layouts at once" in r.stderr


def test_known_unused_test_folders_are_not_unexpected(tmp_path):
    root = ufd_tree(tmp_path / "d")
    for extra in ("stylegan2", "whichfaceisreal"):
        images(root / "test" / extra / "0_real", 1)
        images(root / "test" / extra / "1_fake", 1)
    rep = check_layout(get_protocol("ufd"), root)
    assert rep.unexpected == [] and rep.n_unused >= 4
