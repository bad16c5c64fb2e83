"""Grounder: Grounding DINO (transformers) finds one box per caption noun.

The prompt for nouns [man, bike, road] is "man . bike . road ." (Grounding DINO's phrase format). Each of
the model's queries has a sigmoid probability per text token. For noun j and query q:

- noun score s[q, j] = max probability over the tokens of noun j's span (found through the tokenizer's
  character offsets, never by matching decoded label strings);
- query score b[q] = max probability over the tokens of all noun spans (Grounding DINO's box score).

Query q is a candidate for noun j when b[q] >= box_threshold and s[q, j] >= text_threshold (the same two
thresholds Grounding DINO's own post-processing uses) and its box covers at least MIN_BOX_AREA pixels of the
real image (not of the padding added to small or elongated images); noun j's box is its candidate with the
highest s[q, j], and Box.score is that s[q, j]. A noun with no candidate is ungrounded (None). Nouns whose
span falls past the text model's max_text_len tokens are ungrounded too, and so are all nouns of an image
`not_groundable` refuses (too elongated).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from item.errors import InputError
from item.featurize.captioner import autocast_for, load_model_or_random


@dataclass(frozen=True)
class Box:
    """A box in pixels of the original image, clipped inside it: 0 <= x0 < x1 <= width, 0 <= y0 < y1 <= height,
    covering at least MIN_BOX_AREA pixels of it (or the whole of a smaller image)."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float


