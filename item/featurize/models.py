"""Model presets: which CLIP, captioner and grounder the featurize stage runs.

A preset is a frozen `ModelSpec`; `resolve_models` picks one by name and applies per-model overrides
(the CLI's --clip / --pretrained / --captioner / --grounder). The loaders live beside this module:
`encoder.load_clip`, `captioner.load_captioner`, `grounder.load_grounder`.

Random presets (weights mean nothing; every output made with them is marked ``random_weights``):
- ``tiny-random``: tiny seeded configs of the same classes, offline in seconds (tests, demo). Its grounder
  thresholds are 0.0 so that random weights still ground every noun and the object path is exercised.
- ``small-random`` / ``default-random``: the real full-size architectures of ``small`` / ``default`` with
  seeded random weights, for speed and memory benchmarks without a model hub.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from item.errors import InputError
from item.featurize.tiny import RANDOM_NAMES, TINY_CLIP_MODEL  # stdlib-only module: no heavy imports


@dataclass(frozen=True)
class ModelSpec:
    """The three models of a featurize run.

    clip_model: open_clip model name (e.g. 'ViT-L-14').
    clip_pretrained: open_clip pretrained tag ('openai'), a local checkpoint file or folder, or '' for
        random initialisation.
    captioner / grounder: Hugging Face id, local `save_pretrained` folder, a random builder name
        ('tiny-random', 'small-random', 'default-random') or 'none'.
    random_weights: True when any of the three has random weights.
    box_threshold / text_threshold: Grounding DINO thresholds (see `grounder.Grounder`).
    ground_size: the grounder's input size, shortest side in pixels (``--ground-size``); 0 = the model's own.
    """

    clip_model: str
    clip_pretrained: str
    captioner: str
    grounder: str
    random_weights: bool
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    ground_size: int = 0  # the grounder's input size (shortest side); 0 = the model's own (800 for Grounding DINO)


PRESETS: dict[str, ModelSpec] = {
    "default": ModelSpec(
        clip_model="ViT-L-14", clip_pretrained="openai",
        captioner="Salesforce/blip-image-captioning-large", grounder="IDEA-Research/grounding-dino-tiny",
        random_weights=False,
    ),
    "small": ModelSpec(
        clip_model="ViT-B-32", clip_pretrained="openai",
        captioner="Salesforce/blip-image-captioning-base", grounder="IDEA-Research/grounding-dino-tiny",
        random_weights=False,
    ),
    # Thresholds 0.0: random logits sit near sigmoid(0) = 0.5 +- noise, any positive threshold would make
    # grounding a coin toss; 0.0 grounds every noun so tests always exercise the object path.
    "tiny-random": ModelSpec(
        clip_model=TINY_CLIP_MODEL, clip_pretrained="", captioner="tiny-random", grounder="tiny-random",
        random_weights=True, box_threshold=0.0, text_threshold=0.0,
    ),
    "small-random": ModelSpec(
        clip_model="ViT-B-32", clip_pretrained="", captioner="small-random", grounder="small-random",
        random_weights=True, box_threshold=0.0, text_threshold=0.0,
    ),
    "default-random": ModelSpec(
        clip_model="ViT-L-14", clip_pretrained="", captioner="default-random", grounder="default-random",
        random_weights=True, box_threshold=0.0, text_threshold=0.0,
    ),
}

#: OWLv2 random builders (item.featurize.owl) count as random names too.
RANDOM_MODEL_NAMES = RANDOM_NAMES + ("owlv2-tiny-random", "owlv2-random")


def is_random(name: str) -> bool:
    """True for a captioner / grounder name that builds seeded random weights instead of loading any."""
    return name in RANDOM_MODEL_NAMES


def resolve_models(
    preset: str = "default",
    *,
    clip: str | None = None,
    pretrained: str | None = None,
    captioner: str | None = None,
    grounder: str | None = None,
    ground_size: int | None = None,
) -> ModelSpec:
    """The `ModelSpec` of `preset` with the given fields replaced (None keeps the preset's value).

    Raises InputError for an unknown preset, listing the valid ones. `random_weights` is recomputed from the
    final fields: CLIP with pretrained '' or a random captioner / grounder name counts as random.
    """
    if preset not in PRESETS:
        raise InputError(f"unknown model preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    spec = PRESETS[preset]
    changes = {
        k: v
        for k, v in dict(clip_model=clip, clip_pretrained=pretrained, captioner=captioner, grounder=grounder,
                         ground_size=ground_size).items()
        if v is not None
    }
    if grounder is not None and is_random(grounder) != is_random(spec.grounder):
        # Thresholds belong to the grounder: random ones use 0.0 (see PRESETS), real ones Grounding DINO's own.
        base = PRESETS["tiny-random"] if is_random(grounder) else PRESETS["default"]
        changes.update(box_threshold=base.box_threshold, text_threshold=base.text_threshold)
    if grounder is not None and not is_random(grounder) and spec.grounder != grounder:
        from item.featurize.grounder import grounder_family
        from item.featurize.owl import DEFAULT_BOX_THRESHOLD

        if grounder_family(grounder) == "owlv2":  # OWLv2 has one score per query and its own threshold
            changes.update(box_threshold=DEFAULT_BOX_THRESHOLD, text_threshold=0.0)
    spec = dataclasses.replace(spec, **changes)
    random_weights = spec.clip_pretrained == "" or is_random(spec.captioner) or is_random(spec.grounder)
    return dataclasses.replace(spec, random_weights=random_weights)
