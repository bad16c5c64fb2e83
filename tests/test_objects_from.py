"""issue 28: a second backbone from an existing store (``item featurize --objects-from OLD``).

OLD is a full tiny-random featurize (the tiny captioner writes the captions, the tiny grounder grounds every
noun). NEW reuses OLD's captions, nouns and boxes under a CLIP of another width (a local checkpoint whose
open_clip_config.json gives embed_dim 48), with captioner and grounder loading made to fail: whatever NEW
holds came from OLD. The expectation of NEW's vectors is a full featurize of the same images under the same
three models (the pipeline a user would otherwise run), compared row by row.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from item.cli import app
from item.store import StoreReader

RUNNER = CliRunner()


def cli(*args):
    return RUNNER.invoke(app, [str(a) for a in args])


def _images(root: Path, generator: str, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for lab in ("0_real", "1_fake"):
        d = root / generator / lab
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (40 + 7 * i, 56, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def _wide_clip(folder: Path, embed_dim: int = 48) -> Path:
    """A local open_clip checkpoint of the tiny architecture at another width, random weights of its own."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from item.featurize.models.tiny import TINY_CLIP_CFG

    cfg = {**TINY_CLIP_CFG, "embed_dim": embed_dim}
    torch.manual_seed(5)
    model = open_clip.model.CLIP(**cfg)
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    pre = {"size": 32, "mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD),
           "interpolation": "bicubic", "resize_mode": "shortest"}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": pre}))
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("objects_from")
    data = _images(root / "data", "genA", 3, seed=1)
    wide = _wide_clip(root / "wide")
    old = root / "old"
    r = cli("featurize", data, "--store", old, "--models", "tiny-random", "--shard-size", "4")
    assert r.exit_code == 0, r.output
    # the expectation: the same images through the whole pipeline under the wide CLIP
    full = root / "full"
    r = cli("featurize", data, "--store", full, "--models", "tiny-random", "--pretrained", wide)
    assert r.exit_code == 0, r.output
    return {"root": root, "data": data, "wide": wide, "old": old, "full": full}


@pytest.fixture
def no_captioner_or_grounder(monkeypatch):
    """Loading a captioner or a grounder fails the test: a run with --objects-from must load neither."""
    import item.featurize.models.blip as blip
    import item.featurize.models.grounders as grounders

    def refuse(*a, **k):
        raise AssertionError("a captioner or grounder was loaded")

    monkeypatch.setattr(blip, "load_captioner", refuse)
    monkeypatch.setattr(grounders, "load_grounder", refuse)


def _by_id(store):
    with StoreReader(store) as r:
        meta = r.metadata(["id", "status", "reason", "caption", "caption_encoded", "caption_source", "nouns",
                           "label", "generator"])
        rows = np.arange(r.n_images)
        objs = r.objects(rows, columns=["image", "noun", "box", "score", "grounded"])
        vec = {c: r.read(c) for c in ("image_emb", "caption_emb", "misalignment")}
        out = {}
        for k, i in enumerate(meta["id"]):
            sel = objs["image"] == k
            out[str(i)] = {
                **{c: str(meta[c][k]) for c in meta if c != "id"},
                "objects": [(str(n), tuple(np.round(b, 4)), round(float(s), 5), bool(g))
                            for n, b, s, g in zip(objs["noun"][sel], objs["box"][sel], objs["score"][sel],
                                                  objs["grounded"][sel])],
                **{c: v[k] for c, v in vec.items()}}
        return out, dict(r.compat), dict(r.models), r.fingerprint, r.embed_dim


def test_objects_from_reuses_captions_nouns_boxes_and_loads_no_captioner_or_grounder(setup, tmp_path,
                                                                                    no_captioner_or_grounder):
    new = tmp_path / "new"
    r = cli("featurize", setup["data"], "--store", new, "--objects-from", setup["old"], "--models", "tiny-random",
            "--pretrained", setup["wide"])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0].startswith("RANDOM WEIGHTS")
    old_rows, old_compat, old_models, old_fp, old_dim = _by_id(setup["old"])
    new_rows, new_compat, new_models, _, new_dim = _by_id(new)
    assert (old_dim, new_dim) == (32, 48)
    assert set(new_rows) == set(old_rows) and len(new_rows) == 6
    grounded = 0
    for i, o in old_rows.items():
        n = new_rows[i]
        for c in ("status", "reason", "caption", "caption_encoded", "caption_source", "nouns", "label", "generator"):
            assert n[c] == o[c], (i, c)
        assert n["objects"] == o["objects"]
        grounded += sum(g for *_, g in o["objects"])
        assert n["image_emb"].shape == (48,)
    assert grounded > 0  # the tiny grounder grounded nouns: boxes were really carried over
    # the identity names OLD's object models and OLD itself
    for k in ("captioner", "grounder", "box_threshold", "text_threshold", "ground_input", "box_selection",
              "caption_decoding", "nouns_version", "max_objects", "perturbation"):
        assert new_compat[k] == old_compat[k], k
    assert new_models["objects_from"]["fingerprint"] == old_fp
    assert new_models["objects_from"]["store"] == str(setup["old"].resolve())
    assert new_models["captioner"] == old_models["captioner"] and new_models["grounder"] == old_models["grounder"]
    assert new_models["spec"]["captioner"] == "tiny-random" and new_models["spec"]["clip_pretrained"] == str(setup["wide"])
    with StoreReader(new) as reader:
        assert reader.manifest["runs"][-1]["objects_from"]["fingerprint"] == old_fp
        assert "caption" not in reader.manifest["runs"][-1]["stage_seconds"]
    shown = cli("store", "info", new)
    assert shown.exit_code == 0 and f"objects from     {setup['old'].resolve()}" in shown.output
    as_json = json.loads(cli("store", "info", new, "--json").stdout)
    assert as_json["objects_from"]["fingerprint"] == old_fp
    assert json.loads(cli("store", "info", setup["old"], "--json").stdout)["objects_from"] is None