def build_prompt(nouns: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """"man . bike ." and each noun's (start, end) character span in it. Nouns are lower-cased, whitespace-normalised."""
    parts, spans, pos = [], [], 0
    for noun in nouns:
        clean = " ".join(str(noun).lower().split()) or "object"
        spans.append((pos, pos + len(clean)))
        parts.append(clean + " .")
        pos += len(clean) + 3
    return " ".join(parts), spans


#: Images more elongated than this are padded (right or bottom, grey) before grounding: the detector's
#: resize caps the long side, and a 10000x10 image would otherwise shrink to feature maps of zero or
#: one cell, which Grounding DINO's group norms cannot take. Boxes are mapped back to the image.
MAX_ASPECT = 3.0
#: Images are also padded to at least this many pixels a side (very small images, same reason).
MIN_SIDE = 32
#: Beyond this aspect ratio an image is not grounded at all (its nouns are stored ungrounded, the row's
#: reason says why): padded to MAX_ASPECT it would be mostly padding, and a 1x50000 image padded at full
#: size took 16667x50000 pixels (gigabytes) before the detector's own resize.
MAX_GROUND_ASPECT = 20.0
#: The padded canvas is never larger than this many pixels: a padded image is shrunk first. The bound sits
#: well above what the detector's resize keeps (800x1333 for Grounding DINO), so only the padding is saved.
MAX_CANVAS_PIXELS = 2666 * 2666
#: A box whose area inside the real image (not the padding) is below this many pixels is no box: its noun
#: is ungrounded (for images smaller than this, the box must cover the whole image).
MIN_BOX_AREA = 16.0


def not_groundable(width: int, height: int) -> str:
    """Why an image of this size is not grounded ('' when it is)."""
    if width < 1 or height < 1:
        return "not grounded: empty image"
    aspect = max(width / height, height / width)
    if aspect > MAX_GROUND_ASPECT:
        return (f"not grounded: aspect ratio {aspect:.0f}:1 is beyond the grounder's "
                f"{MAX_GROUND_ASPECT:.0f}:1")
    return ""


def letterbox(image):
    """(padded RGB image, (padded width, padded height) in the original image's pixels).

    The original sits at the top-left corner. When padding is needed and the canvas would exceed
    MAX_CANVAS_PIXELS, the image is shrunk first, so the canvas never does.
    """
    from PIL import Image

    w, h = image.size
    pw = max(w, MIN_SIDE, int(np.ceil(h / MAX_ASPECT)))
    ph = max(h, MIN_SIDE, int(np.ceil(w / MAX_ASPECT)))
    if (pw, ph) == (w, h):
        return image, (w, h)
    scale = min(1.0, float(np.sqrt(MAX_CANVAS_PIXELS / (pw * ph))))
    sw, sh = w, h
    if scale < 1.0:
        sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
        image = image.resize((sw, sh), Image.BICUBIC)
    cw = max(sw, MIN_SIDE, int(np.ceil(sh / MAX_ASPECT)))
    ch = max(sh, MIN_SIDE, int(np.ceil(sw / MAX_ASPECT)))
    canvas = Image.new("RGB", (cw, ch), (124, 116, 104))
    canvas.paste(image, (0, 0))
    return canvas, (cw * w / sw, ch * h / sh)


def _pixel_boxes(rel, width: int, height: int, pad_w: float, pad_h: float):
    """(n, 4) relative cx, cy, w, h in a (pad_w, pad_h) canvas -> ((n, 4) boxes clipped to the image,
    (n,) area of each box inside the real image). A box in the padding has area 0."""
    import torch

    cx, cy, bw, bh = rel.unbind(-1)
    x0 = ((cx - bw / 2) * pad_w).clamp(0, width)
    x1 = ((cx + bw / 2) * pad_w).clamp(0, width)
    y0 = ((cy - bh / 2) * pad_h).clamp(0, height)
    y1 = ((cy + bh / 2) * pad_h).clamp(0, height)
    area = (x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0)
    return torch.stack([x0, y0, x1, y1], -1), area


def select_boxes(p, span_mask, rel_boxes, size: tuple[int, int], padded_size: tuple[float, float],
                 box_threshold: float, text_threshold: float) -> list[Box | None]:
    """One Box (or None) per noun from one image's detector output (the rule in the module docstring).

    p: (n_queries, n_tok) float token probabilities; span_mask: (n_nouns, n_tok) bool, each noun's tokens;
    rel_boxes: (n_queries, 4) float cx, cy, w, h relative to the padded image; size: the real image's
    (width, height); padded_size: the padded canvas's (width, height) in the real image's pixels.
    """
    import torch

    width, height = size
    neg = torch.tensor(-1.0)
    noun_score = torch.where(span_mask[None], p[:, None, :], neg).amax(-1)  # (n_queries, n_nouns)
    any_noun = span_mask.any(0)
    query_score = torch.where(any_noun[None], p, neg).amax(-1)  # (n_queries,)
    ok = (query_score[:, None] >= box_threshold) & (noun_score >= text_threshold)
    ok &= span_mask.any(1)[None]  # a noun truncated out of the prompt stays ungrounded
    px, area = _pixel_boxes(rel_boxes, width, height, *padded_size)
    ok &= (area >= min(MIN_BOX_AREA, width * height))[:, None]  # boxes in the padding are no boxes
    cand = torch.where(ok, noun_score, torch.tensor(-2.0))
    best_score, best_q = cand.max(0)  # (n_nouns,)
    out: list[Box | None] = []
    for j in range(span_mask.shape[0]):
        if best_score[j] < -1.5:
            out.append(None)
            continue
        x0, y0, x1, y1 = px[best_q[j]].tolist()
        out.append(Box(x0, y0, x1, y1, float(noun_score[best_q[j], j])))
    return out


@dataclass
class GroundImage:
    """One image made ready for the detector (picklable: made in the decode workers).

    pixel_values: (3, h, w) float32 tensor, resized and normalised by the model's own image processor.
    size: (width, height) of the original image; padded: (width, height) of the canvas it was placed on,
    in the original image's pixels (`letterbox`).
    """

    pixel_values: object
    size: tuple[int, int]
    padded: tuple[float, float]


class GroundPrep:
    """Picklable image preparation of a grounder (letterbox, resize, normalise): PIL image -> GroundImage.

    Runs in the decode worker processes, like CLIP's preprocessing, so the main process only tokenises,
    runs the forward and selects boxes. Images the grounder does not take (`not_groundable`) give None.
    """

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, image) -> GroundImage | None:
        if not_groundable(*image.size):
            return None
        original = image.convert("RGB")
        rgb, padded = letterbox(original)
        pix = self.image_processor(images=[rgb], return_tensors="pt")["pixel_values"][0]
        return GroundImage(pix.contiguous(), original.size, padded)


