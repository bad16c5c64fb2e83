"""What decides the numbers of a featurize run, beyond the models' names: the store's identity fields.

Two runs whose identity differs in any of these keys compute different bits for the same image, so they
never share a store, and a head trained on one is not applied to the other (see
``item.store.schema.COMPAT_KEYS`` and ``ALLOW_MIXED_KEYS``):

- ``clip_activation``: the activation the built CLIP really uses ('quick_gelu' / 'gelu');
- ``crop_mode``: how a box becomes CLIP's input (``crops.crop_mode_for``: the mode, and the padding colour
  where the CLIP tag's mean is not OpenAI's);
- ``caption_decoding``: how BLIP's captions were decoded (``blip.CAPTION_DECODINGS``: 'authors', 'greedy');
- ``caption_cleanup``: the version of the BLIP artefact clean-up applied before CLIP (``captioner.CLEANUP_VERSION``);
- ``nouns_version`` and ``noun_prompt``: which nouns are found and the text each is encoded as;
- ``box_threshold`` / ``text_threshold`` / ``ground_input``: the grounder's thresholds and input size;
- ``box_selection``: the rule that picks a noun's box from the detector's output (the grounder family's
  ``BOX_SELECTION``; Grounding DINO's changed in issue 19 to keep queries by every prompt token, and every family's in
  issue 29 to its reference's rule: DESIGN.md, "Each grounder's box rule is its reference's");
- ``open_clip_version`` / ``transformers_version``: major.minor of the libraries that build the models;
- ``device_class`` / ``precision``: 'cpu' or 'cuda', and the arithmetic the models ran in: 'fp32',
  'fp16-autocast' (CUDA's own) or 'bf16-autocast' (the CPU under ``--precision bf16``, or ``auto`` where the
  CPU computes bfloat16 natively; hub.resolve_precision).
"""

from __future__ import annotations

import json

from item.featurize.crops import crop_mode_for, pad_colour
from item.featurize.text.captions import CLEANUP_VERSION
from item.featurize.text.nouns import NOUNS_VERSION, noun_prompt_template

NONE = "-"  # a part of the identity that does not apply (no grounder, no transformers model)


def major_minor(version: str) -> str:
    """'3.3.0' -> '3.3'; '5.0.0.dev0' -> '5.0'."""
    return ".".join(str(version).split(".")[:2])


def precision_for(device: str, setting: str | None = None) -> str:
    """The arithmetic the models run in on ``device`` under ``--precision setting`` (None: the device's own,
    fp16 autocast on CUDA and fp32 on the CPU); see hub.resolve_precision."""
    from item.featurize.models.hub import resolve_precision

    return resolve_precision(setting, device)


def identity_fields(models, noun_prompt: str, caption_decoding: str = "authors") -> dict:
    """The identity keys of a run with loaded ``models`` (a pipeline.Models), the given noun prompt name and
    caption decoding name."""
    from item.featurize.models.blip import check_caption_decoding

    import open_clip

    noun_prompt_template(noun_prompt)  # an unknown name is an InputError listing the valid ones
    uses_transformers = models.captioner is not None or models.grounder is not None
    if uses_transformers:
        import transformers

        tf_version = major_minor(transformers.__version__)
    else:
        tf_version = NONE
    g = models.grounder
    return {
        "clip_activation": models.clip.info.get("activation", "unknown"),
        "crop_mode": crop_mode_for(pad_colour(models.clip.info.get("preprocess", {}).get("mean")))
        if g is not None else NONE,
        "caption_decoding": check_caption_decoding(caption_decoding) if models.captioner is not None else NONE,
        "caption_cleanup": CLEANUP_VERSION if models.captioner is not None else NONE,
        "nouns_version": NOUNS_VERSION,
        "noun_prompt": noun_prompt,
        "box_threshold": float(g.box_threshold) if g is not None else NONE,
        "text_threshold": float(g.text_threshold) if g is not None else NONE,
        "ground_input": json.dumps(g.info.get("input_size"), sort_keys=True) if g is not None else NONE,
        "box_selection": str(g.info.get("box_selection", NONE)) if g is not None else NONE,
        "open_clip_version": major_minor(open_clip.__version__),
        "transformers_version": tf_version,
        "device_class": "cuda" if str(models.device).startswith("cuda") else "cpu",
        "precision": getattr(models, "precision", "") or precision_for(models.device),
    }


def adopt_mixable(store_compat: dict, compat: dict) -> tuple[dict, dict]:
    """``--allow-mixed``: (``compat`` with the store's values for the keys of schema.ALLOW_MIXED_KEYS that
    differ, {key: {'store': ..., 'run': ...}} for those keys). Every other key is left for the writer to
    compare (and refuse). Device class and precision may differ only where no captioner or grounder ran
    under either identity (schema.mixable_keys); otherwise InputError, one line saying why."""
    from item.errors import InputError
    from item.store import schema

    differ = [k for k in schema.ALLOW_MIXED_KEYS if k in store_compat and store_compat.get(k) != compat.get(k)]
    why = schema.why_not_mixable(differ, store_compat, compat)
    if why:
        k = next(k for k in differ if k in schema.DEVICE_KEYS)
        raise InputError(f"--allow-mixed refused: {k} is {store_compat.get(k)!r} in the store and "
                         f"{compat.get(k)!r} in this run, and {why}; resume on the store's device and precision "
                         "(--device, --precision) or use another --store")
    mixed = {k: {"store": store_compat.get(k), "run": compat.get(k)} for k in differ}
    return {**compat, **{k: store_compat[k] for k in mixed}}, mixed