def test_objects_from_equals_the_full_pipeline_under_the_same_models(setup, tmp_path, no_captioner_or_grounder):
    """Reusing OLD's objects gives what captioning and grounding again would give: the same rows, the same
    vectors (float16 storage: equal bits but for crops cut from the stored float32 box)."""
    new = tmp_path / "new"
    r = cli("featurize", setup["data"], "--store", new, "--objects-from", setup["old"], "--models", "tiny-random",
            "--pretrained", setup["wide"])
    assert r.exit_code == 0, r.output
    full_rows, full_compat, *_ = _by_id(setup["full"])
    new_rows, new_compat, *_ = _by_id(new)
    assert {k: v for k, v in new_compat.items() if full_compat.get(k) != v} == {}
    for i, f in full_rows.items():
        n = new_rows[i]
        assert n["caption"] == f["caption"] and n["objects"] == f["objects"]
        for c in ("image_emb", "caption_emb"):
            assert np.array_equal(n[c], f[c]), c
        assert np.abs(n["misalignment"] - f["misalignment"]).max() < 2e-3


def test_resume_and_growth_work_as_for_a_full_featurize(setup, tmp_path):
    root = tmp_path / "data"
    _images(root, "genA", 2, seed=1)
    old, new = tmp_path / "old", tmp_path / "new"
    assert cli("featurize", root, "--store", old, "--models", "tiny-random").exit_code == 0
    args = ["--objects-from", old, "--models", "tiny-random", "--pretrained", setup["wide"]]
    assert cli("featurize", root, "--store", new, *args).exit_code == 0
    again = cli("featurize", root, "--store", new, *args)
    assert again.exit_code == 0 and "4 already in the store" in again.output
    _images(root, "genB", 1, seed=9)  # OLD grows, and NEW follows it
    assert cli("featurize", root, "--store", old, "--models", "tiny-random").exit_code == 0
    grown = cli("featurize", root, "--store", new, *args)
    assert grown.exit_code == 0 and "2 images written" in grown.output, grown.output
    with StoreReader(new) as r:
        assert sorted(set(r.metadata(["generator"])["generator"].astype(str))) == ["genA", "genB"]


def test_a_changed_file_and_an_unknown_file_are_refused_by_name(tmp_path):
    root = tmp_path / "data"
    _images(root, "genA", 2, seed=1)
    old, new = tmp_path / "old", tmp_path / "new"
    assert cli("featurize", root, "--store", old, "--models", "tiny-random").exit_code == 0
    changed = root / "genA" / "1_fake" / "1.png"
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(changed)
    r = cli("featurize", root, "--store", new, "--objects-from", old, "--models", "tiny-random")
    assert r.exit_code == 1 and str(changed) in r.output and "changed since" in r.output, r.output
    assert "Traceback" not in r.output and not new.exists()
    extra = tmp_path / "extra"
    _images(extra, "genZ", 1, seed=4)
    r = cli("featurize", extra, "--store", new, "--objects-from", old, "--models", "tiny-random")
    assert r.exit_code == 1 and "not in the --objects-from store" in r.output and not new.exists()
    r = cli("featurize", root, "--store", new, "--objects-from", tmp_path / "nowhere", "--models", "tiny-random")
    assert r.exit_code == 1 and "no such store folder" in r.output and not new.exists()


