"""Captions are decoded as BLIP's authors decode them by default (prompt "a picture of ", 3 beams, 5 to 20
tokens), greedily on request; the decoding is part of a store's identity.

Tiny random BLIP (RANDOM WEIGHTS): its captions mean nothing; what is tested is which tokens the decoding
picks, that the prompt never reaches the stored caption, and what is recorded and refused.
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
from item.store import StoreReader, schema, validate

PROMPT = "a picture of "


def _manifest(folder: Path, n: int, seed: int = 0, caption: str = "") -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    m = folder / "manifest.csv"
    with open(m, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "caption"])
        for i in range(n):
            p = folder / f"im{seed}_{i}.png"
            Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 56, 3), dtype=np.uint8)).save(p)
            w.writerow([str(p), "real" if i % 2 else "fake", caption])
    return m


def _featurize(manifest: Path, store: Path, *extra: str):
    return CliRunner().invoke(app, ["featurize", str(manifest), "--store", str(store), "--models", "tiny-random",
                                    "--grounder", "none", "--workers", "0", "--device", "cpu", *extra])


def _authors_caption(model, processor, image) -> str:
    """BLIP's authors' captioning (salesforce/BLIP models/blip.py BLIP_Decoder.generate, configs/caption_coco.yaml),
    written against the text decoder directly: the prompt tokenized, [CLS] replaced by the start token and the
    closing [SEP] dropped, beam search over the image embeddings, the prompt's characters cut from the text."""
    import torch

    cfg = model.config.text_config
    pixels = processor.image_processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        embeds = model.vision_model(pixel_values=pixels)[0]
        ids = processor.tokenizer([PROMPT], return_tensors="pt").input_ids
        ids[:, 0] = cfg.bos_token_id
        ids = ids[:, :-1]
        out = model.text_decoder.generate(
            input_ids=ids, max_length=20, min_length=5, num_beams=3, eos_token_id=cfg.sep_token_id,
            pad_token_id=cfg.pad_token_id, repetition_penalty=1.0, encoder_hidden_states=embeds,
            encoder_attention_mask=torch.ones(embeds.shape[:-1], dtype=torch.long))
    caption = processor.tokenizer.decode(out[0], skip_special_tokens=True)
    return " ".join(caption[len(PROMPT):].split())


@pytest.fixture(scope="module")
def captioner():
    from item.featurize.models.blip import load_captioner

    return load_captioner("tiny-random")


def _images(n: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (32 + 9 * i, 48, 3), dtype=np.uint8)) for i in range(n)]


def test_default_decoding_is_the_authors_beam_search_token_for_token(captioner):
    assert captioner.decoding == "authors"
    images = _images(4)
    ours = captioner.caption(images)
    theirs = [_authors_caption(captioner.model, captioner.processor, im) for im in images]
    assert ours == theirs
    assert ours == captioner.caption_prepared([captioner.prepare(im) for im in images], "authors")


def test_the_prompt_never_reaches_the_caption(captioner):
    images = _images(6, seed=5)
    full_texts = []
    for im in images:
        import torch

        ids = captioner.processor.tokenizer([PROMPT], return_tensors="pt").input_ids
        with torch.inference_mode():
            out = captioner.model.generate(pixel_values=captioner.prepare(im)[None], input_ids=ids, num_beams=3,
                                           max_length=20, min_length=5)
        full_texts.append(captioner.processor.batch_decode(out, skip_special_tokens=True)[0])
    assert all(t.startswith("a picture of") for t in full_texts)  # generate() returns the prompt too
    for caption in captioner.caption(images):
        assert not caption.startswith("a picture of") and caption == caption.strip() and caption


def test_greedy_differs_and_is_recorded_as_its_own_setting(captioner):
    images = _images(3)
    greedy = captioner.caption(images, "greedy")
    assert greedy != captioner.caption(images)
    assert captioner.info["decodings"]["greedy"]["num_beams"] == 1
    assert captioner.info["decodings"]["authors"] == {"prompt": PROMPT, "num_beams": 3, "do_sample": False,
                                                       "max_length": 20, "min_length": 5, "repetition_penalty": 1.0}


