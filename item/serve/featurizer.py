"""The one place where ``item serve`` reaches the featurize stage, through its front door.

Models are loaded once, from what the store records (``ModelSpec.from_store``), and reused for every
request (``featurize_images(..., models=loaded)``).
"""

from __future__ import annotations

from item.errors import IncompatibleError
from item.store import schema


class LoadedModels:
    """The store's models, loaded once. ``featurize(paths, captions)`` -> one ImageRecord per path."""

    def __init__(self, manifest: dict, *, device: str = "auto", max_pixels=None):
        """manifest: the store's manifest (its ``compat`` and ``models`` say which models to load)."""
        from item.classify.train import HEAD_COMPAT_KEYS, identity_diff
        from item.featurize import FeaturizeConfig, ModelSpec, load_models
        from item.featurize.models.loading import any_random_weights, compat_for
        from item.featurize.models.blip import recorded_caption_decoding
        from item.featurize.text.nouns import NOUN_PROMPTS

        compat = manifest.get("compat", {})
        self.models = load_models(ModelSpec.from_store(manifest), device)
        # Uploads are featurized one at a time in the request's thread: no decoding processes.
        self.config = FeaturizeConfig(workers=0, batch_size=1, device=self.models.device, max_pixels=max_pixels,
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

    def info(self) -> dict:
        from item.featurize.models.loading import models_info

        return models_info(self.models)

    def featurize(self, paths: list[str], captions: dict[str, str] | None = None) -> list:
        from item.featurize import featurize_images

        return featurize_images(paths, models=self.models, captions=captions, config=self.config)
