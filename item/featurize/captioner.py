"""Captioner: BLIP (transformers) run on every image, real and fake alike, when no caption is given.

BLIP-large's unconditional captions carry artefacts of its training text: a made-up leading word of the
"arafed" family ("arafed man in a suit", "araffe giraffe", "arafly dressed woman") and a "there is a ...
that is ..." frame ("there is a man that is riding a bike"). They say nothing about the image, but CLIP
encodes every word, so `clean_caption` strips them from the text CLIP encodes; the store keeps the raw
caption and the encoded one (columns ``caption`` and ``caption_encoded``). Captions given by the user are
encoded as given. ``CLEANUP_VERSION`` names the rules and is part of a store's identity.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from item.errors import InputError, ModelLoadError

#: Fixed generation settings, so captions are reproducible and recorded: greedy decoding, no sampling.
#: A config may lower max_new_tokens with an `item_max_new_tokens` attribute (the tiny model uses 12).
GENERATION = {"num_beams": 1, "do_sample": False, "max_new_tokens": 30}


#: Bump when `clean_caption` changes what it returns.
CLEANUP_VERSION = "blip-artefacts-1"

# "arafed", "araffe", "arafly", "araffed", "arrafed", "arav...": never English words.
_ARTEFACT = re.compile(r"^ar+a+f+[a-z]*$|^arav[a-z]*$")
# A caption opening with "there is/are", "there's", "this is", "these are": the frame goes, and with it the
# first relative "that is / who are / which is" that only carries the frame on ("that is riding" -> "riding").
_FRAME = re.compile(r"^(?:there\s+(?:is|are)|there's|this\s+is|these\s+are)\s+(?=\S)")
_RELATIVE = re.compile(r"\s(?:that|who|which)\s+(?:is|are)\s+")
_VOWEL = re.compile(r"^[aeiou]")


def clean_caption(caption: str) -> str:
    """The text CLIP encodes for a BLIP caption: artefact words and the "there is ... that is" frame removed.

    "arafed man in a suit and tie standing in front of a building" -> "man in a suit and tie standing in
    front of a building"; "there is a dog that is sitting on the couch" -> "a dog sitting on the couch".
    Whitespace is normalised; the article before a removed word is made to agree ("an arafed man" -> "a
    man"). A caption that would become empty is returned unchanged (normalised).
    """
    text = " ".join(str(caption).split())
    words = text.split(" ")
    kept: list[str] = []
    moved: set[int] = set()  # positions in `kept` of words that stood right before a removed word
    for w in words:
        if _ARTEFACT.match(w.lower().strip(",.;:!?'\"")):
            if kept:
                moved.add(len(kept) - 1)
            continue
        kept.append(w)
    # articles that stood before a removed word now stand before the next one: make them agree
    for i in sorted(moved):
        if i + 1 < len(kept) and kept[i].lower() in ("a", "an"):
            want = "an" if _VOWEL.match(kept[i + 1].lower()) else "a"
            kept[i] = want if kept[i].islower() else want.capitalize()
    out = " ".join(kept)
    framed = _FRAME.match(out.lower())
    if framed:
        out = out[framed.end():]
        out = _RELATIVE.sub(" ", out, count=1)
    out = " ".join(out.split())
    return out or text


def _weights_sha256(folder: Path) -> str | None:
    from item.featurize.encoder import file_sha256

    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return file_sha256(folder / name)
    return None


def hub_revision(repo: str, filename: str = "config.json") -> str | None:
    """The commit of ``repo`` whose ``filename`` the local Hugging Face cache holds (what was loaded), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(repo, filename)
    except Exception:  # an odd repo name or cache layout: the revision is simply not recorded
        return None
    if not isinstance(path, str):
        return None
    commit = Path(path).parent.name
    return commit if len(commit) == 40 and all(c in "0123456789abcdef" for c in commit) else None


def load_hf_pretrained(kind: str, name_or_path: str, model_cls, processor_cls, flag: str):
    """`model_cls.from_pretrained` + `processor_cls.from_pretrained` (HF cache or local folder).

    Returns (model, processor, source info dict). Raises ModelLoadError with one line naming the model,
    where it looked and what fixes it.
    """
    from item.featurize.encoder import hf_cache_dir, hub_offline

    local = Path(name_or_path).expanduser()
    # Hub ids are 'name' or 'org/name'; anything else that looks like a path is treated as one.
    looks_local = local.exists() or name_or_path.startswith((".", os.sep, "~")) or name_or_path.count("/") > 1
    if looks_local and not local.is_dir():
        raise ModelLoadError(
            f"{kind} {name_or_path!r}: no such folder; pass a folder written by save_pretrained with {flag}"
        )
    try:
        model = model_cls.from_pretrained(str(local) if looks_local else name_or_path)
        processor = processor_cls.from_pretrained(str(local) if looks_local else name_or_path)
    except Exception as e:  # OSError (missing files / offline), ValueError (wrong model type), ...
        if looks_local:
            reason = (str(e).splitlines() or [type(e).__name__])[0][:160]
            raise ModelLoadError(
                f"cannot load {kind} from {local} ({reason}); pass a folder written by save_pretrained with {flag}"
            ) from None
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "the download failed"
        raise ModelLoadError(
            f"cannot load {kind} {name_or_path!r}: not in the Hugging Face cache {hf_cache_dir()} and {why}; "
            f"allow network access, set HF_HOME to a cache that holds it, or pass a local folder with {flag}"
        ) from None
    source = {"id": str(local.resolve()) if looks_local else name_or_path}
    revision = getattr(model.config, "_commit_hash", None) or (None if looks_local else hub_revision(name_or_path))
    if revision:
        source["revision"] = revision
    if looks_local:
        sha = _weights_sha256(local)
        if sha:
            source["weights_sha256"] = sha
    return model.eval(), processor, source


def autocast_for(device: str):
    """fp16 autocast on CUDA, nothing on CPU."""
    import torch

    if str(device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


class CaptionPrep:
    """Picklable image preparation of the captioner (resize, normalise): PIL image -> (3, H, W) float32 tensor.

    Runs in the decode worker processes, so the main process only runs generate()."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, image):
        return self.image_processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"][0]


class Captioner:
    """BLIP image captioning, batched and deterministic.

    info: JSON-able: id, revision (hub commit) or weights_sha256 (local folder) where known,
    random_weights, generation (the fixed generate() settings).
    prepare: the picklable image preparation (`CaptionPrep`); `caption_prepared` takes its outputs.
    """

    def __init__(self, model, processor, info: dict, device: str, generation: dict):
        self.model = model
        self.processor = processor
        self.info = info
        self.device = device
        self.generation = dict(generation)
        self.prepare = CaptionPrep(processor.image_processor)

    def caption(self, images) -> list[str]:
        """PIL images -> one caption each (stripped; BLIP's tokenizer lower-cases). One generate() per call."""
        return self.caption_prepared([self.prepare(im) for im in images])

    def caption_prepared(self, pixels: list) -> list[str]:
        """`prepare` outputs -> one caption each. One generate() per call; a row's caption ends at its end
        token (generate pads finished rows and stops when every row has ended)."""
        import torch

        from item.featurize.grounder import to_device

        if not len(pixels):
            return []
        pixel_values = to_device(torch.stack(list(pixels)), self.device)
        with torch.inference_mode(), autocast_for(self.device):
            out = self.model.generate(pixel_values=pixel_values, **self.generation)
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]


def load_model_or_random(kind: str, name_or_path: str, builder, model_cls, processor_cls, flag: str, hint: str = ""):
    """(model, processor, source info, random_weights) for a random builder name or a real checkpoint.

    Shared by the captioner and the grounder: random names ('tiny-random', 'small-random',
    'default-random') call ``builder(name)``; anything else goes through ``load_hf_pretrained``.
    """
    from item.featurize import tiny

    if name_or_path in ("", "none"):
        raise InputError(f"{kind} is 'none': there is nothing to load{hint}")
    if name_or_path in tiny.RANDOM_NAMES:
        model, processor = builder(name_or_path)
        return model, processor, {"id": name_or_path, "seed": tiny.SEED}, True
    model, processor, source = load_hf_pretrained(kind, name_or_path, model_cls, processor_cls, flag)
    return model, processor, source, bool(getattr(model.config, "item_random_weights", False))


def load_captioner(name_or_path: str, device: str = "cpu") -> Captioner:
    """A BLIP captioner from a hub id, a local `save_pretrained` folder, or a random builder name.

    Random names ('tiny-random', 'small-random', 'default-random') build seeded random weights offline.
    Raises ModelLoadError (one line) when weights cannot be loaded; InputError for 'none'.
    """
    from transformers import BlipForConditionalGeneration, BlipProcessor

    from item.featurize import tiny

    model, processor, source, random_weights = load_model_or_random(
        "captioner", name_or_path, tiny.build_blip, BlipForConditionalGeneration, BlipProcessor, "--captioner",
        "; give captions in the manifest instead")
    generation = dict(GENERATION)
    generation["max_new_tokens"] = int(getattr(model.config, "item_max_new_tokens", generation["max_new_tokens"]))
    model.to(device)
    info = {**source, "class": type(model).__name__, "random_weights": random_weights, "generation": dict(generation)}
    return Captioner(model, processor, info, str(device), generation)
