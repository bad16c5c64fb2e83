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
import os
from dataclasses import dataclass
from pathlib import Path

from item.errors import InputError
from item.featurize.models.tiny import RANDOM_NAMES, TINY_CLIP_MODEL  # stdlib-only module: no heavy imports


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

    def to_json(self) -> dict:
        """The spec as recorded in a store's manifest (``models.spec``) and so in a head's head.json."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "ModelSpec":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise InputError(f"model spec has unknown fields {', '.join(unknown)}; it was written by a newer ITEM")
        try:
            return cls(**d)
        except TypeError as exc:
            raise InputError(f"model spec is incomplete: {exc}") from None

    @classmethod
    def from_store(cls, store_or_manifest) -> "ModelSpec":
        """The models a store was featurized with: a store folder, its manifest.json, or the manifest dict."""
        from pathlib import Path

        if isinstance(store_or_manifest, dict):
            manifest = store_or_manifest
        else:
            from item.store.manifest import read_manifest

            path = Path(store_or_manifest)
            manifest = read_manifest(path.parent if path.is_file() else path)
        return spec_from_record(manifest.get("compat", {}), manifest.get("models", {}), f"store {store_or_manifest}"
                                if not isinstance(store_or_manifest, dict) else "the manifest")

    @classmethod
    def from_head(cls, head_or_json) -> "ModelSpec":
        """The models a head's training store was featurized with: a head folder, its head.json, or that dict."""
        import json
        from pathlib import Path

        where = "the head"
        if isinstance(head_or_json, dict):
            info = head_or_json
        else:
            from item.names import HEAD_CONFIG_FILE as CONFIG_FILE

            path = Path(head_or_json)
            path = path / CONFIG_FILE if path.is_dir() else path
            where = f"head {head_or_json}"
            try:
                info = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise InputError(f"{path}: cannot read the head's config ({exc})") from None
        if not info.get("compat"):
            raise InputError(f"{where} records no models; it cannot featurize new images")
        return spec_from_record(info["compat"], info.get("models", {}), where)


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
    # Speed first: OmDet-Turbo (real-time detector, noun embeddings cached across images) with small's CLIP
    # and captioner, the fastest of the measured ones (BENCHMARKS.md). Its grounding quality for ITEM is not
    # measured here (no real weights reachable), like OWLv2's.
    "fast": ModelSpec(
        clip_model="ViT-B-32", clip_pretrained="openai",
        captioner="Salesforce/blip-image-captioning-base", grounder="omlab/omdet-turbo-swin-tiny-hf",
        random_weights=False, box_threshold=0.3, text_threshold=0.0,
    ),
    "fast-random": ModelSpec(
        clip_model="ViT-B-32", clip_pretrained="", captioner="small-random", grounder="omdet-random",
        random_weights=True, box_threshold=0.0, text_threshold=0.0,
    ),
}

#: The other grounder families' random builders count as random names too (written out here so that this
#: module stays free of heavy imports; tests check them against each family's module).
RANDOM_MODEL_NAMES = RANDOM_NAMES + ("owlv2-tiny-random", "owlv2-random", "omdet-tiny-random", "omdet-random",
                                     "mm-gdino-tiny-random", "mm-gdino-random")


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value  # refused below with the field's name


def spec_from_record(compat: dict, models: dict, where: str = "the store") -> ModelSpec:
    """Rebuild the ModelSpec a store (or a head) records: ``models["spec"]`` when present (stores written
    since it was recorded), else from the compat keys and the grounder's recorded thresholds (older stores)."""
    models = models if isinstance(models, dict) else {}
    if isinstance(models.get("spec"), dict):
        spec = ModelSpec.from_json(models["spec"])
    else:
        missing = [k for k in ("clip_model", "clip_pretrained", "captioner", "grounder") if k not in compat]
        if missing:
            raise InputError(f"{where} does not record its models ({', '.join(missing)} missing)")
        grounder = models.get("grounder", {}) if isinstance(models.get("grounder"), dict) else {}
        defaults = {f.name: f.default for f in dataclasses.fields(ModelSpec) if f.name.endswith("_threshold")}
        spec = ModelSpec(clip_model=compat["clip_model"], clip_pretrained=compat["clip_pretrained"],
                         captioner=compat["captioner"], grounder=compat["grounder"],
                         random_weights=bool(compat.get("random_weights", False)),
                         box_threshold=_number(grounder.get("box_threshold", defaults["box_threshold"])),
                         text_threshold=_number(grounder.get("text_threshold", defaults["text_threshold"])))
    # The compat keys are what the store checks rows against: a spec that disagrees with them is corrupt.
    for key, value in (("clip_model", spec.clip_model), ("clip_pretrained", spec.clip_pretrained),
                       ("captioner", spec.captioner), ("grounder", spec.grounder)):
        if key in compat and compat[key] != value and not _same_checkpoint(key, value, compat[key]):
            raise InputError(f"{where}: its recorded model spec says {key}={value!r} but its rows were made "
                             f"with {compat[key]!r}")
    for name in ("box_threshold", "text_threshold"):  # a file users exchange: NaN or text is refused
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise InputError(f"{where}: grounder {name} {value!r} is not a number between 0 and 1")
    return spec


#: open_clip's model-name schemas (``open_clip.factory.parse_model_name``); ITEM takes the same folder or hub
#: files as --pretrained PATH under a model name of the user's choosing (see check_no_schema).
OPEN_CLIP_SCHEMAS = ("local-dir:", "hf-hub:")