def test_store_records_the_decoding_and_its_captions_carry_no_prompt(tmp_path, captioner):
    store = tmp_path / "s"
    r = _featurize(_manifest(tmp_path / "in", 3), store)
    assert r.exit_code == 0, r.output
    info = json.loads(CliRunner().invoke(app, ["store", "info", str(store), "--json"]).stdout)
    assert info["identity"]["caption_decoding"] == "authors"
    text = CliRunner().invoke(app, ["store", "info", str(store)]).stdout
    assert "caption_decoding=authors" in text
    with StoreReader(store) as rd:
        meta = rd.metadata([schema.PATH, schema.CAPTION, schema.CAPTION_SOURCE])
    for path, caption in zip(meta[schema.PATH], meta[schema.CAPTION]):
        assert not str(caption).startswith("a picture of")
        assert str(caption) == _authors_caption(captioner.model, captioner.processor, Image.open(path))


def test_resume_under_another_decoding_is_refused(tmp_path):
    store = tmp_path / "s"
    assert _featurize(_manifest(tmp_path / "a", 2, seed=1), store, "--caption-decoding", "greedy").exit_code == 0
    r = _featurize(_manifest(tmp_path / "b", 2, seed=2), store)
    assert r.exit_code == 1
    assert "caption_decoding: store has 'greedy', new rows have 'authors'" in r.output
    r = _featurize(_manifest(tmp_path / "b", 2, seed=2), store, "--caption-decoding", "greedy")
    assert r.exit_code == 0, r.output


def test_unknown_decoding_lists_the_valid_ones(tmp_path):
    r = _featurize(_manifest(tmp_path / "a", 1), tmp_path / "s", "--caption-decoding", "nucleus")
    assert r.exit_code == 1 and "authors" in r.output and "greedy" in r.output
    assert not (tmp_path / "s").exists()  # refused before anything was made


def _as_schema_2(store: Path) -> None:
    """Rewrite a store as ITEM wrote schema 2: no caption_decoding in its identity."""
    import hashlib

    m = json.loads((store / schema.MANIFEST).read_text())
    m["schema_version"] = 2
    m["compat"].pop("caption_decoding")
    for entry in m["shards"]:
        shard = store / schema.SHARD_DIR / entry["name"]
        with h5py.File(shard, "a") as f:
            f.attrs[schema.A_SCHEMA] = 2
            f.attrs[schema.A_COMPAT] = json.dumps(m["compat"], sort_keys=True)
        entry["bytes"] = shard.stat().st_size  # as a schema-2 writer recorded the file it wrote
        entry["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()
    (store / schema.MANIFEST).write_text(json.dumps(m))


def test_schema_2_stores_read_as_the_old_greedy_decoding(tmp_path):
    captioned, given = tmp_path / "c", tmp_path / "g"
    assert _featurize(_manifest(tmp_path / "a", 2, seed=1), captioned, "--caption-decoding", "greedy").exit_code == 0
    r = _featurize(_manifest(tmp_path / "b", 2, seed=2, caption="a dog on a sofa"), given, "--captioner", "none")
    assert r.exit_code == 0, r.output
    for store, want in ((captioned, "greedy"), (given, "-")):
        _as_schema_2(store)
        with StoreReader(store) as rd:
            assert rd.compat["caption_decoding"] == want
        assert validate(store).ok, validate(store).problems
    # an old greedy store resumes under the greedy decoding, and refuses the authors' one
    more = _manifest(tmp_path / "m", 2, seed=4)
    assert _featurize(more, captioned).exit_code == 1
    r = _featurize(more, captioned, "--caption-decoding", "greedy")
    assert r.exit_code == 0, r.output
    with StoreReader(captioned) as rd:
        assert rd.n_images == 4 and rd.manifest["schema_version"] == schema.SCHEMA_VERSION
    assert validate(captioned).ok, validate(captioned).problems
