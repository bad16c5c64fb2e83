"""Backbones: the named registry, `item backbones`, a local checkpoint's own preprocessing and
architecture, and a tokenizer that is not on this machine.

References are open_clip's own code paths (``create_model_and_transforms('local-dir:...')``,
``get_tokenizer``), run on the same files; all weights are random, so only agreement means anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from item.cli import app
from item.featurize.models.backbones import BACKBONES, describe, get_backbone

RUNNER = CliRunner()


def test_registry_names_real_open_clip_pairs():
    import open_clip

    for b in BACKBONES.values():
        assert b.clip_model in open_clip.list_models(), b
        assert b.pretrained in open_clip.list_pretrained_tags_by_model(b.clip_model), b
        d = describe(b)
        assert d["known_to_open_clip"] and d["embed_dim"] and d["licence"]
    # what a loader must get right differs between them, as open_clip's configs say
    assert describe(get_backbone("pe-core-l14"))["mean"] == [0.5, 0.5, 0.5]
    assert describe(get_backbone("pe-core-l14"))["resize_mode"] == "squash"
    assert describe(get_backbone("mobileclip2-s2"))["std"] == [1.0, 1.0, 1.0]
    assert describe(get_backbone("metaclip2-h14"))["activation"] == "quick_gelu"
    assert describe(get_backbone("metaclip2-h14"))["tokenizer"]["hub"] == "facebook/xlm-v-base"
    assert describe(get_backbone("siglip2-so400m14"))["tokenizer"]["kind"] == "hf"
    assert describe(get_backbone("openai-l14"))["activation"] == "quick_gelu"


def test_backbones_command_lists_every_backbone():
    r = RUNNER.invoke(app, ["backbones"])
    assert r.exit_code == 0, r.output
    for name in BACKBONES:
        assert name in r.stdout
    doc = json.loads(RUNNER.invoke(app, ["backbones", "--json"]).stdout)
    assert doc["default"] == "openai-l14" and [b["name"] for b in doc["backbones"]] == list(BACKBONES)


def test_backbone_sets_the_clip_model_and_tag():
    from item.errors import InputError
    from item.featurize import resolve_models

    spec = resolve_models("default", backbone="pe-core-l14")
    assert (spec.clip_model, spec.clip_pretrained) == ("PE-Core-L-14-336", "meta") and not spec.random_weights
    rand = resolve_models("default", backbone="siglip2-so400m14", pretrained="")
    assert rand.clip_model == "ViT-SO400M-14-SigLIP2" and rand.random_weights
    with pytest.raises(InputError, match="valid backbones: openai-l14"):
        resolve_models("default", backbone="nope")
    with pytest.raises(InputError, match="give one"):
        resolve_models("default", backbone="pe-core-l14", clip="ViT-B-32")


def _manifest(folder: Path) -> Path:
    rng = np.random.default_rng(3)
    rows = ["path,label,caption"]
    for i, size in enumerate([(90, 50), (40, 120), (64, 64)]):
        p = folder / f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(p)
        rows.append(f"{p.name},{'real' if i % 2 else 'fake'},a red car next to a tree")
    (folder / "m.csv").write_text("\n".join(rows) + "\n")
    return folder / "m.csv"


def _local_clip(tmp_path: Path, preprocess: dict, model_cfg_change: dict | None = None) -> tuple[str, Path]:
    """A tiny CLIP checkpoint folder whose open_clip_config.json carries ``preprocess`` (and, when given, a
    model_cfg that differs from the registered tiny one)."""
    from item.featurize.models import tiny

    paths = tiny.save_tiny_models(tmp_path / "m")
    folder = Path(paths["clip_pretrained"]).parent
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    cfg["preprocess_cfg"] = {**cfg["preprocess_cfg"], **preprocess}
    if model_cfg_change:
        cfg["model_cfg"] = {**cfg["model_cfg"], **model_cfg_change}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    return paths["clip_model"], folder


def _local_dir_reference(folder: Path, images: list[Path], texts: list[str]):
    """open_clip's own local-dir loading of the same folder: (image_emb, text_emb), L2-normalised."""
    import open_clip
    import torch

    model, _, transform = open_clip.create_model_and_transforms("local-dir:" + str(folder))
    model.eval()
    tok = open_clip.get_tokenizer("local-dir:" + str(folder))
    with torch.inference_mode():
        pix = torch.stack([transform(Image.open(p).convert("RGB")) for p in images])
        img = torch.nn.functional.normalize(model.encode_image(pix), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(tok(texts)), dim=-1)
    return img.numpy(), txt.numpy()


