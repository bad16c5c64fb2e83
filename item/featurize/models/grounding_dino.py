"""Grounder: Grounding DINO (transformers) finds one box per caption noun.

The prompt for nouns [man, bike, road] is "man . bike . road ." (Grounding DINO's phrase format). Each of
the model's queries has a sigmoid probability per text token. For noun j and query q:

- noun score s[q, j] = the mean probability over the tokens of noun j's span (found through the
  tokenizer's character offsets, never by matching decoded label strings). This is how the detector's
  authors score a phrase: IDEA-Research/GroundingDINO's COCO evaluation (demo/test_ap_on_coco.py,
  ``PostProcessCocoGrounding``, read at ade33b7) multiplies the token probabilities by a positive map
  normalised over each category's tokens, MMDetection's Grounding DINO head (mmdet/models/dense_heads/
  grounding_dino_head.py ``_predict_by_feat_single`` through atss_vlfusion_head.py
  ``convert_grounding_to_cls_scores``, read at 0c5238c) takes ``.mean(-1)`` over an entity's tokens, as
  GLIP's MEAN aggregation and MDETR's normalised positive map do. transformers'
  ``post_process_grounded_object_detection`` has no per-noun score (it labels a query with every token
  above the text threshold); a one-token noun scores the same either way.
- box score b[q] = max probability over every valid prompt token: [CLS], [SEP] and the "." delimiters
  included, padding excluded (what transformers' ``post_process_grounded_object_detection`` and the authors'
  ``predict`` keep a query by).

Query q is kept when b[q] > box_threshold (strictly, as transformers keeps it); it is a candidate for noun j
when also s[q, j] > text_threshold and its box covers at least MIN_BOX_AREA pixels of the image; noun j's box
is its candidate with the highest s[q, j]. Box.score is that s[q, j] (the store's object ``score``),
Box.box_score that query's b[q]. A noun with no candidate is ungrounded (None). Nouns whose span falls past
the text model's max_text_len tokens are ungrounded too, and so are all nouns of an image whose resized input
has fewer feature cells than the model's num_queries (``Grounder.input_problem``): the reference cannot run it.

Images reach the detector as the processor resizes them (shortest side 800, longest at most 1333), whatever
their aspect ratio or size, exactly as transformers' processor prepares them (no padding of our own).
"""

from __future__ import annotations


from item.featurize.models.grounding import (MIN_BOX_AREA, Box, GroundImage, PreparedGrounder,
                                             ProcessorPrep, _pixel_boxes, collate_pixels, input_shape, level_cells,
                                             set_ground_size)
from item.featurize.models.hub import autocast_for, load_model_or_random, to_device


#: The box selection rule, recorded in a store's identity: a store never mixes rows selected by two rules.
#: 'gdino-all-tokens-1' (issue 19) scored a noun by its best token and padded images beyond 3:1 or under
#: 32 px before the processor; '-2' (issue 29) took the mean over the noun's tokens (without [UNK] tokens),
#: strict thresholds, and the processor's own resize up to 20:1; '-3' counts [UNK] in the mean, as the
#: reference's positive map does, and grounds every image the reference can run (``Grounder.input_problem``).
BOX_SELECTION = "gdino-noun-mean-3"


