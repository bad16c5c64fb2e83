"""Loading a run's models, and the identity they give a store (compat keys, models info)."""

from __future__ import annotations

from dataclasses import dataclass

from item.errors import InputError
from item.featurize.inputs.perturb import parse_perturb
from item.featurize.models.hub import resolve_device
from item.featurize.models.presets import ModelSpec
from item.featurize.run.config import FeaturizeConfig
from item.featurize.text.nouns import NOUNS_VERSION  # noqa: F401  (importable from here as before)


@dataclass
class Models:
    """The loaded models of a run; captioner / grounder are None when switched off.

    precision: the arithmetic all three run in (hub.RUN_PRECISIONS: 'fp32', 'bf16-autocast' on the CPU,
    'fp16-autocast' on CUDA); '' for parts put together by hand, which run in the device's own."""

    spec: ModelSpec
    clip: object
    captioner: object | None
    grounder: object | None
    device: str
    precision: str = ""

    @property
    def run_precision(self) -> str:
        """The precision in the store's identity: ``precision``, or the device's own where it is ''."""
        from item.featurize.models.hub import resolve_precision

        return self.precision or resolve_precision(None, self.device)


def load_models(spec: ModelSpec, device: str = "auto", precision: str | None = None) -> Models:
    """The three models of ``spec`` on ``device``, running in the arithmetic ``precision`` names
    (``--precision``: fp32, bf16, auto, or None for the device's own; see hub.resolve_precision). On the
    CPU torch's thread pool is capped at the usable cores first (item.hardware.limit_model_threads).
    A precision the device refuses is an InputError before any weight is read."""
    from item.featurize.models.blip import load_captioner
    from item.featurize.models.clip import load_clip
    from item.featurize.models.grounders import load_grounder
    from item.featurize.models.hub import resolve_precision

    device = resolve_device(device)
    run_precision = resolve_precision(precision, device)
    if not device.startswith("cuda"):
        from item.hardware import limit_model_threads

        limit_model_threads()
    clip = load_clip(spec.clip_model, spec.clip_pretrained, device)
    captioner = None if spec.captioner == "none" else load_captioner(spec.captioner, device)
    grounder = None if spec.grounder == "none" else load_grounder(
        spec.grounder, device, box_threshold=spec.box_threshold, text_threshold=spec.text_threshold,
        ground_size=spec.ground_size or None)
    for part in (clip, captioner, grounder):
        if part is not None:
            part.precision = run_precision
    return Models(spec, clip, captioner, grounder, device, run_precision)


def any_random_weights(models: Models) -> bool:
    """True when any loaded model has random weights (a preset's, or a local copy of random ones)."""
    parts = [models.clip, models.captioner, models.grounder]
    return bool(models.spec.random_weights or any(p is not None and p.info.get("random_weights") for p in parts))


def compat_for(models: Models, config: FeaturizeConfig) -> dict:
    """What every row of one store shares (see item.store.schema.COMPAT_KEYS)."""
    from item.featurize.identity import identity_fields
    from item.misalignment import feature_size

    clip = models.clip.info
    return {
        **identity_fields(models, config.noun_prompt, config.caption_decoding),
        "clip_model": clip["model"],
        "clip_pretrained": clip["pretrained"],
        "embed_dim": int(clip["embed_dim"]),
        "preprocess_hash": clip["preprocess_hash"],
        "captioner": models.spec.captioner,
        "grounder": models.spec.grounder,
        "recipe": config.recipe,
        "misalignment_dim": feature_size(config.recipe, int(clip["embed_dim"])),
        "random_weights": any_random_weights(models),
        "perturbation": str(parse_perturb(config.perturb or None)),
        "max_objects": int(config.max_objects),
        "alignment": str(config.alignment or ""),
    }


def models_info(models: Models) -> dict:
    """What a store records about its models; ``spec`` is what ``ModelSpec.from_store`` rebuilds them from."""
    return {
        "spec": models.spec.to_json(),
        "clip": models.clip.info,
        "captioner": models.captioner.info if models.captioner else {"id": "none"},
        "grounder": (dict(models.grounder.info, box_threshold=models.grounder.box_threshold,
                          text_threshold=models.grounder.text_threshold) if models.grounder else {"id": "none"}),
        "nouns": {"extractor": NOUNS_VERSION},  # the noun prompt is in compat (noun_prompt)
        "random_weights": any_random_weights(models),
    }


def as_models(models, device: str = "auto", precision: str | None = None) -> Models:
    """Loaded Models from a preset name, a ModelSpec, or Models already loaded (returned as they are; when
    ``precision`` is given it must be theirs, else InputError: a run never computes in another arithmetic
    than it asked for)."""
    from item.featurize.models.presets import resolve_models

    if isinstance(models, Models):
        if precision is not None:
            from item.featurize.models.hub import resolve_precision

            asked = resolve_precision(precision, models.device)
            if asked != models.run_precision:
                raise InputError(f"precision {precision} ({asked}) asked for, but the models given were loaded "
                                 f"to run in {models.run_precision}; load them with precision={precision!r}")
        return models
    if isinstance(models, str):
        models = resolve_models(models)
    if not isinstance(models, ModelSpec):
        raise InputError(f"models must be a preset name, a ModelSpec or loaded Models, not {type(models).__name__}")
    return load_models(models, device, precision)
