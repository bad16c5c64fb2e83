"""``item check``: do the chosen models behave like working pretrained ones? Measured on the shipped samples.

The samples (``item/samples``: real photos and generated images, see ATTRIBUTION.md) come with expectations
written by hand beside them (``samples/expected.json``): each image's main objects with their boxes in pixels,
the words that name its main object, and a one-line description. The checks, each a measured value against a
bound (all bounds are this project's choice, documented here and in the README):

- ``captions``: the captioner's caption names the image's main object (one of its ``caption_names``, a plural
  matched by its singular) on at least 80% of the samples;
- ``grounding``: the grounder, prompted with the annotated nouns, puts the noun's box on one of the annotated
  boxes with IoU >= 0.5 for at least 70% of the annotated objects;
- ``clip_retrieval``: in CLIP, each sample's own description ranks first among all samples' descriptions
  for its image (text retrieval, top 1) on at least 90% of the samples;
- ``batch_invariance``: the grounder's boxes for all samples grounded in one call (batches of mixed sizes)
  lie within 1 pixel of the boxes found one image at a time, and the same nouns are grounded;
- ``fp16_agreement`` / ``fp16_cosine`` (CUDA only): the same featurize run in fp32 and under fp16 autocast
  gives the same captions and grounding decisions on at least 95% of the samples, and image and caption
  embeddings with cosine >= 0.999. On the CPU both are reported as skipped, with the reason;
- ``bf16_captions`` / ``bf16_grounding`` / ``bf16_cosine`` (CPU only; ``REFERENCE_COMPARISONS`` entry
  ``cpu_bf16``): the same models in fp32 and under bfloat16 autocast (``--precision bf16``) give the same
  caption on at least 95% of the samples, the same grounding decision for at least 95% of the annotated nouns
  (both ungrounded, or both grounded with boxes at IoU >= 0.5 to each other), and CLIP image and description
  embeddings with cosine >= 0.999 (the GPU path's bounds). Measured where the models run in bf16 or the CPU
  computes bfloat16 natively (``item.hardware.native_bfloat16``: what ``--precision auto`` picks bf16 on);
  elsewhere skipped with the reason.

Reference checks (``REFERENCE_COMPARISONS``, one entry each, code in ``reference.py``): the same models'
answers by their reference code path, on the user's real weights, so a departure of ITEM's code from the
libraries' shows on the user's machine:

- ``reference_grounding`` / ``reference_grounding_boxes``: ITEM's grounding of the annotated nouns (all
  samples in one call, as a run grounds them) against the family's transformers processor and
  post-processing one image at a time, with the per-noun rule DESIGN.md states: the same decision (and,
  where both ground a noun, box within 1 px and score within 1e-3) for >= 99% of the nouns, and the
  largest box difference <= 1 px;
- ``reference_clip``: image and description embeddings against open_clip's own eval transform and
  ``encode_image`` / ``encode_text`` in fp32: lowest cosine >= 0.999;
- ``reference_captions``: the captions of the featurize run against BLIP's ``generate`` with its authors'
  settings, one image at a time: identical on >= 95% of the samples (beam search in another batch shape
  may flip a near tie in fp16).

Samples are decoded exactly as featurize decodes them (``decode_image``: EXIF orientation, alpha composited
over white), so a transparent sample shows the pixels featurize sees.

Byte-identical samples (``duplicate_of``) count once. With random weights every check is expected to fail:
the report says so first (``random_weights``).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from item.errors import InputError

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"
EXPECTED_FILE = SAMPLES_DIR / "expected.json"
EXPECTATIONS_FORMAT = "item-sample-expectations"

CAPTION_BOUND = 0.80
GROUNDING_BOUND = 0.70
GROUNDING_IOU = 0.5
RETRIEVAL_BOUND = 0.90
BATCH_BOUND_PX = 1.0
FP16_AGREEMENT_BOUND = 0.95
FP16_COSINE_BOUND = 0.999
REFERENCE_GROUNDING_BOUND = 0.99
REFERENCE_BOX_PX = 1.0
REFERENCE_SCORE_TOL = 1e-3
REFERENCE_CLIP_BOUND = 0.999
REFERENCE_CAPTION_BOUND = 0.95
BF16_CAPTION_BOUND = 0.95
BF16_GROUNDING_BOUND = 0.95
BF16_BOX_IOU = 0.5
BF16_COSINE_BOUND = 0.999


@dataclass
class Check:
    """One check: ``passed`` when ``value`` ``op`` ``bound`` holds (op '>=' or '<='); skipped checks have no
    value and count as neither passed nor failed (``skipped`` says why)."""

    name: str
    passed: bool | None
    value: float | None
    bound: float
    op: str = ">="
    what: str = ""
    skipped: str = ""


@dataclass
class CheckReport:
    """What ``run_checks`` measured. ``passed``: every check that ran passed."""

    random_weights: bool
    device: str
    identity: dict
    models: dict
    checks: list[Check] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)  # per sample: caption, named, boxes found
    precision: str = ""  # the arithmetic the models ran the checks in (the identity's precision)

    @property
    def passed(self) -> bool:
        ran = [c for c in self.checks if not c.skipped]
        return bool(ran) and all(c.passed for c in ran)

    def to_json(self) -> dict:
        return {"random_weights": self.random_weights, "passed": self.passed, "device": self.device,
                "precision": self.precision, "identity": self.identity, "models": self.models,
                "checks": [asdict(c) for c in self.checks], "samples": self.samples}


def load_expectations(path: str | Path | None = None) -> dict:
    """The expectations file (``samples/expected.json`` by default) as a dict; InputError when it is not one."""
    path = Path(path) if path is not None else EXPECTED_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read the sample expectations ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != EXPECTATIONS_FORMAT or not data.get("samples"):
        raise InputError(f"{path}: not an ITEM sample expectations file (format {EXPECTATIONS_FORMAT!r})")
    for key, e in data["samples"].items():
        ok = (isinstance(e, dict) and isinstance(e.get("description"), str) and isinstance(e.get("caption_names"), list)
              and isinstance(e.get("objects"), list)
              and all(isinstance(o, dict) and isinstance(o.get("noun"), str) and o.get("boxes")
                      and all(isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b)
                              for b in o["boxes"]) for o in e["objects"]))
        if not ok:
            raise InputError(f"{path}: sample {key!r} needs a description, caption_names and objects "
                             "(each a noun and boxes of four numbers)")
    return data


def _words(text: str) -> list[str]:
    """Lower-case words of ``text``, each also in its singular form when it ends in s."""
    out = []
    for w in re.findall(r"[a-z]+", str(text).lower()):
        out.append(w)
        if len(w) > 3 and w.endswith("s"):
            out.append(w[:-1])
    return out


def names_main_object(caption: str, names: list[str]) -> bool:
    """True when ``caption`` holds one of ``names`` as a word (a plural counts as its singular)."""
    want = {n.lower() for n in names} | {n.lower()[:-1] for n in names if len(n) > 3 and n.lower().endswith("s")}
    return any(w in want for w in _words(caption))


def iou(a, b) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _fraction(flags: list[bool]) -> float:
    return float(sum(flags)) / len(flags) if flags else 0.0


def _check(name: str, value: float, bound: float, op: str, what: str) -> Check:
    passed = value >= bound if op == ">=" else value <= bound
    return Check(name, bool(passed), round(float(value), 6), bound, op, what)


def _box_tuple(b):
    return None if b is None else (float(b.x0), float(b.y0), float(b.x1), float(b.y1))


def run_checks(models, *, expectations: dict | None = None, samples_dir: str | Path | None = None,
               progress=None, cpu_bf16: bool | None = None) -> CheckReport:
    """Run every check on the samples with loaded ``models`` (``item.featurize.Models``, or anything with the
    same parts: a stand-in passes through the same interfaces). ``progress(message)`` is called before each
    stage. ``cpu_bf16``: measure bfloat16 autocast against fp32 on the CPU (the bf16_* checks); None: where the
    models run in bf16 or the CPU computes bfloat16 natively. Returns the CheckReport; raises InputError when
    the expectations or the samples cannot be read."""
    from item.featurize import FeaturizeConfig, compat_for, featurize_images
    from item.featurize.inputs.decode import DecodeError, decode_image
    from item.store import schema

    say = progress or (lambda message: None)
    expectations = expectations or load_expectations()
    root = Path(samples_dir) if samples_dir is not None else SAMPLES_DIR
    keys = [k for k, e in expectations["samples"].items() if not e.get("duplicate_of")]
    images = []
    for k in keys:
        try:
            images.append(decode_image(root / k).image)  # featurize's own decoding
        except DecodeError as exc:
            raise InputError(f"{root / k}: cannot read the sample ({exc})") from None
    entries = [expectations["samples"][k] for k in keys]
    config = FeaturizeConfig(workers=0)
    compat = compat_for(models, config)
    report = CheckReport(
        random_weights=bool(compat["random_weights"]), device=str(models.device),
        identity={k: compat[k] for k in ("clip_model", "clip_pretrained", "captioner", "grounder")
                  + tuple(schema.IDENTITY_KEYS)},
        models={"spec": models.spec.to_json() if hasattr(models.spec, "to_json") else str(models.spec)},
        precision=str(compat["precision"]))
    per_sample = [{"sample": k} for k in keys]

    # captions (and the CLIP embeddings of the whole featurize path, reused by fp16 against fp32)
    say(f"featurizing {len(images)} samples")
    records = featurize_images(images, models=models, config=config) if models.captioner is not None else None
    if records is not None:
        named = []
        for rec, e, row in zip(records, entries, per_sample):
            ok = rec.status == schema.STATUS_OK and names_main_object(rec.caption, e["caption_names"])
            row.update(caption=rec.caption, names_main_object=bool(ok))
            named.append(ok)
        report.checks.append(_check("captions", _fraction(named), CAPTION_BOUND, ">=",
                                    "fraction of samples whose caption names the main object"))
    else:
        report.checks.append(Check("captions", None, None, CAPTION_BOUND, what="captions name the main object",
                                   skipped="no captioner (--captioner none)"))

    # grounding of the annotated nouns, all samples in one call and one at a time
    grounder = models.grounder
    if grounder is not None:
        say("grounding the annotated objects")
        nouns = [[o["noun"] for o in e["objects"]] for e in entries]
        together = grounder.ground(images, nouns)
        alone = [grounder.ground([im], [n])[0] for im, n in zip(images, nouns)]
        hits, shift, same_decisions = [], 0.0, True
        for e, boxes, single, row in zip(entries, together, alone, per_sample):
            found = []
            for o, b, s in zip(e["objects"], boxes, single):
                best = max((iou(_box_tuple(b), want) for want in o["boxes"]), default=0.0) if b is not None else 0.0
                hits.append(best >= GROUNDING_IOU)
                found.append({"noun": o["noun"], "box": _box_tuple(b), "iou": round(best, 4)})
                if (b is None) != (s is None):
                    same_decisions = False
                elif b is not None:
                    shift = max(shift, max(abs(x - y) for x, y in zip(_box_tuple(b), _box_tuple(s))))
            row["objects"] = found
        report.checks.append(_check("grounding", _fraction(hits), GROUNDING_BOUND, ">=",
                                    f"fraction of annotated objects boxed with IoU >= {GROUNDING_IOU}"))
        value = shift if same_decisions else float("inf")
        report.checks.append(_check("batch_invariance", value, BATCH_BOUND_PX, "<=",
                                    "largest box shift (px) between grounding all samples in one call and "
                                    "one at a time (inf: other nouns grounded)"))
    else:
        for name, bound in (("grounding", GROUNDING_BOUND), ("batch_invariance", BATCH_BOUND_PX)):
            report.checks.append(Check(name, None, None, bound, "<=" if name == "batch_invariance" else ">=",
                                       skipped="no grounder (--grounder none)"))

    # CLIP: own description first among all descriptions
    say("encoding images and descriptions with CLIP")
    import numpy as np
    import torch

    clip = models.clip
    pixels = torch.stack([clip.preprocess(im) for im in images])
    image_emb = clip.encode_images(pixels)
    text_emb, _ = clip.encode_texts([e["description"] for e in entries])
    sims = image_emb @ text_emb.T
    top = sims.argmax(axis=1)
    report.checks.append(_check("clip_retrieval", _fraction(list(top == np.arange(len(keys)))), RETRIEVAL_BOUND,
                                ">=", "fraction of samples whose own description ranks first among all "
                                "samples' descriptions"))

    # each model against its reference code path
    ctx = ReferenceInputs(models, images, entries, records, together if grounder is not None else None,
                          config=config, cpu_bf16=cpu_bf16, progress=say)
    for name, compare in REFERENCE_COMPARISONS:
        say(f"comparing with the reference: {name}")
        report.checks.extend(compare(ctx))

    # fp16 autocast against fp32, CUDA only
    if str(models.device).startswith("cuda") and records is not None:
        from item.featurize import full_precision

        say("featurizing again in fp32")
        with full_precision():
            exact = featurize_images(images, models=models, config=config)
        agree, cosines = [], []
        for a, b in zip(records, exact):
            ga = [o.box is not None for o in a.objects]
            gb = [o.box is not None for o in b.objects]
            agree.append(a.caption == b.caption and a.nouns == b.nouns and ga == gb)
            if a.image_emb is not None and b.image_emb is not None:
                cosines += [float(np.dot(a.image_emb, b.image_emb)), float(np.dot(a.caption_emb, b.caption_emb))]
        report.checks.append(_check("fp16_agreement", _fraction(agree), FP16_AGREEMENT_BOUND, ">=",
                                    "fraction of samples with the same caption and grounding decisions in "
                                    "fp16 autocast and fp32"))
        report.checks.append(_check("fp16_cosine", min(cosines) if cosines else 0.0, FP16_COSINE_BOUND, ">=",
                                    "lowest cosine between fp16-autocast and fp32 image and caption embeddings"))
    else:
        why = ("runs on CUDA only (the CPU's bfloat16 autocast: bf16_captions, bf16_grounding, bf16_cosine)"
               if not str(models.device).startswith("cuda")
               else "needs a captioner")
        report.checks.append(Check("fp16_agreement", None, None, FP16_AGREEMENT_BOUND, skipped=why,
                                   what="same captions and grounding decisions in fp16 autocast and fp32"))
        report.checks.append(Check("fp16_cosine", None, None, FP16_COSINE_BOUND, skipped=why,
                                   what="cosine between fp16-autocast and fp32 embeddings"))
    report.samples = per_sample
    return report


# ------------------------------------------------------------------ reference comparisons


@dataclass
class ReferenceInputs:
    """What a reference comparison gets: the loaded models, the decoded samples, their expectations, the
    featurize run's records (None without a captioner) and ITEM's grounding of the annotated nouns."""

    models: object
    images: list
    entries: list[dict]
    records: list | None
    grounding: list | None
    config: object = None  # the FeaturizeConfig the records were made with
    cpu_bf16: bool | None = None  # run_checks' cpu_bf16
    progress: object = None  # progress(message), or None


def _skipped(name: str, bound: float, what: str, why: str, op: str = ">=") -> Check:
    return Check(name, None, None, bound, op, what, skipped=why)


def _reference_grounding(ctx: ReferenceInputs) -> list[Check]:
    from item.check import reference

    what = ("fraction of annotated nouns with ITEM's decision (box within 1 px, score within 1e-3) by the "
            "family's transformers post-processing and stated per-noun rule")
    what_px = "largest box difference (px) against the reference among nouns both ground"
    g = ctx.models.grounder
    if g is None:
        why = "no grounder (--grounder none)"
    elif getattr(g, "family", "") not in reference.GROUNDING_REFERENCES:
        why = f"no reference path for grounder family {getattr(g, 'family', '?')!r}"
    else:
        why = ""
    if why:
        return [_skipped("reference_grounding", REFERENCE_GROUNDING_BOUND, what, why),
                _skipped("reference_grounding_boxes", REFERENCE_BOX_PX, what_px, why, "<=")]
    agree = total = 0
    shift = 0.0
    for im, e, ours in zip(ctx.images, ctx.entries, ctx.grounding):
        theirs = reference.reference_boxes(g, im, [o["noun"] for o in e["objects"]])
        a, n, d = reference.agreement(ours, theirs, REFERENCE_BOX_PX, REFERENCE_SCORE_TOL)
        agree, total, shift = agree + a, total + n, max(shift, d)
    return [_check("reference_grounding", agree / total if total else 1.0, REFERENCE_GROUNDING_BOUND, ">=", what),
            _check("reference_grounding_boxes", shift, REFERENCE_BOX_PX, "<=", what_px)]


def _reference_clip(ctx: ReferenceInputs) -> list[Check]:
    import numpy as np
    import torch

    from item.check import reference

    what = ("lowest cosine between ITEM's image / description embeddings and open_clip's own transform and "
            "encode (fp32)")
    clip = ctx.models.clip
    if getattr(clip, "model", None) is None or not hasattr(getattr(clip.model, "visual", None), "preprocess_cfg"):
        return [_skipped("reference_clip", REFERENCE_CLIP_BOUND, what, "not an open_clip model")]
    texts = [e["description"] for e in ctx.entries]
    ours_img = clip.encode_images(torch.stack([clip.preprocess(im) for im in ctx.images]))
    ours_txt, _ = clip.encode_texts(texts)
    ref_img = reference.clip_image_embeddings(clip, ctx.images)
    ref_txt = reference.clip_text_embeddings(clip, texts)
    cos = np.concatenate([(ours_img * ref_img).sum(1), (ours_txt * ref_txt).sum(1)])
    return [_check("reference_clip", float(cos.min()), REFERENCE_CLIP_BOUND, ">=", what)]


def _reference_captions(ctx: ReferenceInputs) -> list[Check]:
    from item.check import reference

    what = "fraction of samples whose caption equals BLIP's generate() with its authors' settings"
    c = ctx.models.captioner
    if c is None or ctx.records is None:
        why = "no captioner (--captioner none)"
    elif getattr(c, "model", None) is None or getattr(c, "processor", None) is None:
        why = "not a BLIP captioner"
    elif getattr(c, "decoding", "") != "authors":
        why = f"captions decoded as {getattr(c, 'decoding', '?')!r}; the reference is the authors' decoding"
    else:
        why = ""
    if why:
        return [_skipped("reference_captions", REFERENCE_CAPTION_BOUND, what, why)]
    theirs = reference.blip_captions(c, ctx.images)
    same = [rec.caption == t for rec, t in zip(ctx.records, theirs)]
    return [_check("reference_captions", _fraction(same), REFERENCE_CAPTION_BOUND, ">=", what)]


def _bf16_skip_reason(ctx: ReferenceInputs) -> str:
    """Why bfloat16 against fp32 is not measured here ('' when it is)."""
    from item.featurize.models.hub import BF16_AUTOCAST

    if str(ctx.models.device).startswith("cuda"):
        return "CPU precision only (CUDA runs fp16 autocast: fp16_agreement, fp16_cosine)"
    if ctx.cpu_bf16 is not None:
        return "" if ctx.cpu_bf16 else "not asked for"
    if getattr(ctx.models, "precision", "") == BF16_AUTOCAST:
        return ""
    from item.hardware import native_bfloat16

    if native_bfloat16():
        return ""
    return ("this CPU does not compute bfloat16 natively (torch.cpu reports neither AVX512-BF16 nor AMX, ARM no "
            "BF16), so --precision auto stays fp32; --precision bf16 measures it anyway")


def _cpu_bf16(ctx: ReferenceInputs) -> list[Check]:
    """bfloat16 autocast against fp32 on the CPU with the same loaded models: captions of the featurize run,
    grounding decisions on the annotated nouns, CLIP image and description embeddings."""
    import numpy as np
    import torch

    from item.featurize import featurize_images
    from item.featurize.models.hub import BF16_AUTOCAST, FP32, run_precision

    what_cap = "fraction of samples with the same caption under bfloat16 autocast and in fp32"
    what_gr = (f"fraction of annotated nouns with the same grounding decision under bfloat16 autocast and in fp32 "
               f"(both ungrounded, or boxes at IoU >= {BF16_BOX_IOU})")
    what_cos = "lowest cosine between bfloat16-autocast and fp32 CLIP image and description embeddings"
    names = (("bf16_captions", BF16_CAPTION_BOUND, what_cap), ("bf16_grounding", BF16_GROUNDING_BOUND, what_gr),
             ("bf16_cosine", BF16_COSINE_BOUND, what_cos))
    why = _bf16_skip_reason(ctx)
    if why:
        return [_skipped(n, b, w, why) for n, b, w in names]
    say = ctx.progress or (lambda message: None)
    models = ctx.models
    # The run's own outputs are in the models' precision; the other side is computed under run_precision().
    own = getattr(models, "precision", "") or FP32
    other = FP32 if own == BF16_AUTOCAST else BF16_AUTOCAST

    def sides(fn):
        mine = fn()
        with run_precision(other):
            theirs = fn()
        return (mine, theirs) if own == BF16_AUTOCAST else (theirs, mine)  # (bf16, fp32)

    out = []
    if ctx.records is not None:
        say(f"featurizing the samples again in {other}")
        with run_precision(other):
            again = featurize_images(ctx.images, models=models, config=ctx.config)
        same = [a.caption == b.caption for a, b in zip(ctx.records, again)]
        out.append(_check("bf16_captions", _fraction(same), BF16_CAPTION_BOUND, ">=", what_cap))
    else:
        out.append(_skipped("bf16_captions", BF16_CAPTION_BOUND, what_cap, "no captioner (--captioner none)"))
    if models.grounder is not None and ctx.grounding is not None:
        say(f"grounding the annotated objects in {other}")
        nouns = [[o["noun"] for o in e["objects"]] for e in ctx.entries]
        with run_precision(other):
            again = models.grounder.ground(ctx.images, nouns)
        bf16_boxes, fp32_boxes = (ctx.grounding, again) if own == BF16_AUTOCAST else (again, ctx.grounding)
        agree = []
        for xs, ys in zip(bf16_boxes, fp32_boxes):
            for a, b in zip(xs, ys):
                agree.append((a is None and b is None) or (a is not None and b is not None
                                                           and iou(_box_tuple(a), _box_tuple(b)) >= BF16_BOX_IOU))
        out.append(_check("bf16_grounding", _fraction(agree), BF16_GROUNDING_BOUND, ">=", what_gr))
    else:
        out.append(_skipped("bf16_grounding", BF16_GROUNDING_BOUND, what_gr, "no grounder (--grounder none)"))
    say(f"encoding the samples and descriptions in {other}")
    clip = models.clip
    pixels = torch.stack([clip.preprocess(im) for im in ctx.images])
    texts = [e["description"] for e in ctx.entries]
    img_bf16, img_fp32 = sides(lambda: clip.encode_images(pixels))
    txt_bf16, txt_fp32 = sides(lambda: clip.encode_texts(texts)[0])
    cos = np.concatenate([(img_bf16 * img_fp32).sum(1), (txt_bf16 * txt_fp32).sum(1)])
    out.append(_check("bf16_cosine", float(cos.min()) if cos.size else 0.0, BF16_COSINE_BOUND, ">=", what_cos))
    return out


#: The reference comparisons, in report order: (name, function of ReferenceInputs -> list of Checks).
#: A new comparison (another precision, another model part) is one more entry.
REFERENCE_COMPARISONS = (
    ("grounding", _reference_grounding),
    ("clip", _reference_clip),
    ("captions", _reference_captions),
    ("cpu_bf16", _cpu_bf16),
)
