"""``item check``: run the chosen models on the shipped samples and compare with the hand-written expectations."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from item.console import emit, emit_json, guarded, info
from item.options import PRECISION_HELP, Precision, precision_value

RANDOM_CHECK_LINE = ("RANDOM WEIGHTS: a model has randomly initialised weights; the checks are expected to fail "
                     "(they test pretrained models)")


def _value(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.4f}"


def _strict(obj):
    """inf / NaN -> None so that --json parses with any JSON reader."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def check_cmd(
    models: str = typer.Option("default", help="Model preset: default, small, tiny-random, small-random, "
                               "default-random."),
    backbone: Optional[str] = typer.Option(None, help="Image-text backbone by name (`item backbones`)."),
    clip: Optional[str] = typer.Option(None, help="open_clip model name (overrides the preset)."),
    pretrained: Optional[str] = typer.Option(None, help="open_clip pretrained tag or a local checkpoint path."),
    captioner: Optional[str] = typer.Option(None, help="Captioner: HF id, local folder, random name or 'none'."),
    grounder: Optional[str] = typer.Option(None, help="Grounder: HF id, local folder, random name or 'none'."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    precision: Optional[Precision] = typer.Option(None, help=PRECISION_HELP + " The checks run in it; on the CPU "
                                                  "bf16 is also measured against fp32 (bf16_* checks) where the "
                                                  "models run in bf16 or the CPU computes bfloat16 natively.",
                                                  show_default=False),
    expectations: Optional[Path] = typer.Option(None, help="Another expectations file (the format of "
                                                "item/samples/expected.json; image paths relative to its "
                                                "folder). Default: the shipped samples."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
):
    """Check the models on the shipped samples: captions name the main object, boxes hit the annotated
    objects, CLIP ranks each sample's own description first, batching changes no box, (CUDA) fp16
    agrees with fp32, and (CPU) bfloat16 autocast agrees with fp32 (>= 95% same captions and grounding
    decisions, cosine >= 0.999). Reference checks compare the same weights with their libraries' own code paths:
    grounding against the family's transformers post-processing (same decision for >= 99% of nouns, boxes
    within 1 px), CLIP against open_clip's own transform and encode (cosine >= 0.999), captions against
    BLIP's generate() with its authors' settings (>= 95% identical). Samples are decoded as featurize
    decodes them (transparency over white). Exit status 0 when every check that ran passed, 1 otherwise."""
    from item.check import load_expectations, run_checks
    from item.featurize import load_models, resolve_models

    expected = load_expectations(expectations)  # a bad file is refused before any model loads
    spec = resolve_models(models, clip=clip, pretrained=pretrained, captioner=captioner, grounder=grounder,
                          backbone=backbone)
    if spec.random_weights:
        info(RANDOM_CHECK_LINE)
    info(f"loading models ({models}{', RANDOM WEIGHTS' if spec.random_weights else ''}) ...")
    loaded = load_models(spec, device, precision_value(precision))
    report = run_checks(loaded, expectations=expected, progress=info,
                        samples_dir=expectations.parent if expectations is not None else None)
    if as_json:
        emit_json(_strict(report.to_json()))
    else:
        if report.random_weights:
            emit(RANDOM_CHECK_LINE)
        for key, value in report.identity.items():
            emit(f"identity {key}={value}")
        for c in report.checks:
            if c.skipped:
                emit(f"SKIP  {c.name}: {c.skipped} (bound {c.op} {c.bound})")
            else:
                emit(f"{'PASS' if c.passed else 'FAIL'}  {c.name}: {_value(c.value)} (bound {c.op} {c.bound}; "
                     f"{c.what})")
        emit("all checks passed" if report.passed else "some checks failed")
    if not report.passed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("check")(guarded(check_cmd))
