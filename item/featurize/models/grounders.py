"""The grounder families behind one interface, and the choice among them: ``--grounder`` names a family
by its hub id, a local folder's config.json, or a random builder name. A new family is one module beside
grounding_dino, owlv2, omdet and mm_grounding_dino plus its entries here.
"""

from __future__ import annotations

#: Grounder families behind the same interface (`--grounder` picks one by its id or random name).
GROUNDER_FAMILIES = {
    "grounding-dino": "Grounding DINO (IDEA-Research/grounding-dino-tiny): the paper's detector, the default",
    "owlv2": "OWLv2 (google/owlv2-base-patch16-ensemble): faster open-vocabulary detector; its grounding quality "
             "for ITEM is not measured (no real weights here)",
    "omdet-turbo": "OmDet-Turbo (omlab/omdet-turbo-swin-tiny-hf): real-time open-vocabulary detector with a cache of "
                   "its noun embeddings, the `fast` preset's grounder; its grounding quality for ITEM is not measured",
    "mm-grounding-dino": "MM-Grounding-DINO / LLMDet (openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det, "
                         "iSEE-Laboratory/llmdet_tiny): Grounding DINO's prompt and box rule, retrained weights; its "
                         "grounding quality for ITEM is not measured",
}
#: Each family's own thresholds (box, text), used when --grounder names a real checkpoint of that family:
#: Grounding DINO's model card and transformers' example (0.35 / 0.25), MM Grounding DINO's transformers
#: example (0.4 / 0.3, mm_grounding_dino.DEFAULT_THRESHOLDS), OWLv2's post-processing default (0.1),
#: OmDet-Turbo's post-processing default (0.3).
FAMILY_THRESHOLDS = {"grounding-dino": (0.35, 0.25), "mm-grounding-dino": (0.4, 0.3), "owlv2": (0.1, 0.0),
                     "omdet-turbo": (0.3, 0.0)}
#: config.json model_type -> family (a local save_pretrained folder).
_MODEL_TYPES = {"owlv2": "owlv2", "owlvit": "owlv2", "omdet-turbo": "omdet-turbo",
                "mm-grounding-dino": "mm-grounding-dino", "grounding-dino": "grounding-dino"}
#: Words in a hub id -> family (checked in this order; anything else is Grounding DINO).
_ID_WORDS = (("owlv2", "owlv2"), ("owlvit", "owlv2"), ("omdet", "omdet-turbo"), ("mm_grounding_dino", "mm-grounding-dino"),
             ("mm-grounding-dino", "mm-grounding-dino"), ("llmdet", "mm-grounding-dino"))


def random_grounder_names() -> dict[str, str]:
    """{random builder name: family} of the families beyond Grounding DINO's own random names."""
    from item.featurize.models.mm_grounding_dino import MM_GDINO_RANDOM_NAMES
    from item.featurize.models.omdet import OMDET_RANDOM_NAMES
    from item.featurize.models.owlv2 import OWL_RANDOM_NAMES

    return {**{n: "owlv2" for n in OWL_RANDOM_NAMES}, **{n: "omdet-turbo" for n in OMDET_RANDOM_NAMES},
            **{n: "mm-grounding-dino" for n in MM_GDINO_RANDOM_NAMES}}


def grounder_family(name_or_path: str) -> str:
    """Which family a --grounder value names: random names by name, local folders by their config.json
    model_type, hub ids by the words in them (see _ID_WORDS; anything else is Grounding DINO)."""
    import json
    from pathlib import Path

    randoms = random_grounder_names()
    if name_or_path in randoms:
        return randoms[name_or_path]
    cfg = Path(name_or_path).expanduser() / "config.json"
    if cfg.is_file():
        try:
            model_type = str(json.loads(cfg.read_text("utf-8")).get("model_type", ""))
        except (OSError, ValueError):
            model_type = ""
        return _MODEL_TYPES.get(model_type, "grounding-dino")
    lower = name_or_path.lower()
    return next((family for word, family in _ID_WORDS if word in lower), "grounding-dino")


def load_grounder(
    name_or_path: str, device: str = "cpu", box_threshold: float = 0.35, text_threshold: float = 0.25,
    ground_size: int | None = None,
):
    """A grounder (one of GROUNDER_FAMILIES) from a hub id, a local `save_pretrained` folder, or a random
    builder name.

    Random names ('tiny-random', 'small-random', 'default-random'; 'owlv2-tiny-random', 'owlv2-random';
    'omdet-tiny-random', 'omdet-random'; 'mm-gdino-tiny-random', 'mm-gdino-random') build seeded random weights
    offline; the thresholds are used as given (the random presets pass 0.0 so every noun is grounded).
    ``ground_size``: the detector's input size (shortest side), None = the model's own.
    Raises ModelLoadError (one line) when weights cannot be loaded; InputError for 'none'.
    """
    family = grounder_family(name_or_path)
    if family == "owlv2":
        from item.featurize.models.owlv2 import load_owlv2

        return load_owlv2(name_or_path, device, box_threshold=box_threshold, ground_size=ground_size)
    if family == "omdet-turbo":
        from item.featurize.models.omdet import load_omdet

        return load_omdet(name_or_path, device, box_threshold=box_threshold, ground_size=ground_size)
    if family == "mm-grounding-dino":
        from item.featurize.models.mm_grounding_dino import load_mm_grounding_dino

        return load_mm_grounding_dino(name_or_path, device, box_threshold=box_threshold,
                                      text_threshold=text_threshold, ground_size=ground_size)
    from item.featurize.models.grounding_dino import load_grounding_dino

    return load_grounding_dino(name_or_path, device, box_threshold=box_threshold, text_threshold=text_threshold,
                               ground_size=ground_size)
