"""issue 28: each backbone family's real loading path, against open_clip's own code path on the same files.

For PE-Core, SigLIP 2, MetaCLIP 2 (worldwide), MobileCLIP 2 and DFN, the test builds a Hugging Face hub cache
in the hub's layout (tests/fidelity_hub.py) holding seeded random weights under the repo that open_clip's
pretrained tag names, plus, where the model config names a Hugging Face tokenizer, tokenizer files of that
tokenizer's class with the real special ids (Gemma for SigLIP 2: <pad> 0, <eos> 1, <bos> 2, <unk> 3;
XLM-V for MetaCLIP 2: <s> 0, <pad> 1, </s> 2, <unk> 3). ``item featurize --clip NAME --pretrained TAG`` then
runs in a fresh process with HF_HOME pointing at the cache and HF_HUB_OFFLINE=1, exactly as a user's run
resolves a download: model name -> pretrained tag -> hub repo -> cache -> weights, tokenizer and
preprocessing from open_clip's configs.

The expectation is computed in another fresh process by open_clip's own calls on the same cache, which
import nothing from ITEM: ``open_clip.create_model_and_transforms(NAME, pretrained=TAG)`` (its transform is
the preprocessing the tag prescribes), ``open_clip.get_tokenizer(NAME)``, ``encode_image`` / ``encode_text``
and L2 normalisation (open_clip's ``normalize=True``), with the activation the tag declares passed as
open_clip's ``force_quick_gelu`` (open_clip alone builds the model config's activation and only warns when
the tag says otherwise: MetaCLIP 2's ``ViT-H-14-worldwide`` config is GELU, its weights QuickGELU). Captions are given in the manifest, so the captioned
text is known; each noun is encoded as "a photo of a {noun}." (DESIGN.md, the default noun prompt).

To keep the cache small, widths and depths of the text towers (and of the non-timm image towers) are
reduced in the model config that both processes register under the real name before anything loads;
everything a loader has to get right stays the family's own: the pretrained tag and its preprocessing
(mean/std, resize mode, interpolation, size), the tokenizer, its context length and special ids, the
activation (QuickGELU where the tag says so), the timm image towers. Random weights: nothing here is
detection accuracy.
"""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fidelity_hub import save_random_open_clip, snapshot_dir

# Each family builds a model of up to ~110M parameters and runs two processes: tens of seconds each.
pytestmark = pytest.mark.slow

#: (family, open_clip model name, pretrained tag)
FAMILIES = [
    ("pe-core", "PE-Core-T-16-384", "meta"),
    ("siglip2", "ViT-B-32-SigLIP2-256", "webli"),
    ("metaclip2", "ViT-H-14-worldwide", "metaclip2_worldwide"),
    ("mobileclip2", "MobileCLIP2-S0", "dfndr2b"),
    ("dfn", "ViT-H-14-quickgelu", "dfn5b"),
]
CAPTIONS = ["a red car next to a tree", "a dog sitting on a couch in the kitchen",
            "a man riding a horse on the beach under a cloudy sky with two birds flying over the sea "
            "and a boat far away near the rocks and the old lighthouse at the end of the long pier"]
WORDS = sorted({w for c in CAPTIONS for w in c.split()} | {"photo", "."})

#: Runs in each fresh process before anything else: the reduced config under the real model name.
PATCH = """
import json, sys
import open_clip.factory as factory
factory._MODEL_CONFIGS[{name!r}] = json.loads(open({cfg!r}).read())
"""

ITEM_DRIVER = PATCH + """
import runpy
sys.argv = ["item"] + json.loads(open({args!r}).read())
runpy.run_module("item", run_name="__main__")
"""

REFERENCE = PATCH + """
import numpy as np, torch, open_clip
from PIL import Image
# The weights' activation is the one their tag declares: open_clip builds the named config's and only warns
# when the two differ (ViT-H-14-worldwide's config is GELU, its metaclip2_worldwide weights QuickGELU), so the
# tag's quick_gelu is passed as open_clip's own force_quick_gelu switch.
quick = bool(open_clip.pretrained.get_pretrained_cfg({name!r}, {tag!r}).get("quick_gelu"))
model, _, transform = open_clip.create_model_and_transforms({name!r}, pretrained={tag!r}, force_quick_gelu=quick)
model.eval()
tokenizer = open_clip.get_tokenizer({name!r})
job = json.loads(open({job!r}).read())
with torch.inference_mode():
    pix = torch.stack([transform(Image.open(p).convert("RGB")) for p in job["images"]])
    img = model.encode_image(pix, normalize=True)
    cap = model.encode_text(tokenizer(job["captions"]), normalize=True)
    nouns = model.encode_text(tokenizer(["a photo of a " + n + "." for n in job["nouns"]]), normalize=True)
np.savez({out!r}, image=img.numpy(), caption=cap.numpy(), noun=nouns.numpy())
"""


def reduced_config(name: str) -> dict:
    """open_clip's config of ``name`` with a one-layer, 64-wide text tower (and a one-layer, 64-wide image
    tower where it is open_clip's own VisionTransformer rather than a timm model)."""
    import open_clip

    cfg = copy.deepcopy(open_clip.get_model_config(name))
    cfg["text_cfg"].update(layers=1, width=64, heads=2)
    if "timm_model_name" not in cfg["vision_cfg"]:
        cfg["vision_cfg"].update(layers=1, width=64, head_width=32)
        cfg["embed_dim"] = 64
    return cfg