def check_no_schema(value: str | None) -> None:
    """Refuse (InputError, one line) open_clip's ``local-dir:PATH`` / ``hf-hub:ORG/NAME`` spelling in --clip
    or --pretrained: ITEM names the model with --clip and its weights with --pretrained, and reads a local
    folder's open_clip_config.json (model_cfg, preprocess_cfg, tokenizer) as open_clip's local-dir: does."""
    if not value or not value.startswith(OPEN_CLIP_SCHEMAS):
        return
    schema_name, _, rest = value.partition(":")
    if schema_name == "local-dir":
        raise InputError(f"{value!r}: give the folder as --pretrained {rest or 'FOLDER'} and a name for its model "
                         "with --clip (any name; the folder's open_clip_config.json is read as open_clip's "
                         "local-dir: reads it)")
    raise InputError(f"{value!r}: hf-hub: names are not loaded directly; download the repo (`hf download "
                     f"{rest or 'ORG/NAME'} --local-dir FOLDER`) and give the folder as --pretrained FOLDER and a name "
                     "for its model with --clip")


def check_bare_backbone_checkpoint(chosen, pretrained: str) -> None:
    """Refuse (InputError, one line) ``--backbone NAME --pretrained FILE`` where FILE is a local checkpoint with no
    open_clip_config.json beside it and the backbone's tag preprocesses otherwise than open_clip's defaults:
    open_clip builds a bare file with its defaults (OpenAI's mean and std, shortest-side resize), so PE-Core,
    SigLIP 2 or MobileCLIP2 weights would be fed pixels they were not trained on, without a word."""
    path = Path(os.path.expanduser(pretrained))
    if not path.exists():
        return  # a tag, or a missing path (the loader names it)
    folder = path if path.is_dir() else path.parent
    if (folder / "open_clip_config.json").is_file():
        return
    import open_clip
    from open_clip.transform import PreprocessCfg

    tag = open_clip.pretrained.get_pretrained_cfg(chosen.clip_model, chosen.pretrained) or {}
    default = PreprocessCfg()

    def norm(v):
        return tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else v

    differs = {k: tag[k] for k in ("mean", "std", "resize_mode", "interpolation")
               if k in tag and norm(tag[k]) != norm(getattr(default, k))}
    if not differs:
        return
    hub = (tag.get("hf_hub") or "").strip("/")
    want = ", ".join(f"{k} {list(v) if isinstance(v, (list, tuple)) else v}" for k, v in differs.items())
    raise InputError(
        f"--backbone {chosen.name} --pretrained {pretrained}: no open_clip_config.json beside it says how its "
        f"images are preprocessed, and open_clip would use its defaults, not {chosen.name}'s ({want}); put the "
        f"open_clip_config.json of the weights beside the checkpoint"
        + (f" (for {chosen.name}'s published weights, the one in the hub repo {hub})" if hub else ""))


def _absolute_if_local(key: str, value: str) -> str:
    """``value`` made absolute where the loaders read it as a local path (the rules of ``load_clip`` for
    ``--pretrained`` and of ``load_hf_pretrained`` for captioner / grounder folders), so that a store
    records the same path whichever folder a later command runs from; tags and hub ids are kept as given."""
    if not value or is_random(value) or value == "none":
        return value
    if key == "clip_pretrained":
        local = os.sep in value or os.path.exists(value)
    else:
        local = os.path.exists(os.path.expanduser(value)) or value.startswith((".", os.sep, "~")) \
            or value.count("/") > 1
    return os.path.abspath(os.path.expanduser(value)) if local else value


def _same_checkpoint(key: str, spec_value, compat_value) -> bool:
    """True where the spec names a local checkpoint folder (``--pretrained FOLDER``) and the rows record the
    checkpoint file that folder holds (the loader records the file it read)."""
    if key != "clip_pretrained" or not isinstance(spec_value, str) or not isinstance(compat_value, str):
        return False
    if not spec_value or not compat_value or os.sep not in compat_value:
        return False
    return os.path.normpath(os.path.dirname(compat_value)) == os.path.normpath(spec_value)


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
    backbone: str | None = None,
) -> ModelSpec:
    """The `ModelSpec` of `preset` with the given fields replaced (None keeps the preset's value).

    ``backbone`` names a registered image-text backbone (``item.featurize.models.backbones``): it sets the
    CLIP model and weights tag; ``pretrained`` may still replace the tag (a local checkpoint of that
    architecture, or '' for seeded random weights). Naming both ``backbone`` and ``clip`` is refused.

    Raises InputError for an unknown preset, listing the valid ones. `random_weights` is recomputed from the
    final fields: CLIP with pretrained '' or a random captioner / grounder name counts as random.
    """
    if preset not in PRESETS:
        raise InputError(f"unknown model preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    spec = PRESETS[preset]
    if backbone is not None:
        from item.featurize.models.backbones import get_backbone

        if clip is not None:
            raise InputError(f"--backbone {backbone} and --clip {clip} both name the CLIP model: give one")
        chosen = get_backbone(backbone)
        clip = chosen.clip_model
        if pretrained:
            check_bare_backbone_checkpoint(chosen, pretrained)
        pretrained = chosen.pretrained if pretrained is None else pretrained
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
        from item.featurize.models.grounders import FAMILY_THRESHOLDS, grounder_family

        # a real checkpoint brings its family's own thresholds (OWLv2 and OmDet-Turbo have one score per box)
        box, text = FAMILY_THRESHOLDS[grounder_family(grounder)]
        changes.update(box_threshold=box, text_threshold=text)
    for value in (clip, pretrained):
        check_no_schema(value)
    for key in ("clip_pretrained", "captioner", "grounder"):  # a local path is recorded absolute
        if key in changes:
            changes[key] = _absolute_if_local(key, changes[key])
    spec = dataclasses.replace(spec, **changes)
    random_weights = spec.clip_pretrained == "" or is_random(spec.captioner) or is_random(spec.grounder)
    return dataclasses.replace(spec, random_weights=random_weights)
