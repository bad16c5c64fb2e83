"""The grounder families behind one interface, and the choice among them: ``--grounder`` names a family
by its hub id, a local folder's config.json, or a random builder name. A new family is one module beside
grounding_dino and owlv2 plus one entry here.
"""

from __future__ import annotations

#: Grounder families behind the same interface (`--grounder` picks one by its id or random name).
GROUNDER_FAMILIES = {
    "grounding-dino": "Grounding DINO (IDEA-Research/grounding-dino-tiny): the paper's detector, the default",
    "owlv2": "OWLv2 (google/owlv2-base-patch16-ensemble): faster open-vocabulary detector; its grounding quality "
             "for ITEM is not measured (no real weights here)",
}


def grounder_family(name_or_path: str) -> str:
    """Which family a --grounder value names: random names by name, local folders by their config.json
    model_type, hub ids by name (an id containing 'owlv2' or 'owlvit' is OWLv2, anything else Grounding DINO)."""
    import json
    from pathlib import Path

    from item.featurize.models.owlv2 import OWL_RANDOM_NAMES

    if name_or_path in OWL_RANDOM_NAMES:
        return "owlv2"
    cfg = Path(name_or_path).expanduser() / "config.json"
    if cfg.is_file():
        try:
            model_type = str(json.loads(cfg.read_text("utf-8")).get("model_type", ""))
        except (OSError, ValueError):
            model_type = ""
        return "owlv2" if model_type.startswith("owl") else "grounding-dino"
    return "owlv2" if ("owlv2" in name_or_path.lower() or "owlvit" in name_or_path.lower()) else "grounding-dino"


def load_grounder(
    name_or_path: str, device: str = "cpu", box_threshold: float = 0.35, text_threshold: float = 0.25,
    ground_size: int | None = None,
):
    """A grounder (Grounding DINO, or OWLv2: see GROUNDER_FAMILIES) from a hub id, a local
    `save_pretrained` folder, or a random builder name.

    Random names ('tiny-random', 'small-random', 'default-random'; 'owlv2-tiny-random', 'owlv2-random') build
    seeded random weights offline; the thresholds are used as given (the random presets pass 0.0 so every
    noun is grounded). ``ground_size``: the detector's input size (shortest side), None = the model's own.
    Raises ModelLoadError (one line) when weights cannot be loaded; InputError for 'none'.
    """
    if grounder_family(name_or_path) == "owlv2":
        from item.featurize.models.owlv2 import load_owlv2

        return load_owlv2(name_or_path, device, box_threshold=box_threshold, ground_size=ground_size)
    from item.featurize.models.grounding_dino import load_grounding_dino

    return load_grounding_dino(name_or_path, device, box_threshold=box_threshold, text_threshold=text_threshold,
                               ground_size=ground_size)