def _gemma_tokenizer(snap: Path) -> None:
    """A GemmaTokenizer (SigLIP 2's class) with Gemma's special ids, single characters as its vocabulary
    (byte fallback for the rest), saved with a timm-style config.json as the repo holds."""
    from transformers import GemmaTokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for i in range(256):
        vocab[f"<0x{i:02X}>"] = len(vocab)
    for ch in "▁abcdefghijklmnopqrstuvwxyz.,":
        vocab.setdefault(ch, len(vocab))
    tok = GemmaTokenizer(vocab=vocab, merges=[], padding_side="right")
    tok.save_pretrained(snap)
    (snap / "config.json").write_text(json.dumps({"architecture": "siglip2", "num_classes": 0}))


def _xlmv_tokenizer(snap: Path) -> None:
    """An XLMRobertaTokenizer (MetaCLIP 2's XLM-V class) with XLM-R's special ids, a Unigram vocabulary of
    the captions' words and single letters, and the repo's config.json (XLM-V's vocabulary size)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import XLMRobertaConfig, XLMRobertaTokenizerFast

    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("▁" + w, -1.0) for w in WORDS] + [(c, -5.0) for c in "▁abcdefghijklmnopqrstuvwxyz."]
    pieces += [("<mask>", 0.0)]
    backend = Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok = XLMRobertaTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                  cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    tok.save_pretrained(snap)
    XLMRobertaConfig(vocab_size=901629).save_pretrained(snap)


def _hub_cache(tmp: Path, name: str, tag: str, cfg_file: Path) -> Path:
    """HF_HOME holding seeded random weights of the reduced ``name`` as ``tag``'s repo, and its tokenizer."""
    import open_clip
    import open_clip.factory as factory

    hf_home = tmp / "hf"
    repo = open_clip.pretrained.get_pretrained_cfg(name, tag)["hf_hub"].rstrip("/")
    saved = factory._MODEL_CONFIGS.get(name)
    factory._MODEL_CONFIGS[name] = json.loads(cfg_file.read_text())
    try:
        save_random_open_clip(hf_home, name, repo, seed=3)
    finally:
        factory._MODEL_CONFIGS[name] = saved
    hf_tok = json.loads(cfg_file.read_text())["text_cfg"].get("hf_tokenizer_name")
    if hf_tok:
        snap = snapshot_dir(hf_home, hf_tok)
        (_xlmv_tokenizer if "xlm" in hf_tok else _gemma_tokenizer)(snap)
    return hf_home


def _env(hf_home: Path) -> dict:
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for k in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE"):
        env.pop(k, None)
    return env


def _run(script: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("family,name,tag", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_stored_embeddings_are_open_clips_on_the_same_hub_files(tmp_path, family, name, tag):
    from item.store import StoreReader

    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps(reduced_config(name)))
    hf_home = _hub_cache(tmp_path, name, tag, cfg_file)
    env = _env(hf_home)
    rng = np.random.default_rng(8)
    data = tmp_path / "data"
    data.mkdir()
    rows = ["path,label,caption"]
    images = []
    for i, (size, caption) in enumerate(zip([(90, 50), (40, 120), (64, 64)], CAPTIONS)):
        p = data / f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(p)
        rows.append(f"{p.name},{'real' if i % 2 else 'fake'},{caption}")
        images.append(p)
    (data / "m.csv").write_text("\n".join(rows) + "\n")
    store = tmp_path / "store"
    args = tmp_path / "args.json"
    args.write_text(json.dumps(["featurize", str(data / "m.csv"), "--store", str(store), "--models", "tiny-random",
                                "--clip", name, "--pretrained", tag, "--workers", "0"]))
    res = _run(ITEM_DRIVER.format(name=name, cfg=str(cfg_file), args=str(args)), env)
    assert res.returncode == 0, res.stderr[-3000:]
    with StoreReader(store) as r:
        meta = r.metadata(["path", "caption", "caption_truncated"])
        order = [list(meta["path"].astype(str)).index(str(p.resolve())) for p in images]
        stored_img = r.read("image_emb", order)
        stored_cap = r.read("caption_emb", order)
        objs = r.objects(np.asarray(order), columns=["noun", "noun_emb"])
        compat = dict(r.compat)
    assert [str(meta["caption"][k]) for k in order] == CAPTIONS
    nouns = [str(n) for n in objs["noun"]]
    assert nouns, "the captions' nouns were stored"
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"images": [str(p) for p in images], "captions": CAPTIONS, "nouns": nouns}))
    out = tmp_path / "reference.npz"
    ref = _run(REFERENCE.format(name=name, tag=tag, cfg=str(cfg_file), job=str(job), out=str(out)), env)
    assert ref.returncode == 0, ref.stderr[-3000:]
    want = np.load(out)
    # float16 storage moves a unit vector's components by 2^-11 of their size (< 5e-4); another mean/std, resize,
    # tokenizer or activation moves them by more (GELU for QuickGELU on MetaCLIP 2: 2.2e-3 here; test_backbones.py
    # shows the preprocessing case)
    assert np.abs(stored_img - want["image"]).max() < 1e-3
    assert np.abs(stored_cap - want["caption"]).max() < 1e-3
    assert np.abs(objs["noun_emb"] - want["noun"]).max() < 1e-3
    assert compat["clip_model"] == name and compat["clip_pretrained"] == tag
    expected_act = "quick_gelu" if family in ("metaclip2", "dfn") else None
    if expected_act:
        assert compat["clip_activation"] == expected_act