def collate_pixels(prepared: list[GroundImage]):
    """(pixel_values (n, 3, H, W) float32, pixel_mask (n, H, W) int64): zero padding at the right and bottom
    up to the batch's largest height and width, mask 1 on real pixels, as the image processor pads a batch."""
    import torch

    h = max(int(g.pixel_values.shape[1]) for g in prepared)
    w = max(int(g.pixel_values.shape[2]) for g in prepared)
    pix = torch.zeros((len(prepared), 3, h, w), dtype=torch.float32)
    mask = torch.zeros((len(prepared), h, w), dtype=torch.int64)
    for b, g in enumerate(prepared):
        _, gh, gw = g.pixel_values.shape
        pix[b, :, :gh, :gw] = g.pixel_values
        mask[b, :gh, :gw] = 1
    return pix, mask


def set_ground_size(image_processor, ground_size: int | None) -> int:
    """Set the detector's input size (shortest side; longest side capped at the same 1333/800 ratio as the
    model's default) and return the shortest side in effect. None keeps the processor's own size. The new
    size keeps the type of the old one, so that the recorded ``input_size`` has the same keys either way."""
    size = image_processor.size
    if ground_size:
        if int(ground_size) < MIN_SIDE:
            raise InputError(f"--ground-size must be at least {MIN_SIDE} pixels, got {ground_size}")
        s = int(ground_size)
        new = {"shortest_edge": s, "longest_edge": int(round(s * 1333 / 800))}
        image_processor.size = new if isinstance(size, dict) else type(size)(**new)
        size = image_processor.size
    shortest = size.get("shortest_edge") if hasattr(size, "get") else getattr(size, "shortest_edge", None)
    return int(shortest or 0)


def to_device(tensor, device: str):
    """Host tensor -> device; through pinned memory with a non-blocking copy on CUDA."""
    if str(device).startswith("cuda"):
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


class PreparedGrounder:
    """What every grounder shares: ``ground`` is ``prepare`` (in the decode workers in a run) then
    ``ground_prepared`` (the forward and box selection), which subclasses implement."""

    def ground(self, images, nouns: list[list[str]]) -> list[list[Box | None]]:
        """PIL images and each image's nouns -> for each image, one Box (or None: ungrounded) per noun."""
        if len(images) != len(nouns):
            raise InputError(f"ground got {len(images)} images but {len(nouns)} noun lists")
        return self.ground_prepared([self.prepare(im) if n else None for im, n in zip(images, nouns)], nouns)

    @staticmethod
    def _start(prepared, nouns: list[list[str]]) -> tuple[list[list[Box | None]], list[int]]:
        """(all-ungrounded result, indices of the images with nouns and a grounder input)."""
        if len(prepared) != len(nouns):
            raise InputError(f"ground got {len(prepared)} images but {len(nouns)} noun lists")
        result: list[list[Box | None]] = [[None] * len(n) for n in nouns]
        return result, [i for i, n in enumerate(nouns) if n and prepared[i] is not None]


