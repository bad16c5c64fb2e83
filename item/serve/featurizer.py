"""The one place where ``item serve`` reaches the featurize stage, through its front door.

Models are loaded once, from what the store records (``ModelSpec.from_store``), and reused for every
request (``featurize_images(..., models=loaded)``), with one text cache across requests (a noun or caption
seen before is not encoded again; the same bits either way) and a warm-up before the first request.
"""

from __future__ import annotations

from item.errors import IncompatibleError
from item.store import schema


#: Texts kept in the cache across requests (caption and noun embeddings); past this it starts afresh.
#: 20,000 ViT-L-14 embeddings in float16 are 31 MB.
MAX_TEXT_CACHE = 20_000
#: What the warm-up featurizes: a drawn image with a caption (nouns, grounding, crops, CLIP) and without
#: (the captioner), so every model has run once before the first analyst's upload.
WARM_UP_CAPTION = "a dog on the grass next to a red ball"


def warm_up_image():
    """A 320x240 RGB image drawn here (a gradient and two shapes): nothing read from disk."""
    from PIL import Image, ImageDraw

    im = Image.linear_gradient("L").resize((320, 240)).convert("RGB")
    draw = ImageDraw.Draw(im)
    draw.ellipse((40, 120, 140, 220), fill=(200, 30, 30))
    draw.rectangle((180, 60, 300, 200), fill=(120, 90, 40))
    return im


class LoadedModels:
    """The store's models, loaded once. ``featurize(paths, captions)`` -> one ImageRecord per path."""

    def __init__(self, manifest: dict, *, device: str = "auto", max_pixels=None, precision: str | None = None):
        """manifest: the store's manifest (its ``compat`` and ``models`` say which models to load).
        precision: the models' arithmetic on the CPU (``--precision``; None: the device's own)."""
        from item.classify.train import HEAD_COMPAT_KEYS, identity_diff
        from item.featurize import FeaturizeConfig, ModelSpec, load_models
        from item.featurize.models.loading import any_random_weights, compat_for
        from item.featurize.models.blip import recorded_caption_decoding
        from item.featurize.text.nouns import NOUN_PROMPTS

        compat = manifest.get("compat", {})
        self.models = load_models(ModelSpec.from_store(manifest), device, precision)
        # Uploads are featurized one at a time in the request's thread: no decoding processes.
        self.config = FeaturizeConfig(workers=0, batch_size=1, device=self.models.device, max_pixels=max_pixels,
                                      precision=precision,
                                      max_objects=int(compat.get("max_objects", 8)),
                                      recipe=compat.get("recipe", "hierarchical"),
                                      caption_decoding=recorded_caption_decoding(compat),
                                      **({"noun_prompt": compat["noun_prompt"]} if compat.get("noun_prompt") in
                                         NOUN_PROMPTS else {}))
        self.compat = compat_for(self.models, self.config)
        # Uploads may be featurized on another device class or precision than the store was (a CPU server for
        # a store made on a GPU), tolerated (schema.ALLOW_MIXED_KEYS) even where a captioner or grounder ran: a
        # server answers one upload at a time, nothing it computes is mixed into the store; the rest not.
        diff, _ = identity_diff(compat, self.compat, HEAD_COMPAT_KEYS, allow_mixed=True,
                                mixable_keys=schema.ALLOW_MIXED_KEYS)
        if diff:
            raise IncompatibleError("the models that loaded differ from those the store records: "
                                    + "; ".join(f"{k}: store {compat[k]!r}, loaded {self.compat.get(k)!r}"
                                                for k in diff))
        self.random_weights = any_random_weights(self.models)
        self.device = self.models.device
        self.precision = self.models.run_precision
        self.text_cache: dict = {}
        self.warm_up_seconds: float | None = None

    def info(self) -> dict:
        from item.featurize.models.loading import models_info

        return models_info(self.models)

    def featurize(self, paths: list[str], captions: dict[str, str] | None = None) -> list:
        from item.featurize import featurize_images

        if len(self.text_cache) > MAX_TEXT_CACHE:
            self.text_cache.clear()
        return featurize_images(paths, models=self.models, captions=captions, config=self.config,
                                text_cache=self.text_cache)

    def warm_up(self) -> float:
        """Run every model once on a drawn image, with a caption and without, so that the first request does
        not pay what a first forward costs (lazy initialisation, kernel selection, allocations). Its texts
        are left out of the text cache. Returns (and keeps in ``warm_up_seconds``) the seconds it took; models
        shared by several services warm up once."""
        import time

        if self.warm_up_seconds is not None:
            return self.warm_up_seconds
        from item.featurize import featurize_images

        t = time.perf_counter()
        image = warm_up_image()
        captions = [WARM_UP_CAPTION] + ([None] if self.models.captioner is not None else [])
        featurize_images([image] * len(captions), models=self.models, captions=captions, config=self.config)
        self.warm_up_seconds = round(time.perf_counter() - t, 3)
        return self.warm_up_seconds