@pytest.mark.parametrize("preprocess,model_cfg_change", [
    ({"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize_mode": "squash", "interpolation": "bilinear"}, None),
    ({"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "resize_mode": "shortest", "interpolation": "bilinear"}, None),
    ({"resize_mode": "longest", "fill_color": 128, "size": 999}, None),  # 'size' is the model's, as open_clip has it
    ({"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}, {"quick_gelu": True}),  # the file's architecture too
])
def test_local_checkpoint_preprocessing_is_open_clips_local_dir(tmp_path, preprocess, model_cfg_change):
    from item.store import StoreReader

    model, folder = _local_clip(tmp_path, preprocess, model_cfg_change)
    data = tmp_path / "data"
    data.mkdir()
    manifest = _manifest(data)
    store = tmp_path / "store"
    r = RUNNER.invoke(app, ["featurize", str(manifest), "--store", str(store), "--clip", model, "--pretrained",
                            str(folder), "--captioner", "none", "--grounder", "none", "--workers", "0"])
    assert r.exit_code == 0, r.output
    with StoreReader(store) as reader:
        paths = [Path(p) for p in reader.metadata(["path"])["path"]]
        stored = reader.read("image_emb")
        caps = reader.read("caption_emb")
    want_img, want_txt = _local_dir_reference(folder, paths, ["a red car next to a tree"] * len(paths))
    # float16 storage moves unit vectors by ~1e-3 at most; another mean/std or resize moves them by far more
    assert np.abs(stored - want_img).max() < 2e-3
    assert np.abs(caps - want_txt).max() < 2e-3


def test_local_preprocessing_differs_from_openai_defaults(tmp_path):
    """The check above can fail: the same weights under OpenAI's preprocessing give other embeddings."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from item.featurize.models.clip import load_clip

    model, folder = _local_clip(tmp_path, {"mean": [0.5] * 3, "std": [0.5] * 3, "resize_mode": "squash"})
    enc = load_clip(model, str(folder))
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 90, 3), dtype=np.uint8))
    ours = enc.transform(img)
    openai = image_transform_v2(PreprocessCfg(size=enc.info["image_size"]), is_train=False)(img)
    assert enc.info["preprocess"]["mean"] == [0.5, 0.5, 0.5] and enc.info["preprocess"]["resize_mode"] == "squash"
    assert (ours - openai).abs().max() > 0.3


@pytest.mark.parametrize("args", [["--backbone", "siglip2-so400m14", "--pretrained", ""],
                                  ["--backbone", "metaclip2-h14"],
                                  ["--clip", "ViT-B-32-SigLIP2-256", "--pretrained", ""]])
def test_missing_hub_tokenizer_is_one_line(tmp_path, args):
    data = tmp_path / "data"
    data.mkdir()
    manifest = _manifest(data)
    store = tmp_path / "store"
    env = dict(os.environ, HF_HOME=str(tmp_path / "empty-hf"), HF_HUB_OFFLINE="1")
    for k in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        env.pop(k, None)
    r = subprocess.run([sys.executable, "-m", "item", "featurize", str(manifest), "--store", str(store), *args,
                        "--captioner", "none", "--grounder", "none", "--workers", "0"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "tokenizer" in errors[0] and "hf download" in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not store.exists()  # nothing was written, so no store folder is left behind


def _ten_images(data: Path, seed: int) -> Path:
    """Ten random PNGs of slightly different heights and a manifest m.csv (relative paths, labels alternate)."""
    data.mkdir()
    rng = np.random.default_rng(seed)
    rows = ["path,label,caption"]
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(data / f"im{i}.png")
        rows.append(f"im{i}.png,{'real' if i % 2 else 'fake'},a red car next to a tree")
    (data / "m.csv").write_text("\n".join(rows) + "\n")
    return data


def test_a_head_over_a_store_made_from_a_relative_checkpoint_folder_predicts_from_anywhere(tmp_path, monkeypatch):
    """`--pretrained FOLDER` (given relative) is recorded absolute, and the head predicts from another folder
    with `--model-path FOLDER`: the store records the checkpoint file the folder holds, the spec the folder."""
    model, folder = _local_clip(tmp_path, {"mean": [0.5] * 3, "std": [0.5] * 3})
    data = _ten_images(tmp_path / "data", seed=1)
    monkeypatch.chdir(folder.parent)
    r = RUNNER.invoke(app, ["featurize", str(data / "m.csv"), "--store", str(tmp_path / "store"), "--clip", model,
                            "--pretrained", folder.name, "--captioner", "none", "--grounder", "none", "--workers", "0"])
    assert r.exit_code == 0, r.output
    from item.store import StoreReader

    with StoreReader(tmp_path / "store") as reader:
        assert reader.models["spec"]["clip_pretrained"] == str(folder)
        assert Path(reader.compat["clip_pretrained"]).parent == folder
    monkeypatch.chdir(data)
    r = RUNNER.invoke(app, ["train", str(tmp_path / "store"), "--out", str(tmp_path / "head"), "--kind", "logistic",
                            "--train-split", "all"])
    assert r.exit_code == 0, r.output
    r = RUNNER.invoke(app, ["predict", "m.csv", "--head", str(tmp_path / "head"), "--model-path", str(folder),
                            "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["rows"]
    assert len(rows) == 10 and all(row["status"] == "ok" for row in rows)
    # without --model-path the head's local checkpoint is refused, by name
    r = RUNNER.invoke(app, ["predict", "m.csv", "--head", str(tmp_path / "head")])
    assert r.exit_code != 0 and "--model-path" in r.output


def _featurize_local(tmp_path: Path, model: str, folder: Path, store: Path):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    manifest = _manifest(data)
    return RUNNER.invoke(app, ["featurize", str(manifest), "--store", str(store), "--clip", model, "--pretrained",
                               str(folder), "--captioner", "none", "--grounder", "none", "--workers", "0"])


@pytest.mark.parametrize("name", ["my-siglip-finetune", "ViT-B-16-SigLIP"])
def test_a_local_checkpoint_under_a_siglip_name_tokenizes_as_local_dir(tmp_path, name):
    """The folder's open_clip_config.json names no Hugging Face tokenizer, so open_clip's local-dir: loading
    tokenizes with its BPE; a --clip name holding 'siglip' must not switch to SigLIP's tokenizer (by name,
    open_clip.get_tokenizer would: a vocabulary download offline, other token ids online)."""
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer

    from item.store import StoreReader

    _, folder = _local_clip(tmp_path, {"mean": [0.5] * 3, "std": [0.5] * 3, "resize_mode": "squash"})
    assert isinstance(open_clip.get_tokenizer("local-dir:" + str(folder)), SimpleTokenizer)
    store = tmp_path / "store"
    r = _featurize_local(tmp_path, name, folder, store)
    assert r.exit_code == 0, (r.output, r.exception)
    with StoreReader(store) as reader:
        paths = [Path(p) for p in reader.metadata(["path"])["path"]]
        stored_img, stored_txt = reader.read("image_emb"), reader.read("caption_emb")
    want_img, want_txt = _local_dir_reference(folder, paths, ["a red car next to a tree"] * len(paths))
    assert np.abs(stored_img - want_img).max() < 2e-3
    assert np.abs(stored_txt - want_txt).max() < 2e-3


@pytest.mark.parametrize("preprocess,key", [
    ({"interpolation": "nearest"}, "interpolation"),
    ({"resize_mode": "crop"}, "resize_mode"),
    ({"mode": "L"}, "mode"),
    ({"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5]}, "std"),
])
def test_a_preprocess_value_open_clip_cannot_build_is_one_line_naming_it(tmp_path, preprocess, key):
    """open_clip's own local-dir: loading of the folder cannot preprocess an image with these values (it
    asserts, or torchvision raises on the first image); ITEM stops in one line naming the file and the key,
    before any weight is read and before the store folder exists."""
    import open_clip

    _, folder = _local_clip(tmp_path, preprocess)
    with pytest.raises(Exception):
        _, _, transform = open_clip.create_model_and_transforms("local-dir:" + str(folder))
        transform(Image.new("RGB", (20, 10)))
    store = tmp_path / "store"
    r = _featurize_local(tmp_path, "my-local-clip", folder, store)
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (r.output, r.exception)
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "open_clip_config.json" in errors[0] and f"preprocess_cfg {key} " in errors[0], r.output
    assert "Traceback" not in r.output and not store.exists()


def test_a_missing_local_hf_tokenizer_names_its_hub_id(tmp_path):
    """A folder whose config names a Hugging Face tokenizer but holds no tokenizer files: open_clip's local-dir:
    reads the tokenizer from the folder only, and fails; ITEM says so in one line naming the hub id."""
    import open_clip

    _, folder = _local_clip(tmp_path, {}, {"text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32,
                                                        "heads": 2, "layers": 1,
                                                        "hf_tokenizer_name": "nobody/not-cached-tokenizer"}})
    with pytest.raises(Exception):
        open_clip.get_tokenizer("local-dir:" + str(folder))
    r = _featurize_local(tmp_path, "my-local-clip", folder, tmp_path / "store")
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (r.output, r.exception)
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "'nobody/not-cached-tokenizer'" in errors[0] and str(folder) in errors[0], r.output


@pytest.mark.parametrize("args", [["--clip", "local-dir:{folder}"], ["--clip", "x", "--pretrained", "local-dir:{folder}"],
                                  ["--clip", "hf-hub:timm/ViT-B-16-SigLIP"]])
def test_open_clip_schema_names_are_one_line_naming_the_flags_to_use(tmp_path, args):
    _, folder = _local_clip(tmp_path, {})
    data = tmp_path / "data"
    data.mkdir()
    r = RUNNER.invoke(app, ["featurize", str(_manifest(data)), "--store", str(tmp_path / "store"),
                            *[a.format(folder=folder) for a in args], "--captioner", "none", "--grounder", "none",
                            "--workers", "0"])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (r.output, r.exception)
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "--pretrained" in errors[0] and "--clip" in errors[0], r.output


def test_a_head_over_a_checkpoint_whose_config_names_its_own_model_predicts(tmp_path):
    """--clip NAME that only the folder's open_clip_config.json defines (open_clip.list_models() does not know
    it): `item predict --model-path FOLDER` loads it as featurize did, and without --model-path the
    refusal names the flag (not 'unknown CLIP model')."""
    _, folder = _local_clip(tmp_path, {"mean": [0.5] * 3, "std": [0.5] * 3, "resize_mode": "squash"})
    data = _ten_images(tmp_path / "data", seed=2)
    store, head = tmp_path / "store", tmp_path / "head"
    r = RUNNER.invoke(app, ["featurize", str(data / "m.csv"), "--store", str(store), "--clip", "only-in-its-config",
                            "--pretrained", str(folder), "--captioner", "none", "--grounder", "none", "--workers", "0"])
    assert r.exit_code == 0, (r.output, r.exception)
    r = RUNNER.invoke(app, ["train", str(store), "--out", str(head), "--kind", "logistic", "--train-split", "all"])
    assert r.exit_code == 0, (r.output, r.exception)
    # a fresh process, as a user's: this one registered the folder's config under the name while featurizing
    predict = [sys.executable, "-m", "item", "predict", str(data / "m.csv"), "--head", str(head)]
    r = subprocess.run([*predict, "--model-path", str(folder), "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert [row["status"] for row in json.loads(r.stdout)["rows"]] == ["ok"] * 10
    r = subprocess.run(predict, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "--model-path" in r.stderr and "unknown CLIP model" not in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("backbone", ["pe-core-b16", "mobileclip2-s0"])
def test_missing_hub_weights_are_one_line_naming_the_repo(tmp_path, backbone):
    """Weights of a registered backbone that are not in the cache: one line naming the hub repo open_clip's
    pretrained config downloads them from, and how to fetch it."""
    import open_clip

    b = get_backbone(backbone)
    repo = open_clip.pretrained.get_pretrained_cfg(b.clip_model, b.pretrained)["hf_hub"].strip("/")
    data = tmp_path / "data"
    data.mkdir()
    env = dict(os.environ, HF_HOME=str(tmp_path / "empty-hf"), HF_HUB_OFFLINE="1")
    for k in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        env.pop(k, None)
    r = subprocess.run([sys.executable, "-m", "item", "featurize", str(_manifest(data)), "--store",
                        str(tmp_path / "store"), "--backbone", backbone, "--captioner", "none", "--grounder", "none",
                        "--workers", "0"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and f"hf download {repo}`" in errors[0], r.stderr


@pytest.mark.parametrize("files", [["open_clip_pytorch_model.pth"], ["model.safetensors", "open_clip_pytorch_model.pth"]])
def test_a_checkpoint_folder_reads_the_file_open_clips_local_dir_reads(tmp_path, files):
    """A folder holding open_clip_pytorch_model.pth (a name open_clip's local-dir: loads) was refused as holding
    no checkpoint; with several files, the one local-dir: picks is the one loaded (the others hold other
    weights here, so a wrong pick shows in the embeddings)."""
    import torch
    from safetensors.torch import load_file, save_file

    from item.store import StoreReader

    _, folder = _local_clip(tmp_path, {"mean": [0.5] * 3, "std": [0.5] * 3, "resize_mode": "squash"})
    src = next(folder.glob("*.safetensors"))
    state = load_file(str(src))
    src.unlink()
    for k, name in enumerate(files):
        weights = {key: v + 0.05 * k for key, v in state.items()}  # each file its own weights
        if name.endswith(".safetensors"):
            save_file(weights, str(folder / name))
        else:
            torch.save(weights, folder / name)
    store = tmp_path / "store"
    r = _featurize_local(tmp_path, "my-local-clip", folder, store)
    assert r.exit_code == 0, (r.output, r.exception)
    with StoreReader(store) as reader:
        paths = [Path(p) for p in reader.metadata(["path"])["path"]]
        stored = reader.read("image_emb")
    want, _ = _local_dir_reference(folder, paths, ["a red car"])
    assert np.abs(stored - want).max() < 2e-3


def test_a_backbone_over_a_bare_local_checkpoint_is_refused_when_its_preprocessing_would_be_lost(tmp_path):
    """`--backbone pe-core-b16 --pretrained FILE` with no open_clip_config.json beside FILE: open_clip builds a
    bare file with its default preprocessing (OpenAI mean/std, shortest side), not PE-Core's; refused in one
    line naming what the backbone's tag uses. With a config beside the file, that config decides (no refusal)."""
    import open_clip
    from open_clip.transform import PreprocessCfg

    tag = open_clip.pretrained.get_pretrained_cfg("PE-Core-B-16", "meta")
    assert tuple(tag["mean"]) != tuple(PreprocessCfg().mean) and tag["resize_mode"] != PreprocessCfg().resize_mode
    data = tmp_path / "data"
    data.mkdir()
    manifest = _manifest(data)
    bare = tmp_path / "bare" / "weights.safetensors"
    bare.parent.mkdir()
    bare.write_bytes(b"not used")
    args = ["featurize", str(manifest), "--store", str(tmp_path / "store"), "--backbone", "pe-core-b16",
            "--pretrained", str(bare), "--captioner", "none", "--grounder", "none", "--workers", "0"]
    r = RUNNER.invoke(app, args)
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (r.output, r.exception)
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "open_clip_config.json" in errors[0], r.output
    assert f"resize_mode {tag['resize_mode']}" in errors[0] and f"mean {list(tag['mean'])}" in errors[0], r.output
    assert not (tmp_path / "store").exists()
    from item.featurize.models import tiny

    (bare.parent / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny.TINY_CLIP_CFG}))
    r = RUNNER.invoke(app, args)  # the file is no checkpoint: loading fails, but not for want of a config
    assert r.exit_code == 1 and "preprocessed" not in r.output and "cannot load CLIP" in r.output, r.output
