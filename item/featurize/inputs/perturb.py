"""Robustness perturbations applied to decoded images before featurizing.

A spec is ``kind:value`` steps joined with ``+`` (or given as repeated flags),
applied left to right: ``jpeg:75+blur:1.0+resize:0.5``.

=========  =====================  ====================================================
kind       value                  what it does
=========  =====================  ====================================================
jpeg       int quality 1..100     encode to JPEG in memory with Pillow (its default
                                  chroma subsampling) and decode it back
blur       float sigma 0.1..50    Gaussian blur with standard deviation sigma pixels
                                  (Pillow's ``GaussianBlur(radius=sigma)``: radius is
                                  Pillow's name for the standard deviation)
resize     float factor 0.01..4   scale both sides by the factor with Pillow's bicubic
                                  filter (anti-aliased when shrinking), sizes rounded,
                                  at least 1 pixel
=========  =====================  ====================================================

Every step is deterministic: the same image and spec give the same pixels.
``str(p)`` is the canonical spec stored with each row ('' for none), and
``parse_perturb(str(p)) == p``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageFilter

from item.errors import InputError


@dataclass(frozen=True)
class _Kind:
    type: type
    low: float
    high: float
    help: str


#: Registry of perturbation kinds: name -> value type, inclusive range, description.
PERTURBATIONS: dict[str, _Kind] = {
    "jpeg": _Kind(int, 1, 100, "JPEG re-compression at this quality (int 1..100)"),
    "blur": _Kind(float, 0.1, 50.0, "Gaussian blur with this sigma in pixels (float 0.1..50)"),
    "resize": _Kind(float, 0.01, 4.0, "bicubic rescale by this factor (float 0.01..4)"),
}


def _valid_kinds() -> str:
    return "; ".join(f"{k}: {v.help}" for k, v in PERTURBATIONS.items())


def _check_step(step) -> tuple[str, int | float]:
    try:
        kind, value = step
    except (TypeError, ValueError):
        raise InputError(f"perturbation step {step!r} is not a (kind, value) pair. Valid kinds: {_valid_kinds()}") from None
    if kind not in PERTURBATIONS:
        raise InputError(f"unknown perturbation {kind!r}. Valid kinds: {_valid_kinds()}")
    spec = PERTURBATIONS[kind]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"perturbation {kind} needs a number, got {value!r}. {kind}: {spec.help}")
    if spec.type is int:
        if float(value) != int(value):
            raise InputError(f"perturbation {kind} needs an integer, got {value!r}. {kind}: {spec.help}")
        value = int(value)
    else:
        value = float(value)
    if not spec.low <= value <= spec.high:
        raise InputError(f"perturbation {kind}:{value} is out of range. {kind}: {spec.help}")
    return kind, value


@dataclass(frozen=True)
class Perturbation:
    """An ordered chain of perturbation steps, e.g. (('jpeg', 75), ('blur', 1.0), ('resize', 0.5)).

    Values are normalised on construction (jpeg -> int, others -> float) and checked
    against PERTURBATIONS; a bad step raises InputError.
    """

    steps: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "steps", tuple(_check_step(s) for s in self.steps))

    def __bool__(self) -> bool:
        return bool(self.steps)

    def __str__(self) -> str:
        return "+".join(f"{k}:{v}" for k, v in self.steps)

    def apply(self, image: Image.Image) -> Image.Image:
        """Apply the steps in order to a PIL image; returns a new RGB image (input untouched).

        With no steps, returns an RGB copy of the input.
        """
        out = image.convert("RGB") if image.mode != "RGB" else image.copy()
        for kind, value in self.steps:
            if kind == "jpeg":
                buf = io.BytesIO()
                out.save(buf, format="JPEG", quality=value)
                buf.seek(0)
                with Image.open(buf) as re:
                    out = re.convert("RGB")
            elif kind == "blur":
                out = out.filter(ImageFilter.GaussianBlur(radius=value))
            elif kind == "resize":
                w = max(1, round(out.width * value))
                h = max(1, round(out.height * value))
                out = out.resize((w, h), Image.Resampling.BICUBIC)
        return out


def _parse_step(token: str) -> tuple[str, int | float]:
    kind, sep, raw = token.partition(":")
    kind, raw = kind.strip().lower(), raw.strip()
    if kind not in PERTURBATIONS:
        raise InputError(f"unknown perturbation {token!r}. Valid kinds: {_valid_kinds()}")
    if not sep or not raw:
        raise InputError(f"perturbation {token!r} needs a value, like {kind}:{_example(kind)}. {PERTURBATIONS[kind].help}")
    try:
        value = int(raw) if PERTURBATIONS[kind].type is int else float(raw)
    except ValueError:
        raise InputError(f"bad value in perturbation {token!r}. {kind}: {PERTURBATIONS[kind].help}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise InputError(f"bad value in perturbation {token!r}. {kind}: {PERTURBATIONS[kind].help}")
    return kind, value


def _example(kind: str) -> str:
    return {"jpeg": "75", "blur": "1.0", "resize": "0.5"}[kind]


def parse_perturb(specs: list[str] | str | None) -> Perturbation:
    """Parse 'jpeg:75+blur:1.0' (or ['jpeg:75', 'blur:1.0']) into a Perturbation.

    None, '', 'none' and [] give the empty Perturbation. Steps keep the given order.
    Raises InputError naming the valid kinds and ranges for a bad spec.
    """
    if specs is None:
        return Perturbation(())
    if isinstance(specs, str):
        specs = [specs]
    steps = []
    for spec in specs:
        if not isinstance(spec, str):
            raise InputError(f"perturbation spec must be a string, got {spec!r}")
        if spec.strip().lower() in ("", "none"):
            continue
        for token in spec.split("+"):
            if not token.strip():
                raise InputError(f"empty step in perturbation {spec!r}. Valid kinds: {_valid_kinds()}")
            steps.append(_parse_step(token))
    return Perturbation(tuple(steps))
