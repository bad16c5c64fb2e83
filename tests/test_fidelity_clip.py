"""Fidelity of CLIP: the stored embeddings are what the pretrained network really computes.

A hub-layout cache holds seeded random weights of the real ViT-B-32 under the repo open_clip names for
``pretrained='openai'``; ``item featurize`` runs in a fresh process with ``HF_HOME`` pointing at it and
``HF_HUB_OFFLINE=1`` (the code a user runs: hub id -> cache -> weights). Its stored embeddings are compared
with an independent reference built from the same file (open_clip's explicit ``ViT-B-32-quickgelu``
config, which the OpenAI weights were trained as) and with a GELU build, which must differ visibly.
All weights are random: the numbers mean nothing beyond this comparison.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from item.store import StoreReader
from item.store import schema
from tests.fidelity_hub import VIT_B_32_OPENAI_REPO, save_random_open_clip

CAPTIONS = ["a man riding a bike on the road", "two dogs playing in the snow next to a red car"]
#: float16 storage of unit vectors of width 512 moves them by about 2e-4 in L2 (measured); the reference
#: must sit within a few times that, the GELU build far outside it.
SAME = 1e-3
DIFFERENT = 4e-3


@pytest.fixture(scope="session")
def vit_b_32_hub(tmp_path_factory):
    """(HF_HOME, checkpoint file) of a hub cache holding random ViT-B-32 weights as 'openai'."""
    hf_home = tmp_path_factory.mktemp("hf-home")
    return hf_home, save_random_open_clip(hf_home, "ViT-B-32", VIT_B_32_OPENAI_REPO)


def _images(folder: Path) -> list[Path]:
    rng = np.random.default_rng(7)
    paths = []
    for i, size in enumerate([(80, 60), (40, 120)]):
        p = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def _featurize_in_new_process(hf_home: Path, manifest: Path, store: Path, *extra: str):
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    cmd = [sys.executable, "-m", "item", "featurize", str(manifest), "--store", str(store), "--clip", "ViT-B-32",
           "--pretrained", "openai", "--captioner", "none", "--grounder", "none", "--workers", "0", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _reference(model_name: str, checkpoint: Path, images: list[Path], texts: list[str]):
    """(image_emb, caption_emb) float32 L2-normalised, computed by open_clip alone from the same file."""
    import open_clip
    import torch

    model, _, transform = open_clip.create_model_and_transforms(model_name, pretrained=str(checkpoint))
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    with torch.inference_mode():
        pix = torch.stack([transform(Image.open(p).convert("RGB")) for p in images])
        img = torch.nn.functional.normalize(model.encode_image(pix), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(tokenizer(texts)), dim=-1)
    return img.numpy(), txt.numpy()


@pytest.mark.slow  # full-size ViT-B-32 in fresh processes
def test_openai_tag_from_hub_cache_stores_quickgelu_embeddings(vit_b_32_hub, tmp_path):
    hf_home, checkpoint = vit_b_32_hub
    images = _images(tmp_path)
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "caption"])
        for p, c in zip(images, CAPTIONS):
            w.writerow([str(p), "real", c])
    store = tmp_path / "store"

    res = _featurize_in_new_process(hf_home, manifest, store)
    assert res.returncode == 0, res.stderr[-2000:]

    with StoreReader(store) as r:
        meta = r.metadata([schema.PATH, schema.CAPTION])
        order = [list(meta[schema.PATH]).index(str(p)) for p in images]
        image_emb = r.read(schema.IMAGE_EMB, order)
        caption_emb = r.read(schema.CAPTION_EMB, order)
        compat, models = r.compat, r.models
    assert [meta[schema.CAPTION][i] for i in order] == CAPTIONS

    ref_img, ref_txt = _reference("ViT-B-32-quickgelu", checkpoint, images, CAPTIONS)
    gelu_img, gelu_txt = _reference("ViT-B-32", checkpoint, images, CAPTIONS)
    d_ref = max(np.linalg.norm(image_emb - ref_img, axis=1).max(), np.linalg.norm(caption_emb - ref_txt, axis=1).max())
    d_gelu = min(np.linalg.norm(image_emb - gelu_img, axis=1).min(),
                 np.linalg.norm(caption_emb - gelu_txt, axis=1).min())
    # the fixture makes the activation matter: the two references differ far beyond float16 rounding
    assert np.linalg.norm(ref_img - gelu_img, axis=1).min() > DIFFERENT
    assert d_ref < SAME, f"stored embeddings differ from the QuickGELU reference by {d_ref:.2e}"
    assert d_gelu > DIFFERENT, f"stored embeddings are within {d_gelu:.2e} of a GELU build"
    # and the store says so: the weights came from the hub cache under the tag, built with QuickGELU
    assert models["clip"]["weights"] == "tag:openai" and models["clip"]["hub"] == VIT_B_32_OPENAI_REPO
    assert len(models["clip"]["revision"]) == 40  # the cached snapshot's commit
    assert models["clip"]["activation"] == compat["clip_activation"] == "quick_gelu"


@pytest.mark.slow  # full-size small preset in a fresh process
def test_models_small_loads_every_part_from_the_hub_cache(vit_b_32_hub, tmp_path):
    """``--models small`` through the hub ids its preset names: CLIP the real ViT-B-32 architecture (random
    weights, as above); captioner and grounder the tiny random configs saved under the preset's repo ids
    (full-size BLIP base and Grounding DINO would take minutes on a CPU; their loading path is the same)."""
    from item.featurize.models import tiny
    from item.featurize.models.presets import PRESETS
    from tests.fidelity_hub import save_transformers

    hf_home, checkpoint = vit_b_32_hub
    small = PRESETS["small"]
    save_transformers(hf_home, small.captioner, *tiny.build_blip("tiny-random"))
    save_transformers(hf_home, small.grounder, *tiny.build_grounding_dino("tiny-random"))
    images = _images(tmp_path)
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows([[str(p), "fake"] for p in images])
    store = tmp_path / "store"
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, "-m", "item", "featurize", str(manifest), "--store", str(store),
                          "--models", "small", "--workers", "0"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    with StoreReader(store) as r:
        models = r.models
        meta = r.metadata([schema.PATH, schema.CAPTION_ENCODED])
        order = [list(meta[schema.PATH]).index(str(p)) for p in images]
        image_emb = r.read(schema.IMAGE_EMB, order)
        caption_emb = r.read(schema.CAPTION_EMB, order)
        texts = [meta[schema.CAPTION_ENCODED][i] for i in order]
        assert r.random_weights  # the captioner and grounder saved here are marked random
    assert models["clip"]["weights"] == "tag:openai" and models["clip"]["activation"] == "quick_gelu"
    for role, repo in (("captioner", small.captioner), ("grounder", small.grounder)):
        assert models[role]["id"] == repo and len(models[role].get("revision", "")) == 40, models[role]
    ref_img, ref_txt = _reference("ViT-B-32-quickgelu", checkpoint, images, texts)
    assert np.linalg.norm(image_emb - ref_img, axis=1).max() < SAME
    assert np.linalg.norm(caption_emb - ref_txt, axis=1).max() < SAME


def test_local_checkpoint_takes_the_activation_from_its_config(tmp_path):
    """A local checkpoint carries its activation in the open_clip_config.json beside it (as open_clip's hub
    repos do); without one, the model name decides (ViT-B-32-quickgelu for OpenAI weights in a bare file)."""
    import json
    import shutil

    from item.featurize.models import tiny
    from item.featurize.models.clip import load_clip, trained_activation

    paths = tiny.save_tiny_models(tmp_path / "m")
    ckpt = Path(paths["clip_pretrained"])
    gelu = load_clip(paths["clip_model"], str(ckpt))
    quick_dir = tmp_path / "quick"
    quick_dir.mkdir()
    shutil.copy(ckpt, quick_dir / ckpt.name)
    cfg = json.loads((ckpt.parent / "open_clip_config.json").read_text())
    cfg["model_cfg"]["quick_gelu"] = True
    (quick_dir / "open_clip_config.json").write_text(json.dumps(cfg))
    quick = load_clip(paths["clip_model"], str(quick_dir))
    assert gelu.info["activation"] == "gelu" and quick.info["activation"] == "quick_gelu"
    assert quick.info["activation_from"] == "open_clip_config.json beside the checkpoint"
    emb_g, _ = gelu.encode_texts(["a dog"])
    emb_q, _ = quick.encode_texts(["a dog"])
    assert np.abs(emb_g - emb_q).max() > 1e-4  # same weights, other activation, other numbers

    bare = tmp_path / "bare.safetensors"
    shutil.copy(ckpt, bare)
    assert trained_activation("ViT-B-32-quickgelu", str(bare), bare) == (True, "model config 'ViT-B-32-quickgelu'")
    assert trained_activation("ViT-B-32", str(bare), bare) == (False, "model config 'ViT-B-32'")
    assert trained_activation("ViT-L-14", "openai") == (True, "pretrained tag 'openai'")
    assert trained_activation("ViT-B-32", "laion2b_s34b_b79k") == (False, "pretrained tag 'laion2b_s34b_b79k'")


def test_open_clip_activation_mismatch_is_an_error(tmp_path, monkeypatch):
    """open_clip only warns when a tag's activation differs from the config it builds; here it is an error.

    open_clip's own table has such a pair (roberta-ViT-B-32 / laion2b_s12b_b32k) but its weights need a hub;
    the same situation is made here with the tiny config declared QuickGELU and a tag declared GELU, whose
    weights sit in a hub-layout cache."""
    import json

    import open_clip

    from item.errors import ModelLoadError
    from item.featurize.models import tiny
    from item.featurize.models.clip import load_clip
    from tests.fidelity_hub import snapshot_dir

    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "item-tiny-quickgelu.json").write_text(json.dumps({**tiny.TINY_CLIP_CFG, "quick_gelu": True}))
    open_clip.add_model_config(cfg_dir)
    from safetensors.torch import save_file

    net = open_clip.create_model("item-tiny-quickgelu", pretrained=None)
    hf_home = tmp_path / "hf"
    repo = "item-test/tiny-clip-gelu-tag"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              str(snapshot_dir(hf_home, repo) / "open_clip_model.safetensors"))
    tag_cfg = {"hf_hub": repo + "/", "quick_gelu": False}
    real = open_clip.pretrained.get_pretrained_cfg

    def with_tag(model, tag):
        return dict(tag_cfg) if (model, tag) == ("item-tiny-quickgelu", "gelutag") else real(model, tag)

    monkeypatch.setattr(open_clip.pretrained, "get_pretrained_cfg", with_tag)
    monkeypatch.setattr(open_clip.factory, "get_pretrained_cfg", with_tag)
    monkeypatch.setattr(open_clip.pretrained, "list_pretrained_tags_by_model",
                        lambda m: ["gelutag"] if m == "item-tiny-quickgelu" else [])
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    with pytest.raises(ModelLoadError) as err:
        load_clip("item-tiny-quickgelu", "gelutag")
    msg = str(err.value)
    assert "QuickGELU mismatch" in msg and "\n" not in msg


def test_bare_checkpoint_of_a_quickgelu_architecture_is_refused(tmp_path):
    """OpenAI's ViT-L-14 was trained with QuickGELU; open_clip builds the plain name with GELU. A local file
    with nothing beside it under the plain name is refused with the fix; the '-quickgelu' name or a config
    beside the file says which, and the check lets it through (the dummy file then fails to load)."""
    import json

    from item.errors import InputError, ModelLoadError
    from item.featurize.models.clip import load_clip

    bare = tmp_path / "bare" / "vit-l-14.safetensors"
    bare.parent.mkdir()
    bare.write_bytes(b"not weights")
    with pytest.raises(InputError) as e:
        load_clip("ViT-L-14", str(bare))
    msg = str(e.value)
    assert "\n" not in msg and "--clip ViT-L-14-quickgelu" in msg and "open_clip_config.json" in msg
    with pytest.raises(ModelLoadError):
        load_clip("ViT-L-14-quickgelu", str(bare))
    beside = tmp_path / "beside" / "vit-l-14.safetensors"
    beside.parent.mkdir()
    beside.write_bytes(b"not weights")
    import open_clip

    cfg = {"model_cfg": {**open_clip.get_model_config("ViT-L-14"), "quick_gelu": False}}
    (beside.parent / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError):
        load_clip("ViT-L-14", str(beside))
    # an architecture without OpenAI weights has nothing to confuse: not refused by this check
    with pytest.raises(ModelLoadError):
        load_clip("ViT-H-14", str(bare))


def test_bare_quickgelu_checkpoint_refused_through_the_cli(tmp_path):
    from typer.testing import CliRunner

    from item.cli import app

    bare = tmp_path / "vit-l-14.pt"
    bare.write_bytes(b"not weights")
    img = tmp_path / "in" / "a.png"
    img.parent.mkdir()
    Image.new("RGB", (32, 32)).save(img)
    r = CliRunner().invoke(app, ["featurize", str(img.parent), "--store", str(tmp_path / "s"), "--models",
                                 "tiny-random", "--clip", "ViT-L-14", "--pretrained", str(bare), "--workers", "0",
                                 "--device", "cpu"])
    assert r.exit_code == 1
    lines = [ln for ln in r.output.splitlines() if "ViT-L-14-quickgelu" in ln]
    assert len(lines) == 1 and "QuickGELU" in lines[0], r.output