def test_options_that_only_a_captioner_or_grounder_uses_are_refused(setup, tmp_path):
    new = tmp_path / "new"
    for extra in (["--captioner", "none"], ["--grounder", "owlv2-random"], ["--box-threshold", "0.2"],
                  ["--augment", "jpeg:75"]):
        r = cli("featurize", setup["data"], "--store", new, "--objects-from", setup["old"], "--models",
                "tiny-random", *extra)
        assert r.exit_code == 1 and extra[0] in r.output and len(r.output.strip().splitlines()) == 1, r.output
        assert not new.exists()
    r = cli("featurize", setup["data"], "--store", new, "--objects-from", setup["old"], "--models", "tiny-random",
            "--max-objects", "9")
    assert r.exit_code == 1 and "at most 8 nouns" in r.output and not new.exists()
    r = cli("featurize", setup["data"], "--store", new, "--objects-from", setup["old"], "--models", "tiny-random",
            "--perturb", "jpeg:50")
    assert r.exit_code == 1 and "perturbation" in r.output and not new.exists()
    r = cli("featurize", setup["data"], "--store", setup["old"], "--objects-from", setup["old"], "--models",
            "tiny-random")
    assert r.exit_code == 1 and "is the store being written" in r.output


def test_fewer_objects_keep_the_first_nouns_in_order(setup, tmp_path):
    new = tmp_path / "new"
    r = cli("featurize", setup["data"], "--store", new, "--objects-from", setup["old"], "--models", "tiny-random",
            "--max-objects", "1")
    assert r.exit_code == 0, r.output
    old_rows, *_ = _by_id(setup["old"])
    new_rows, new_compat, *_ = _by_id(new)
    assert new_compat["max_objects"] == 1
    for i, o in old_rows.items():
        assert new_rows[i]["objects"] == o["objects"][:1]
        assert json.loads(new_rows[i]["nouns"]) == json.loads(o["nouns"])[:1]


def test_a_head_trained_on_the_new_store_names_where_its_objects_came_from(setup, tmp_path):
    import item
    from item.outputs import RandomWeightsWarning

    new = tmp_path / "new"
    assert cli("featurize", setup["data"], "--store", new, "--objects-from", setup["old"], "--models",
               "tiny-random", "--pretrained", setup["wide"]).exit_code == 0
    with pytest.warns(RandomWeightsWarning):
        head = item.train_head(str(new), kind="logistic", train_split="all")
    head.save(tmp_path / "head")
    saved = json.loads((tmp_path / "head" / "head.json").read_text())
    blob = json.dumps(saved)
    with StoreReader(setup["old"]) as r:
        assert r.fingerprint in blob and "objects_from" in blob


@pytest.mark.slow
def test_the_ray_engine_reuses_objects_as_the_local_engine_does(setup, tmp_path):
    pytest.importorskip("ray", reason='the ray extra is not installed (pip install -e ".[ray]")')
    args = ["--objects-from", setup["old"], "--models", "tiny-random", "--pretrained", setup["wide"]]
    local, distributed = tmp_path / "local", tmp_path / "ray"
    assert cli("featurize", setup["data"], "--store", local, *args).exit_code == 0
    r = cli("featurize", setup["data"], "--store", distributed, *args, "--engine", "ray", "--ray-actors", "1")
    assert r.exit_code == 0, r.output
    a, ca, ma, *_ = _by_id(local)
    b, cb, mb, *_ = _by_id(distributed)
    assert ca == cb and ma["objects_from"]["fingerprint"] == mb["objects_from"]["fingerprint"]
    assert set(a) == set(b)
    for i in a:
        assert a[i]["caption"] == b[i]["caption"] and a[i]["objects"] == b[i]["objects"]
        assert np.array_equal(a[i]["image_emb"], b[i]["image_emb"])


def test_a_manifest_caption_other_than_olds_is_refused_by_name(tmp_path):
    """OLD's caption, nouns and boxes are reused: a manifest that gives another caption for an image would be
    dropped without a word (a full featurize would encode the given one), so it is refused, naming the file."""
    root = tmp_path / "data"
    root.mkdir()
    rng = np.random.default_rng(5)
    rows = ["path,label,caption"]
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 50 + i, 3), dtype=np.uint8)).save(root / f"{i}.png")
        rows.append(f"{i}.png,{'real' if i % 2 else 'fake'},a dog next to a red car")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    old, new = tmp_path / "old", tmp_path / "new"
    assert cli("featurize", root / "m.csv", "--store", old, "--models", "tiny-random").exit_code == 0
    with StoreReader(old) as r:
        held = dict(zip(r.metadata(["path"])["path"].astype(str), r.metadata(["caption"])["caption"].astype(str)))
    assert set(held.values()) == {"a dog next to a red car"}
    (root / "m2.csv").write_text("\n".join(rows[:2] + [rows[2].replace("a dog next to", "a cat on")] + rows[3:]) + "\n")
    r = cli("featurize", root / "m2.csv", "--store", new, "--objects-from", old, "--models", "tiny-random")
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (r.output, r.exception)
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and str(root / "1.png") in errors[0] and "'a cat on a red car'" in errors[0], r.output
    assert "'a dog next to a red car'" in errors[0] and not new.exists()
    # the captions OLD holds, given again, are OLD's: the run goes on
    assert cli("featurize", root / "m.csv", "--store", new, "--objects-from", old, "--models", "tiny-random").exit_code == 0
