"""Captioner: BLIP (transformers) run on every image, real and fake alike, when no caption is given.

What CLIP encodes of a caption (BLIP's artefacts stripped) is item.featurize.text.captions.
"""

from __future__ import annotations

from item.featurize.models.hub import autocast_for, load_model_or_random

#: Fixed generation settings, so captions are reproducible and recorded: greedy decoding, no sampling.
#: A config may lower max_new_tokens with an `item_max_new_tokens` attribute (the tiny model uses 12).
GENERATION = {"num_beams": 1, "do_sample": False, "max_new_tokens": 30}


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

        from item.featurize.models.hub import to_device

        if not len(pixels):
            return []
        pixel_values = to_device(torch.stack(list(pixels)), self.device)
        with torch.inference_mode(), autocast_for(self.device):
            out = self.model.generate(pixel_values=pixel_values, **self.generation)
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]


def load_captioner(name_or_path: str, device: str = "cpu") -> Captioner:
    """A BLIP captioner from a hub id, a local `save_pretrained` folder, or a random builder name.

    Random names ('tiny-random', 'small-random', 'default-random') build seeded random weights offline.
    Raises ModelLoadError (one line) when weights cannot be loaded; InputError for 'none'.
    """
    from transformers import BlipForConditionalGeneration, BlipProcessor

    from item.featurize.models import tiny

    model, processor, source, random_weights = load_model_or_random(
        "captioner", name_or_path, tiny.build_blip, BlipForConditionalGeneration, BlipProcessor, "--captioner",
        "; give captions in the manifest instead")
    generation = dict(GENERATION)
    generation["max_new_tokens"] = int(getattr(model.config, "item_max_new_tokens", generation["max_new_tokens"]))
    model.to(device)
    info = {**source, "class": type(model).__name__, "random_weights": random_weights, "generation": dict(generation)}
    return Captioner(model, processor, info, str(device), generation)