def build_prompt(nouns: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """"man . bike ." and each noun's (start, end) character span in it. Nouns are lower-cased, whitespace-normalised."""
    parts, spans, pos = [], [], 0
    for noun in nouns:
        clean = " ".join(str(noun).lower().split()) or "object"
        spans.append((pos, pos + len(clean)))
        parts.append(clean + " .")
        pos += len(clean) + 3
    return " ".join(parts), spans


def noun_token_masks(offsets, valid, special, spans: list[tuple[int, int]]):
    """(n_nouns, n_tok) bool: the tokens of each noun's character span.

    offsets: (n_tok, 2) int character (start, end) of each token in the prompt (the tokenizer's
    ``offset_mapping``); valid: (n_tok,) bool, the prompt's real tokens (attention mask); special: (n_tok,)
    bool, marker tokens ([CLS], [SEP], [PAD]; not [UNK], which is part of a noun); spans: each noun's
    (start, end) in the prompt (`build_prompt`).
    A noun cut off by the text model's max_text_len has no token: it stays ungrounded."""
    import torch

    starts, ends = offsets[:, 0], offsets[:, 1]
    real = valid & ~special & (ends > starts)
    if not spans:
        return torch.zeros((0, offsets.shape[0]), dtype=torch.bool)
    return torch.stack([real & (starts >= s) & (ends <= e) for s, e in spans])


def select_boxes(probs, rel_boxes, valid, span_mask, size: tuple[int, int], padded_size: tuple[float, float],
                 box_threshold: float, text_threshold: float) -> list[Box | None]:
    """One Box (or None) per noun from one image's detector output, by the rule of transformers'
    ``post_process_grounded_object_detection`` and the authors' ``predict`` (see the module docstring).

    probs: (n_queries, n_tok) float token probabilities (sigmoid of the logits); rel_boxes: (n_queries, 4)
    float cx, cy, w, h relative to the padded image; valid: (n_tok,) bool, the prompt's real tokens ([CLS],
    [SEP] and the "." delimiters included, padding excluded: the attention mask); span_mask: (n_nouns, n_tok)
    bool, each noun's tokens (`noun_token_masks`); size: the real image's (width, height); padded_size: the
    (width, height) the relative boxes refer to, in the image's pixels (the image itself here). Box.score is the noun score, Box.box_score
    the query's score over every valid token.

    Importable on its own: any Grounding DINO variant with per-token logits (MM-Grounding-DINO) selects its
    boxes with it.
    """
    import torch

    width, height = size
    neg = torch.tensor(-1.0)
    query_score = torch.where(valid[None], probs, neg).amax(-1)  # (n_queries,) the box score
    n_span = span_mask.sum(-1).clamp(min=1)  # (n_nouns,) tokens per noun
    zero = torch.tensor(0.0)
    noun_score = torch.where(span_mask[None], probs[:, None, :], zero).sum(-1) / n_span  # (n_queries, n_nouns) mean
    ok = (query_score[:, None] > box_threshold) & (noun_score > text_threshold)
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
        q = int(best_q[j])
        x0, y0, x1, y1 = px[q].tolist()
        out.append(Box(x0, y0, x1, y1, float(noun_score[q, j]), float(query_score[q])))
    return out


class Grounder(PreparedGrounder):
    """Grounding DINO, batched: one forward pass per group of equally shaped inputs of a `ground_prepared` call.

    info: JSON-able: id, revision or weights_sha256 where known, random_weights, thresholds, input size,
    box_selection (BOX_SELECTION). prepare: the picklable image preparation (`ProcessorPrep`); `ground_prepared`
    takes its outputs.
    """

    family = "grounding-dino"
    too_small = ("not grounded: after the processor's resize the detector input has no pixels on one side "
                 "(transformers' processor cannot size it)")

    def __init__(self, model, processor, info: dict, device: str, box_threshold: float, text_threshold: float):
        self.model = model
        self.processor = processor
        self.info = info
        self.device = device
        self.box_threshold = float(box_threshold)
        self.text_threshold = float(text_threshold)
        self.max_text_len = int(getattr(model.config, "max_text_len", 256))
        self.prepare = ProcessorPrep(processor.image_processor)
        self._levels = _feature_levels(model.config)

    @property
    def ground_size(self) -> int:
        return set_ground_size(self.processor.image_processor, None)

    def input_problem(self, prepared) -> str:
        """'' when the detector can take this input. Its two-stage query selection takes the ``num_queries``
        best of all feature cells, and the GroupNorm of each level's projection needs more than one value
        per group: a long thin image at a small --ground-size gives too few (a 19:1 image reaches it as 853x45
        px at 512: 872 cells for Grounding DINO's 900 queries), and the forward ended the whole run in a torch
        error."""
        shape = input_shape(prepared)
        if shape is None or self._levels is None:
            return ""
        patch, stages, extra, n_queries, per_group = self._levels
        _, h, w = shape
        cells = level_cells(h, w, patch, stages, extra)
        if sum(cells) < n_queries or min(cells) * per_group < 2:
            return (f"not grounded: the grounder's {w}x{h} input gives {sum(cells)} feature cells "
                    f"(coarsest {min(cells)}), too few for its {n_queries} queries; a larger --ground-size grounds it")
        return ""

    def ground_batch(self, prepared: list[GroundImage], nouns: list[list[str]]) -> list[list[Box | None]]:
        """One forward over equally shaped `prepare` outputs (see PreparedGrounder.ground_prepared)."""
        import torch

        prompts, spans = zip(*(build_prompt(n) for n in nouns))
        tok = self.processor.tokenizer(
            list(prompts), padding="longest", truncation=True, max_length=self.max_text_len,
            return_offsets_mapping=True, return_tensors="pt",
        )
        offsets = tok.pop("offset_mapping")
        pixel_values, pixel_mask = collate_pixels(prepared)
        inputs = {k: to_device(v, self.device)
                  for k, v in {**tok, "pixel_values": pixel_values, "pixel_mask": pixel_mask}.items()}
        with torch.inference_mode(), autocast_for(self.device, self.precision):
            out = self.model(**inputs)
        probs = out.logits.float().sigmoid().cpu()  # (batch, n_queries, max_text_len); 0 past the prompt
        boxes = out.pred_boxes.float().cpu()  # (batch, n_queries, 4) cx, cy, w, h relative to the image

        valid = tok["attention_mask"].bool()
        # [CLS], [SEP], [PAD] are no noun's tokens; [UNK] is: it stands for characters of the noun the vocabulary
        # lacks, and the reference's positive map (every token of the noun's character span) counts it
        markers = set(self.processor.tokenizer.all_special_ids) - {self.processor.tokenizer.unk_token_id}
        special = torch.isin(tok["input_ids"], torch.tensor(sorted(markers)))
        n_tok = min(probs.shape[-1], offsets.shape[1])
        result = []
        for b, g in enumerate(prepared):
            span_mask = noun_token_masks(offsets[b, :n_tok], valid[b, :n_tok], special[b, :n_tok], spans[b])
            result.append(select_boxes(probs[b, :, :n_tok], boxes[b], valid[b, :n_tok], span_mask, g.size, g.padded,
                                       self.box_threshold, self.text_threshold))
        return result


def _feature_levels(config) -> tuple | None:
    """(patch size, backbone stages taken, levels added after the backbone, queries, channels per GroupNorm
    group) of a Grounding DINO config; None for a backbone these cannot be read from (no check then)."""
    backbone = getattr(config, "backbone_config", None)
    patch, stages = getattr(backbone, "patch_size", None), getattr(backbone, "out_indices", None)
    if not patch or not stages or getattr(config, "use_timm_backbone", False):
        return None
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    extra = max(0, int(getattr(config, "num_feature_levels", len(stages))) - len(stages))
    n_queries = int(config.num_queries) if getattr(config, "two_stage", False) else 1
    return int(patch), tuple(int(s) for s in stages), extra, n_queries, max(1, int(config.d_model) // 32)


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
        "min_box_area": MIN_BOX_AREA, "min_feature_cells": "num_queries (Grounder.input_problem)",
        "box_threshold": float(box_threshold), "text_threshold": float(text_threshold),
        "prompt": "noun . noun . (lower-case)", "noun_score": "mean token probability over the noun's span",
        "box_selection": BOX_SELECTION,
    }
    return Grounder(model, processor, info, str(device), box_threshold, text_threshold)