class Grounder(PreparedGrounder):
    """Grounding DINO, batched: one forward pass per `ground_prepared` call.

    info: JSON-able: id, revision or weights_sha256 where known, random_weights, thresholds, input size.
    prepare: the picklable image preparation (`GroundPrep`); `ground_prepared` takes its outputs.
    """

    family = "grounding-dino"

    def __init__(self, model, processor, info: dict, device: str, box_threshold: float, text_threshold: float):
        self.model = model
        self.processor = processor
        self.info = info
        self.device = device
        self.box_threshold = float(box_threshold)
        self.text_threshold = float(text_threshold)
        self.max_text_len = int(getattr(model.config, "max_text_len", 256))
        self.prepare = GroundPrep(processor.image_processor)

    @property
    def ground_size(self) -> int:
        return set_ground_size(self.processor.image_processor, None)

    def ground_prepared(self, prepared: list[GroundImage | None], nouns: list[list[str]]) -> list[list[Box | None]]:
        """`prepare` outputs and nouns -> boxes, as `ground`; None (no nouns, or not groundable) grounds nothing."""
        import torch

        result, todo = self._start(prepared, nouns)
        if not todo:
            return result
        prompts, spans = zip(*(build_prompt(nouns[i]) for i in todo))

        tok = self.processor.tokenizer(
            list(prompts), padding="longest", truncation=True, max_length=self.max_text_len,
            return_offsets_mapping=True, return_tensors="pt",
        )
        offsets = tok.pop("offset_mapping")
        pixel_values, pixel_mask = collate_pixels([prepared[i] for i in todo])
        inputs = {k: to_device(v, self.device)
                  for k, v in {**tok, "pixel_values": pixel_values, "pixel_mask": pixel_mask}.items()}
        with torch.inference_mode(), autocast_for(self.device):
            out = self.model(**inputs)
        probs = out.logits.float().sigmoid().cpu()  # (batch, n_queries, max_text_len)
        boxes = out.pred_boxes.float().cpu()  # (batch, n_queries, 4) cx, cy, w, h relative to the image

        special = tok["attention_mask"].new_zeros(tok["attention_mask"].shape, dtype=torch.bool)
        special_ids = set(self.processor.tokenizer.all_special_ids)
        for t_id in special_ids:
            special |= tok["input_ids"] == t_id
        for b, i in enumerate(todo):
            width, height = prepared[i].size
            pad_w, pad_h = prepared[i].padded
            n_tok = min(probs.shape[-1], offsets.shape[1])
            starts, ends = offsets[b, :n_tok, 0], offsets[b, :n_tok, 1]
            real = ~special[b, :n_tok] & (ends > starts)
            masks = []
            for s, e in spans[b]:
                masks.append(real & (starts >= s) & (ends <= e))
            span_mask = torch.stack(masks)  # (n_nouns, n_tok) bool
            result[i] = select_boxes(probs[b, :, :n_tok], span_mask, boxes[b], (width, height), (pad_w, pad_h),
                                     self.box_threshold, self.text_threshold)
        return result


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

    from item.featurize.owl import OWL_RANDOM_NAMES

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
        from item.featurize.owl import load_owlv2

        return load_owlv2(name_or_path, device, box_threshold=box_threshold, ground_size=ground_size)
    from transformers import AutoProcessor, GroundingDinoForObjectDetection

    from item.featurize import tiny

    model, processor, source, random_weights = load_model_or_random(
        "grounder", name_or_path, tiny.build_grounding_dino, GroundingDinoForObjectDetection, AutoProcessor,
        "--grounder")
    shortest = set_ground_size(processor.image_processor, ground_size)
    model.to(device)
    size = getattr(getattr(processor, "image_processor", None), "size", None)
    info = {
        **source, "class": type(model).__name__, "family": "grounding-dino", "random_weights": random_weights,
        "ground_size": shortest,
        "input_size": dict(size) if size is not None else None,
        "min_box_area": MIN_BOX_AREA, "max_ground_aspect": MAX_GROUND_ASPECT,
        "box_threshold": float(box_threshold), "text_threshold": float(text_threshold),
        "prompt": "noun . noun . (lower-case)", "noun_score": "max token probability over the noun's span",
    }
    return Grounder(model, processor, info, str(device), box_threshold, text_threshold)
