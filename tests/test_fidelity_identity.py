"""A store's identity: what decides its numbers is recorded, shown, and checked on resume and by heads.

Tiny random models throughout: the embeddings mean nothing; only what is recorded and refused is tested.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from item.cli import app
from item.featurize.inputs.discover import discover
from item.featurize.models.loading import compat_for, load_models, models_info
from item.featurize.models.presets import resolve_models
from item.featurize.run.config import FeaturizeConfig
from item.featurize.run.local import featurize_rows
from item.store import StoreReader, StoreWriter, validate
from item.store import schema
from item.store.synthetic import synthetic_compat, write_synthetic_store


def _manifest(folder: Path, n: int, seed: int = 0, captions=None) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        p = folder / f"im{seed}_{i}.png"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(p)
        rows.append([str(p), "real" if i % 2 else "fake", (captions or ["a dog on a red couch"])[i % len(captions or [1])]])
    m = folder / "manifest.csv"
    with open(m, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "caption"])
        w.writerows(rows)
    return m


def _featurize(manifest: Path, store: Path, *extra: str):
    return CliRunner().invoke(app, ["featurize", str(manifest), "--store", str(store), "--models", "tiny-random",
                                    "--captioner", "none", "--workers", "0", "--device", "cpu", *extra])


@pytest.fixture(scope="module")
def tiny():
    return load_models(resolve_models("tiny-random", captioner="none"), "cpu")


def test_store_info_shows_identity(tmp_path):
    store = tmp_path / "s"
    r = _featurize(_manifest(tmp_path / "in", 2), store)
    assert r.exit_code == 0, r.output
    info = json.loads(CliRunner().invoke(app, ["store", "info", str(store), "--json"]).stdout)
    ident = info["identity"]
    assert set(ident) == set(schema.IDENTITY_KEYS)
    assert ident["clip_activation"] == "gelu"  # the tiny config is GELU and random: nothing to take from a tag
    assert ident["crop_mode"] == "square-in-image-1"
    assert ident["nouns_version"] == "rules-3" and ident["noun_prompt"] == "photo"
    assert ident["caption_cleanup"] == "-"  # no captioner ran
    assert ident["device_class"] == "cpu" and ident["precision"] == "fp32"
    assert ident["box_threshold"] == 0.0 and json.loads(ident["ground_input"])  # the grounder's input size
    assert ident["open_clip_version"].count(".") == 1 and ident["transformers_version"].count(".") == 1
    text = CliRunner().invoke(app, ["store", "info", str(store)]).stdout
    assert "identity" in text and "device_class=cpu" in text and "precision=fp32" in text


def _store_made_on_cuda(root: Path, manifest: Path, tiny):
    """A store written through the public writer as a CUDA fp16 run records itself (no GPU here: the rows
    are computed on the CPU, the identity is the one such a run writes)."""
    config = FeaturizeConfig(workers=0, batch_size=4)
    compat = {**compat_for(tiny, config), "device_class": "cuda", "precision": "fp16-autocast"}
    with StoreWriter(root, compat=compat, models=models_info(tiny), recipe=config.recipe) as w:
        featurize_rows(discover([str(manifest)]).rows, w, tiny, config)


def test_resume_on_other_device_is_refused_with_one_line_and_allow_mixed_overrides(tmp_path):
    """Captions given, no grounding: only CLIP ran, and another device or precision differs at rounding level."""
    clip_only = load_models(resolve_models("tiny-random", captioner="none", grounder="none"), "cpu")
    store = tmp_path / "s"
    _store_made_on_cuda(store, _manifest(tmp_path / "a", 2, seed=1), clip_only)
    more = _manifest(tmp_path / "b", 2, seed=2)
    r = _featurize(more, store, "--grounder", "none")
    assert r.exit_code == 1
    lines = [ln for ln in r.output.strip().splitlines() if "refusing" in ln]
    assert len(lines) == 1, r.output
    assert "device_class: store has 'cuda', new rows have 'cpu'" in lines[0]
    assert "precision: store has 'fp16-autocast', new rows have 'fp32'" in lines[0]
    assert "--allow-mixed" in lines[0]
    with StoreReader(store) as rd:
        assert rd.n_images == 2  # nothing was written

    r = _featurize(more, store, "--grounder", "none", "--allow-mixed")
    assert r.exit_code == 0, r.output
    with StoreReader(store) as rd:
        assert rd.n_images == 4
        assert rd.compat["device_class"] == "cuda"  # the store keeps its identity; the run says what it was
        run = rd.manifest["runs"][-1]
    assert run["mixed_identity"]["device_class"] == {"store": "cuda", "run": "cpu"}


def test_allow_mixed_refuses_another_device_where_a_grounder_or_captioner_ran(tmp_path, tiny):
    """fp16 against fp32 can flip a caption token or a box past its threshold: not rounding, refused."""
    store = tmp_path / "s"
    _store_made_on_cuda(store, _manifest(tmp_path / "a", 2, seed=1), tiny)  # tiny grounds
    more = _manifest(tmp_path / "b", 2, seed=2)
    r = _featurize(more, store)
    assert r.exit_code == 1
    lines = [ln for ln in r.output.strip().splitlines() if "refusing" in ln]
    assert len(lines) == 1 and "--allow-mixed (rounding" not in lines[0], r.output
    assert "may differ only where no captioner or grounder ran" in lines[0]
    r = _featurize(more, store, "--allow-mixed")
    assert r.exit_code == 1
    lines = [ln for ln in r.output.strip().splitlines() if "error" in ln]
    assert len(lines) == 1, r.output
    assert "--allow-mixed refused: device_class is 'cuda' in the store and 'cpu' in this run" in lines[0]
    assert "captioner or grounder ran" in lines[0]
    with StoreReader(store) as rd:
        assert rd.n_images == 2  # nothing was written


def test_allow_mixed_never_mixes_what_changes_the_numbers(tmp_path):
    store = tmp_path / "s"
    assert _featurize(_manifest(tmp_path / "a", 2, seed=1), store).exit_code == 0
    r = _featurize(_manifest(tmp_path / "b", 2, seed=2), store, "--noun-prompt", "bare", "--allow-mixed")
    assert r.exit_code == 1
    assert "noun_prompt: store has 'photo', new rows have 'bare'" in r.output
    assert "--allow-mixed (rounding" not in r.output


def test_unknown_noun_prompt_lists_valid_ones(tmp_path):
    r = _featurize(_manifest(tmp_path / "a", 1), tmp_path / "s", "--noun-prompt", "fancy")
    assert r.exit_code == 1 and "photo" in r.output and "bare" in r.output


def test_head_from_another_device_is_refused_unless_allow_mixed(tmp_path):
    a = write_synthetic_store(tmp_path / "a", 120, 16, shard_size=64)
    head = tmp_path / "head"
    r = CliRunner().invoke(app, ["train", a, "--out", str(head), "--kind", "logistic", "--recipe", "visual"])
    assert r.exit_code == 0, r.output
    b = tmp_path / "b"
    compat = {**synthetic_compat(16, 8), "device_class": "cuda", "precision": "fp16-autocast"}
    from item.store.synthetic import synthetic_records

    with StoreWriter(b, compat=compat, models={"clip": {}}, recipe="hierarchical") as w:
        for rec in synthetic_records(120, 16):
            w.add(rec)
    r = CliRunner().invoke(app, ["eval", str(b), "--head", str(head)])
    assert r.exit_code == 1
    assert "device_class: head 'synthetic'" in r.output and "--allow-mixed" not in r.output
    # a captioner and a grounder ran for both (synthetic ones): another device is not rounding, even mixed
    r = CliRunner().invoke(app, ["eval", str(b), "--head", str(head), "--allow-mixed"])
    assert r.exit_code == 1 and "may differ only where no captioner or grounder ran" in r.output

    # global features only (captions given, no grounding): --allow-mixed applies it
    no_models = {"captioner": "none", "grounder": "none"}
    a2 = tmp_path / "a2"
    with StoreWriter(a2, compat={**synthetic_compat(16, 8), **no_models}, models={"clip": {}},
                     recipe="hierarchical") as w:
        for rec in synthetic_records(120, 16):
            w.add(rec)
    head2 = tmp_path / "head2"
    r = CliRunner().invoke(app, ["train", str(a2), "--out", str(head2), "--head", "logistic", "--recipe", "visual"])
    assert r.exit_code == 0, r.output
    b2 = tmp_path / "b2"
    with StoreWriter(b2, compat={**compat, **no_models}, models={"clip": {}}, recipe="hierarchical") as w:
        for rec in synthetic_records(120, 16):
            w.add(rec)
    r = CliRunner().invoke(app, ["eval", str(b2), "--head", str(head2)])
    assert r.exit_code == 1 and "--allow-mixed" in r.output
    r = CliRunner().invoke(app, ["eval", str(b2), "--head", str(head2), "--allow-mixed"])
    assert r.exit_code == 0, r.output

    c = tmp_path / "c"
    compat = {**synthetic_compat(16, 8), "clip_activation": "gelu"}
    with StoreWriter(c, compat=compat, models={"clip": {}}, recipe="hierarchical") as w:
        for rec in synthetic_records(120, 16):
            w.add(rec)
    r = CliRunner().invoke(app, ["eval", str(c), "--head", str(head), "--allow-mixed"])
    assert r.exit_code == 1 and "clip_activation" in r.output


def _as_schema_1(store: Path) -> None:
    """Rewrite a store as ITEM wrote schema 1: no identity keys, no caption_encoded column."""
    m = json.loads((store / schema.MANIFEST).read_text())
    m["schema_version"] = 1
    m["compat"] = {k: v for k, v in m["compat"].items() if k not in schema.IDENTITY_KEYS}
    schema_1_entry = ("name", "n_images", "n_ok", "n_skipped", "n_objects", "n_grounded", "n_aliases",
                      "skipped_by_reason")  # what a schema-1 manifest listed per shard (no sizes or checksums)
    m["shards"] = [{k: v for k, v in e.items() if k in schema_1_entry} for e in m["shards"]]
    (store / schema.MANIFEST).write_text(json.dumps(m))
    for shard in (store / schema.SHARD_DIR).glob("*.h5"):
        with h5py.File(shard, "a") as f:
            f.attrs[schema.A_SCHEMA] = 1
            f.attrs[schema.A_COMPAT] = json.dumps(m["compat"], sort_keys=True)
            del f[schema.G_IMAGES][schema.CAPTION_ENCODED]


def test_schema_1_store_stays_readable_and_is_refused_on_resume(tmp_path):
    store = tmp_path / "s"
    manifest = _manifest(tmp_path / "a", 2, seed=1, captions=["a cat on a mat", "a dog in a park"])
    assert _featurize(manifest, store).exit_code == 0
    _as_schema_1(store)
    with StoreReader(store) as r:
        meta = r.metadata([schema.CAPTION, schema.CAPTION_ENCODED])
        assert list(meta[schema.CAPTION_ENCODED]) == list(meta[schema.CAPTION])  # schema 1 encoded it as is
        assert r.compat["clip_activation"] == schema.UNRECORDED
    assert validate(store).ok, validate(store).problems
    info = json.loads(CliRunner().invoke(app, ["store", "info", str(store), "--json"]).stdout)
    assert info["identity"]["device_class"] == schema.UNRECORDED
    r = _featurize(_manifest(tmp_path / "b", 1, seed=3), store)
    assert r.exit_code == 1 and "clip_activation: store has 'unrecorded'" in r.output


def test_schema_2_store_reads_its_box_selection_as_unrecorded_and_is_refused_on_resume(tmp_path):
    """Schema 3 added the grounder's box selection rule to the identity (Grounding DINO's rule changed in
    issue 19): a schema-2 store stays readable and valid, and new rows, selected by another rule, are refused."""
    store = tmp_path / "s"
    assert _featurize(_manifest(tmp_path / "a", 2, seed=1), store).exit_code == 0
    with StoreReader(store) as r:
        assert r.compat["box_selection"] == "gdino-noun-mean-3"
    from item.store.shards import file_sha256

    m = json.loads((store / schema.MANIFEST).read_text())
    m["schema_version"] = 2
    m["compat"] = {k: v for k, v in m["compat"].items() if k != "box_selection"}
    for entry in m["shards"]:  # as ITEM wrote them under schema 2, with their own sizes and checksums
        shard = store / schema.SHARD_DIR / entry["name"]
        with h5py.File(shard, "a") as f:
            f.attrs[schema.A_SCHEMA] = 2
            f.attrs[schema.A_COMPAT] = json.dumps(m["compat"], sort_keys=True)
        entry.update(bytes=shard.stat().st_size, sha256=file_sha256(shard))
    (store / schema.MANIFEST).write_text(json.dumps(m))
    with StoreReader(store) as r:
        assert r.compat["box_selection"] == schema.UNRECORDED and r.n_images == 2
    assert validate(store).ok, validate(store).problems
    r = _featurize(_manifest(tmp_path / "b", 1, seed=3), store)
    assert r.exit_code == 1 and "box_selection: store has 'unrecorded'" in r.output


def test_a_store_grounded_by_the_rule_before_issue_29_is_refused_on_resume(tmp_path):
    """Issue 29 changed Grounding DINO's box selection (mean over a noun's tokens, the processor's own resize
    for every aspect ratio): a store that records 'gdino-all-tokens-1' stays readable and is not resumed."""
    store = tmp_path / "s"
    assert _featurize(_manifest(tmp_path / "a", 2, seed=1), store).exit_code == 0
    m = json.loads((store / schema.MANIFEST).read_text())
    m["compat"]["box_selection"] = "gdino-all-tokens-1"
    (store / schema.MANIFEST).write_text(json.dumps(m))
    with StoreReader(store) as r:
        assert r.compat["box_selection"] == "gdino-all-tokens-1" and len(r.select()) == 2
    r = _featurize(_manifest(tmp_path / "b", 1, seed=3), store)
    assert r.exit_code == 1 and "box_selection" in r.output and "gdino-noun-mean-3" in r.output
