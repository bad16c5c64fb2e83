"""Backbones: the image-text spaces ITEM can measure misalignment in, each picked by one name.

A backbone is an open_clip model name and pretrained tag. What a loader must get right for it (mean and
std, resize mode and interpolation, input size, tokenizer and context length, QuickGELU or GELU) is not
written here a second time: :func:`describe` reads it from open_clip's own pretrained and model configs,
which are what ``open_clip.create_model_and_transforms`` / ``get_tokenizer`` use, and the loader
(``clip.load_clip``) builds every backbone through those same calls. What open_clip does not know is
recorded here: the family, the licence of the weights (from the model card; check it before you ship a
product), and what each is for.

Any other open_clip name + tag keeps working through ``--clip`` / ``--pretrained``; ``--backbone`` is a
short name for a known pair. This module imports nothing heavy at import time (``item backbones`` and
``--help`` stay instant).
"""

from __future__ import annotations

from dataclasses import dataclass

from item.errors import InputError


@dataclass(frozen=True)
class Backbone:
    """One named image-text backbone.

    name: what the user types (``--backbone pe-core-l14``).
    clip_model / pretrained: the open_clip model name and pretrained tag.
    family: the model family, for tables.
    licence: the weights' licence as the model card gives it.
    note: one line on what it is for.
    """

    name: str
    clip_model: str
    pretrained: str
    family: str
    licence: str
    note: str


BACKBONES: dict[str, Backbone] = {b.name: b for b in (
    Backbone("openai-l14", "ViT-L-14", "openai", "OpenAI CLIP", "MIT",
             "ITEM's default (the paper's space)"),
    Backbone("openai-b32", "ViT-B-32", "openai", "OpenAI CLIP", "MIT",
             "the small and fast presets' CLIP"),
    Backbone("pe-core-l14", "PE-Core-L-14-336", "meta", "Perception Encoder (PE-Core)", "Apache-2.0",
             "2025 in-the-wild linear-probe baseline (arXiv 2509.12995)"),
    Backbone("pe-core-b16", "PE-Core-B-16", "meta", "Perception Encoder (PE-Core)", "Apache-2.0",
             "a smaller PE-Core"),
    Backbone("metaclip2-h14", "ViT-H-14-worldwide", "metaclip2_worldwide", "MetaCLIP 2 (worldwide)",
             "CC-BY-NC-4.0", "multilingual (XLM-V tokenizer), QuickGELU"),
    Backbone("siglip2-so400m14", "ViT-SO400M-14-SigLIP2", "webli", "SigLIP 2", "Apache-2.0",
             "sigmoid-loss image-text model (Gemma tokenizer from the hub)"),
    Backbone("siglip2-l16-384", "ViT-L-16-SigLIP2-384", "webli", "SigLIP 2", "Apache-2.0",
             "SigLIP 2 at 384 px"),
    Backbone("dfn5b-h14", "ViT-H-14-quickgelu", "dfn5b", "DFN", "apple-sample-code-license",
             "data-filtering-network CLIP, QuickGELU"),
    Backbone("mobileclip2-s2", "MobileCLIP2-S2", "dfndr2b", "MobileCLIP2", "apple-amlr",
             "fast: for CPUs and large sets"),
    Backbone("mobileclip2-s0", "MobileCLIP2-S0", "dfndr2b", "MobileCLIP2", "apple-amlr",
             "fastest MobileCLIP2"),
)}

DEFAULT_BACKBONE = "openai-l14"


def get_backbone(name: str) -> Backbone:
    """The backbone called ``name``; an unknown name is an InputError listing the valid ones."""
    if name not in BACKBONES:
        raise InputError(f"unknown backbone {name!r}; valid backbones: {', '.join(BACKBONES)} "
                         "(`item backbones` lists them; any other open_clip model works with --clip and --pretrained)")
    return BACKBONES[name]


def backbone_of(clip_model: str, pretrained: str) -> str | None:
    """The registry name of an open_clip (model, tag) pair, or None when it has none."""
    for b in BACKBONES.values():
        if (b.clip_model, b.pretrained) == (clip_model, pretrained):
            return b.name
    return None


def tokenizer_source(clip_model: str) -> dict:
    """How open_clip tokenizes for ``clip_model``, read from its model config as ``get_tokenizer`` does:
    {'kind': 'hf', 'hub': repo} for a Hugging Face tokenizer (fetched from the hub into its cache),
    {'kind': 'siglip', 'vocab': url} for open_clip's SigLIP vocab download, or {'kind': 'clip-bpe'} for the
    BPE vocabulary open_clip ships; plus 'context_length'."""
    import open_clip
    from open_clip.tokenizer import SigLipTokenizer

    text = (open_clip.get_model_config(clip_model) or {}).get("text_cfg", {})
    out = {"context_length": int(text.get("context_length", 77))}
    if text.get("hf_tokenizer_name"):
        return {"kind": "hf", "hub": text["hf_tokenizer_name"], **out}
    if "siglip" in clip_model.lower():
        variant = "gemma" if "siglip2" in clip_model.lower() else "mc4" if "i18n" in clip_model.lower() else "c4-en"
        return {"kind": "siglip", "vocab": SigLipTokenizer.VOCAB_FILES[variant], **out}
    return {"kind": "clip-bpe", **out}


def describe(b: Backbone) -> dict:
    """What open_clip's configs say about ``b`` (nothing is loaded): embed_dim, image size, mean, std,
    resize mode, interpolation, activation, tokenizer and context length, hub repo of the weights."""
    import open_clip

    model_cfg = open_clip.get_model_config(b.clip_model) or {}
    tag = open_clip.pretrained.get_pretrained_cfg(b.clip_model, b.pretrained) or {}
    vision = model_cfg.get("vision_cfg", {})
    return {
        "name": b.name, "clip_model": b.clip_model, "pretrained": b.pretrained, "family": b.family,
        "licence": b.licence, "note": b.note,
        "embed_dim": model_cfg.get("embed_dim"),
        "image_size": vision.get("image_size"),
        "mean": list(tag.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        "std": list(tag.get("std", (0.26862954, 0.26130258, 0.27577711))),
        "resize_mode": tag.get("resize_mode", "shortest"),
        "interpolation": tag.get("interpolation", "bicubic"),
        "activation": "quick_gelu" if tag.get("quick_gelu") or model_cfg.get("quick_gelu") else "gelu",
        "tokenizer": tokenizer_source(b.clip_model),
        "weights_hub": (tag.get("hf_hub") or "").strip("/") or None,
        "known_to_open_clip": bool(model_cfg) and bool(tag),
    }
