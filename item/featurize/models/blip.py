"""Captioner: BLIP (transformers) run on every image, real and fake alike, when no caption is given.

What CLIP encodes of a caption (BLIP's artefacts stripped) is item.featurize.text.captions.

How captions are decoded is a named setting (``CAPTION_DECODINGS``), recorded in a store's identity (compat
key ``caption_decoding``):

- ``authors`` (the default) decodes as BLIP's authors caption: the text prompt "a picture of " after the
  decoder's start token, beam search with 3 beams, 5 to 20 tokens counting the prompt's, no repetition
  penalty, and the prompt cut from the text. Sources (github.com/salesforce/BLIP at commit
  056a169437371659074aa2732649d5de3bffb4a8): configs/caption_coco.yaml and configs/nocaps.yaml
  (``prompt: 'a picture of '``, ``num_beams: 3``, ``max_length: 20``, ``min_length: 5``);
  models/blip.py ``BLIP_Decoder.generate`` (the prompt tokenized, its first token replaced by the start
  token and its closing [SEP] dropped; beam search with ``repetition_penalty=1.0``; the prompt's
  characters cut from the decoded text); predict.py and demo.ipynb (``generate(image, sample=False,
  num_beams=3, max_length=20, min_length=5)``). transformers' ``BlipForConditionalGeneration.generate``
  takes the prompt as ``input_ids`` and does the same to them (start token in front, last token dropped);
  its ``max_length`` / ``min_length`` count the prompt's tokens, as the authors' do.
- ``greedy``: ITEM's decoding before caption_decoding existed (stores of schema 2 and older read as it):
  greedy, no prompt, at most 30 new tokens (a config's ``item_max_new_tokens`` lowers it: the tiny random
  model uses 12). Its cost against the beam search depends on where captions end: BENCHMARKS.md section 8.
"""

from __future__ import annotations

from item.errors import InputError
from item.featurize.models.hub import autocast_for, load_model_or_random

#: Named decodings: generate() settings, and the text prompt the caption starts from (cut from the result).
CAPTION_DECODINGS = {
    "authors": {"prompt": "a picture of ", "num_beams": 3, "do_sample": False, "max_length": 20, "min_length": 5,
                "repetition_penalty": 1.0},
    "greedy": {"prompt": "", "num_beams": 1, "do_sample": False, "max_new_tokens": 30},
}
DEFAULT_CAPTION_DECODING = "authors"
#: What stores and heads that do not record a decoding were captioned with (schema 2 and older).
LEGACY_CAPTION_DECODING = "greedy"


def check_caption_decoding(name: str) -> str:
    """``name`` if it is a decoding of CAPTION_DECODINGS; else InputError listing the valid ones."""
    if name not in CAPTION_DECODINGS:
        raise InputError(f"unknown caption decoding {name!r}; choose one of: {', '.join(CAPTION_DECODINGS)}")
    return name


def recorded_caption_decoding(compat: dict) -> str:
    """The decoding a store's or head's identity ``compat`` captioned with: its ``caption_decoding`` when that
    names one, else the legacy greedy decoding (identities written before the key existed)."""
    name = compat.get("caption_decoding")
    return name if name in CAPTION_DECODINGS else LEGACY_CAPTION_DECODING


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
    random_weights, decodings (the settings of every name in CAPTION_DECODINGS for this model).
    prepare: the picklable image preparation (`CaptionPrep`); `caption_prepared` takes its outputs.
    decodings: the decoding names `caption` / `caption_prepared` take.
    """

    decodings = tuple(CAPTION_DECODINGS)
    #: The arithmetic it runs in (hub.RUN_PRECISIONS; None: the device's own); set by ``load_models``.
    precision: str | None = None

    def __init__(self, model, processor, info: dict, device: str, settings: dict,
                 decoding: str = DEFAULT_CAPTION_DECODING):
        self.model = model
        self.processor = processor
        self.device = device
        self.settings = {k: dict(v) for k, v in settings.items()}  # {decoding name: its settings}
        self.decoding = check_caption_decoding(decoding)
        self.info = {**info, "decodings": {k: dict(v) for k, v in self.settings.items()}}
        self.prepare = CaptionPrep(processor.image_processor)

    @property
    def generation(self) -> dict:
        """The settings of this captioner's own decoding (``decoding``)."""
        return dict(self.settings[self.decoding])

    def caption(self, images, decoding: str | None = None) -> list[str]:
        """PIL images -> one caption each (stripped; BLIP's tokenizer lower-cases). One generate() per call."""
        return self.caption_prepared([self.prepare(im) for im in images], decoding)

    def caption_prepared(self, pixels: list, decoding: str | None = None) -> list[str]:
        """`prepare` outputs -> one caption each, decoded as ``decoding`` (a CAPTION_DECODINGS name; None:
        this captioner's own). One generate() per call; a row's caption ends at its end token."""
        import torch

        from item.featurize.models.hub import to_device

        if not len(pixels):
            return []
        settings = dict(self.settings[check_caption_decoding(decoding or self.decoding)])
        prompt = settings.pop("prompt")
        pixel_values = to_device(torch.stack(list(pixels)), self.device)
        kwargs = {}
        if prompt:
            # [CLS] prompt [SEP]: generate() puts the start token in place of [CLS] and drops the [SEP]
            ids = self.processor.tokenizer([prompt] * len(pixels), return_tensors="pt").input_ids
            kwargs["input_ids"] = to_device(ids, self.device)
        with torch.inference_mode(), autocast_for(self.device, self.precision):
            out = self.model.generate(pixel_values=pixel_values, **kwargs, **settings)
        texts = [" ".join(t.split()) for t in self.processor.batch_decode(out, skip_special_tokens=True)]
        return [strip_prompt(t, prompt) for t in texts]


def strip_prompt(text: str, prompt: str) -> str:
    """``text`` without the ``prompt`` it was decoded from ("a picture of a dog" -> "a dog").

    As the authors do (models/blip.py: ``caption[len(self.prompt):]``): the prompt's length in characters is
    cut, so a word piece glued to the prompt's last word goes with it ("a picture ofj field" -> "field").
    A text that does not start with the prompt's words is returned as it is."""
    head = " ".join(prompt.lower().split())
    if head and text.lower().startswith(head):
        return text[len(prompt):].strip()
    return text


def load_captioner(name_or_path: str, device: str = "cpu", decoding: str = DEFAULT_CAPTION_DECODING) -> Captioner:
    """A BLIP captioner from a hub id, a local `save_pretrained` folder, or a random builder name.

    Random names ('tiny-random', 'small-random', 'default-random') build seeded random weights offline.
    ``decoding``: its own decoding (a CAPTION_DECODINGS name; `caption_prepared` may name another).
    Raises ModelLoadError (one line) when weights cannot be loaded; InputError for 'none' or an unknown decoding.
    """
    from transformers import BlipForConditionalGeneration, BlipProcessor

    from item.featurize.models import tiny

    check_caption_decoding(decoding)
    model, processor, source, random_weights = load_model_or_random(
        "captioner", name_or_path, tiny.build_blip, BlipForConditionalGeneration, BlipProcessor, "--captioner",
        "; give captions in the manifest instead")
    settings = {k: dict(v) for k, v in CAPTION_DECODINGS.items()}
    greedy = settings["greedy"]
    greedy["max_new_tokens"] = int(getattr(model.config, "item_max_new_tokens", greedy["max_new_tokens"]))
    model.to(device)
    info = {**source, "class": type(model).__name__, "random_weights": random_weights}
    return Captioner(model, processor, info, str(device), settings, decoding)
