"""Issue 13: the benchmark protocols registry and the layout check, on synthetic trees shaped like each
registered benchmark (tests/_protocol_trees.py), through the public API and `item reproduce --check-only`."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from item.cli import app
from item.errors import InputError
from item.protocols import get_protocol, protocol_names
from item.protocols.layout import check_layout, match
from item.protocols.spec import protocol_from_dict
from tests._protocol_trees import TREES, genimage_tree, images, ufd_tree
from tests._schemas import assert_valid

ALL = ["chameleon", "cospy", "genimage", "synthbuster", "ufd", "wildrf"]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_registry_lists_the_six_benchmarks_and_refuses_unknown_names():
    assert protocol_names() == ALL
    assert get_protocol("UniversalFakeDetect").name == "ufd"  # alias, any case
    with pytest.raises(InputError) as e:
        get_protocol("imagenet-c")
    for name in ALL:
        assert name in str(e.value)
    r = cli("reproduce", "imagenet-c", "--root", ".", "--work", "w")
    assert r.exit_code == 1 and "Available: chameleon" in r.stderr


def test_ufd_protocol_has_19_test_sets_and_the_shared_real_pairing():
    p = get_protocol("ufd")
    tests = [t.name for t in p.parts("test")]
    assert len(tests) == 19 and len(set(tests)) == 19
    pairing = p.pairing()
    for name in tests:
        if name.startswith(("ldm_", "glide_")) or name == "dalle":
            assert pairing[name] == "laion"
        elif name == "guided":
            assert pairing[name] == "imagenet"
        else:
            assert pairing[name] == name  # GAN sets: their own reals
    assert [t.name for t in p.parts("train")] == ["progan"]
    assert all(c in " ".join(p.parts("train")[0].fake) for c in ("car", "cat", "chair", "horse"))
    assert p.mean_over == tuple(tests)


def test_genimage_protocol_trains_on_sdv14_and_tests_8_generators():
    p = get_protocol("genimage")
    assert [t.name for t in p.parts("train")] == ["sdv14"]
    assert sorted(t.name for t in p.parts("test")) == sorted(
        ["midjourney", "sdv14", "sdv15", "adm", "glide", "wukong", "vqdm", "biggan"])
    assert all(t.pool == "" for t in p.parts("test"))  # each generator's own nature images


@pytest.mark.parametrize("name", ALL)
def test_every_anchor_number_has_a_read_source(name):
    p = get_protocol(name)
    for a in p.anchors:
        assert a.source and a.method
        if a.verified == "read":
            assert a.results or a.mean
            for metrics in list(a.results.values()) + [a.mean]:
                for k, v in metrics.items():
                    assert k in ("acc", "ap", "real_acc", "fake_acc") and 0.0 <= v <= 100.0
        else:
            assert not a.results and not a.mean  # a number not read in its source is left out


def test_anchor_values_match_what_the_sources_say():
    # Spot checks against the sources read (see each anchor's 'source'): GenImage's README Table 3,
    # NPR's README GenImage table, AIDE's arXiv PDF Table 3 and Table 4.
    gi = {a.method: a for a in get_protocol("genimage").anchors}
    assert gi["ResNet-50"].results["midjourney"]["acc"] == 54.9 and gi["ResNet-50"].mean["acc"] == 72.1
    assert gi["NPR"].results["adm"] == {"acc": 87.8, "ap": 96.0} and gi["NPR"].mean == {"acc": 90.1, "ap": 96.9}
    assert "sdv14" not in gi["NPR"].results and len(gi["NPR"].mean_over) == 7
    assert gi["AIDE"].results["midjourney"]["acc"] == 79.38 and gi["AIDE"].mean["acc"] == 86.88
    cham = {a.method: a for a in get_protocol("chameleon").anchors}
    assert cham["UnivFD (trained on SD v1.4)"].results["chameleon"] == {"acc": 58.03, "fake_acc": 74.97,
                                                                        "real_acc": 41.09}


def test_protocol_files_are_checked_when_loaded(tmp_path):
    doc = json.loads((get_protocol("synthbuster").path and open(get_protocol("synthbuster").path).read()))
    bad = json.loads(json.dumps(doc))
    bad["anchors"][0]["results"] = {"glide": {"acc": 50.0}}  # a number marked as not verified
    with pytest.raises(InputError, match="not read"):
        protocol_from_dict(bad)
    bad = json.loads(json.dumps(doc))
    bad["splits"]["test"][0]["pool"] = "nowhere"
    with pytest.raises(InputError, match="pool 'nowhere' is not defined"):
        protocol_from_dict(bad)
    bad = json.loads(json.dumps(doc))
    bad["version"] = 99
    with pytest.raises(InputError, match="version"):
        protocol_from_dict(bad)
    # A protocol file given by path works like a registered one.
    path = tmp_path / "mine.json"
    doc["name"] = "mine"
    path.write_text(json.dumps(doc))
    assert get_protocol(str(path)).name == "mine"


def test_pattern_matching():
    assert match("test/*/0_real", "test/progan/0_REAL") and match("test/*/0_real", "Test/Progan/0_real")
    assert not match("test/*/0_real", "test/progan/cat/0_real")
    assert match("**/0_real", "0_real") and match("**/0_real", "a/b/0_real") and match("a/**", "a")


@pytest.mark.parametrize("name", ALL)
def test_a_tree_shaped_like_the_benchmark_passes_the_check(tmp_path, name):
    root = TREES[name](tmp_path / name)
    p = get_protocol(name)
    rep = check_layout(p, root)
    assert rep.ok, rep.lines()
    assert rep.unexpected == []
    n_sets = sum(len(p.parts(s)) for s in ("train", "val", "test"))
    assert len(rep.parts) == n_sets
    for (split, set_name), part in rep.parts.items():
        assert part.fake or part.real, (split, set_name)
    # Each test set's rows: its fakes labelled with its name, its reals with its own name or its pool's.
    rows = rep.rows("test")
    gens = {r["generator"] for r in rows}
    assert {t.name for t in p.parts("test")} <= gens
    for t in p.parts("test"):
        if t.pool:
            assert any(r["generator"] == t.pool and r["label"] == "real" for r in rows)
            assert not any(r["generator"] == t.name and r["label"] == "real" for r in rows)


@pytest.mark.parametrize("name", ALL)
def test_missing_extra_and_misspelt_folders_are_reported(tmp_path, name):
    root = TREES[name](tmp_path / name)
    p = get_protocol(name)
    rep = check_layout(p, root)
    tests = [t.name for t in p.parts("test")]
    # Misspell one test set's fake folder, delete another's, add a folder nobody expects.
    renamed_set = tests[-1]
    fake_dir = rep.parts[("test", renamed_set)].fake_dirs[0]
    src = root / fake_dir
    misspelt = src.with_name(src.name + "x")
    src.rename(misspelt)
    deleted_set = tests[0] if len(tests) > 1 else None
    if deleted_set:
        for d in rep.parts[("test", deleted_set)].fake_dirs:
            shutil.rmtree(root / d)
    images(root / "zz_extra" / "1_fake", 3)
    rep = check_layout(p, root)
    assert not rep.ok
    assert ("test", renamed_set) in rep.missing_parts
    if deleted_set:
        assert ("test", deleted_set) in rep.missing_parts
    unexpected = dict(rep.unexpected)
    rel_misspelt = str(misspelt.relative_to(root)).replace("\\", "/")
    assert unexpected.get("zz_extra") == 3
    assert any(f == rel_misspelt or rel_misspelt.startswith(f + "/") for f in unexpected), unexpected
    assert any("misspelling" in h and renamed_set in h for h in rep.hints), rep.hints
    # The same through the CLI a user runs: the report on stderr, exit status 1.
    r = cli("reproduce", name, "--root", root, "--work", tmp_path / "w", "--check-only")
    assert r.exit_code == 1
    assert "missing:" in r.stderr and "unexpected: zz_extra (3 images)" in r.stderr and "misspelling" in r.stderr
    assert "Traceback" not in r.stderr


def test_check_only_json_and_published_counts(tmp_path):
    root = ufd_tree(tmp_path / "ufd", train_classes=("car", "cat", "chair", "horse"))
    r = cli("reproduce", "ufd", "--root", root, "--work", tmp_path / "w", "--check-only", "--json")
    assert r.exit_code == 0, r.stderr
    doc = assert_valid(json.loads(r.stdout), "cli_reproduce_check")
    assert doc["missing"] == [] and doc["unexpected"] == []
    assert doc["sets"]["test/ldm_200"] == {"real": 2, "fake": 2, "reals_from": "laion"}
    assert doc["sets"]["test/guided"]["reals_from"] == "imagenet"
    assert doc["unused_images"] == 2 * 2 * 2  # the airplane class of train and val: known, not used
    assert any("ldm_200" in c and "1000 published" in c for c in doc["counts"])


def test_missing_training_data_is_not_skipped(tmp_path):
    root = genimage_tree(tmp_path / "gi")
    shutil.rmtree(root / "stable_diffusion_v_1_4" / "imagenet_ai_0419_sdv4" / "train")
    r = cli("reproduce", "genimage", "--root", root, "--work", tmp_path / "w", "--models", "tiny-random",
            "--allow-missing")
    assert r.exit_code == 1 and "training data of genimage is missing" in r.stderr


def test_protocols_json_fits_its_schema():
    listing = assert_valid(json.loads(cli("protocols", "--json").stdout), "cli_protocols")
    assert [r["name"] for r in listing] == list(protocol_names())
    one = assert_valid(json.loads(cli("protocols", "ufd", "--json").stdout), "cli_protocol")
    assert one["name"] == "ufd"
