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


from item.featurize.models.grounding import (MAX_GROUND_ASPECT, MIN_BOX_AREA, Box, GroundImage, GroundPrep,
                                             PreparedGrounder, _pixel_boxes, collate_pixels, set_ground_size)
from item.featurize.models.hub import autocast_for, load_model_or_random, to_device


def build_prompt(nouns: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """"man . bike ." and each noun's (start, end) character span in it. Nouns are lower-cased, whitespace-normalised."""
    parts, spans, pos = [], [], 0
    for noun in nouns:
        clean = " ".join(str(noun).lower().split()) or "object"
        spans.append((pos, pos + len(clean)))
        parts.append(clean + " .")
        pos += len(clean) + 3
    return " ".join(parts), spans


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


def load_grounding_dino(name_or_path: str, device: str = "cpu", box_threshold: float = 0.35,
                        text_threshold: float = 0.25, ground_size: int | None = None) -> Grounder:
    """Grounding DINO from a hub id, a local `save_pretrained` folder, or a random builder name
    (`item.featurize.models.grounders.load_grounder` picks the family; see its arguments)."""
    from transformers import AutoProcessor, GroundingDinoForObjectDetection

    from item.featurize.models import tiny

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
