"""Each model's answers by its reference code path: the family's own transformers processor and
post-processing, open_clip's own transform and encode, BLIP's ``generate`` with its authors' settings.

``item check`` compares ITEM's answers on the user's real weights with these (``reference_*`` checks), and
the fidelity tests compare them on tiny random models. Nothing here imports a grounder's selection
function: the per-noun rule each family's reference lacks is written out again from its stated source
(DESIGN.md, "Each grounder's box rule is its reference's"):

- Grounding DINO / MM-Grounding-DINO: transformers' ``post_process_grounded_object_detection`` keeps a
  query when its best token probability exceeds the box threshold; a noun's score on a kept query is the
  mean probability over the noun's tokens (MMDetection's ``convert_grounding_to_cls_scores``, Grounding
  DINO's own COCO evaluation with its normalised positive map); a noun's box is the kept query with the
  highest noun score above the text threshold.
- OWLv2: ``post_process_object_detection`` labels each box with its best query and keeps it above the
  threshold; a noun's box is the highest-scoring box labelled with it.
- OmDet-Turbo: ``post_process_grounded_object_detection`` (top-k pairs, threshold, per-class NMS); a
  noun's box is the highest-scoring box of its class.

Every rule leaves out boxes covering less than 16 pixels of the image (ITEM's only addition, applied to
both sides). Results: per noun ``(x0, y0, x1, y1, score)`` in the image's pixels, or None (OmDet-Turbo
adds the boxes tied with it at that score, see `omdet_turbo`).
"""

from __future__ import annotations

#: ITEM's one addition to every reference rule: smaller boxes are no boxes (grounding.MIN_BOX_AREA).
MIN_AREA = 16.0


def _clip_box(box, width: int, height: int):
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
    y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
    return x0, y0, x1, y1


def _big_enough(box, width: int, height: int) -> bool:
    x0, y0, x1, y1 = box
    return max(x1 - x0, 0.0) * max(y1 - y0, 0.0) >= min(MIN_AREA, width * height)


def _clean(noun: str) -> str:
    return " ".join(str(noun).lower().split()) or "object"


def _token_positions(tokenizer, input_ids: list[int], nouns: list[str]) -> list[list[int]]:
    """Each noun's token positions in ``input_ids``: the noun tokenised alone, found as a run of ids after
    the previous noun's (nouns appear in the prompt in order). [] when the prompt was cut before it."""
    out, start = [], 0
    for noun in nouns:
        ids = tokenizer(noun, add_special_tokens=False)["input_ids"]
        found = []
        for s in range(start, len(input_ids) - len(ids) + 1):
            if ids and input_ids[s:s + len(ids)] == ids:
                found = list(range(s, s + len(ids)))
                start = s + len(ids)
                break
        out.append(found)
    return out


def grounding_dino(grounder, image, nouns: list[str]):
    """Grounding DINO and MM-Grounding-DINO by their transformers path (see the module docstring)."""
    import torch

    from item.featurize.models.hub import autocast_for, to_device

    nouns = [_clean(n) for n in nouns]
    prompt = " . ".join(nouns) + " ."
    proc = grounder.processor
    inputs = proc(images=image, text=prompt, return_tensors="pt")
    try:
        with torch.inference_mode(), autocast_for(grounder.device, getattr(grounder, "precision", None)):
            out = grounder.model(**{k: to_device(v, grounder.device) for k, v in inputs.items()})
    except RuntimeError as e:  # fewer feature cells than num_queries: transformers' topk cannot run
        if "out of range" in str(e):
            return [None] * len(nouns)
        raise
    out.logits, out.pred_boxes = out.logits.float().cpu(), out.pred_boxes.float().cpu()
    w, h = image.size
    res = proc.post_process_grounded_object_detection(
        out, inputs["input_ids"], threshold=grounder.box_threshold, text_threshold=grounder.text_threshold,
        target_sizes=[(h, w)])[0]
    probs = out.logits.sigmoid()[0]  # (n_queries, n_tok); 0 on padding (-inf logits)
    kept = torch.nonzero(probs.max(-1).values > grounder.box_threshold).flatten().tolist()  # rows of res
    if len(kept) != len(res["boxes"]):
        raise RuntimeError("transformers' post-processing kept other queries than its threshold says")
    ids = inputs["input_ids"][0].tolist()[:probs.shape[-1]]
    answer = []
    for pos in _token_positions(proc.tokenizer, ids, nouns):
        best = None
        for q, box in zip(kept, res["boxes"].tolist()):
            if not pos:
                break
            score = float(probs[q, pos].mean())
            clipped = _clip_box(box, w, h)
            if score > grounder.text_threshold and _big_enough(clipped, w, h) and (best is None or score > best[4]):
                best = (*clipped, score)
        answer.append(best)
    return answer


def owlv2(grounder, image, nouns: list[str]):
    """OWLv2 by its transformers path: the processor's inputs, ``post_process_object_detection``."""
    import torch

    from item.featurize.models.hub import autocast_for, to_device
    from item.featurize.models.owlv2 import PROMPT

    proc = grounder.processor
    queries = [PROMPT.format(_clean(n)) for n in nouns]
    tok = proc.tokenizer(queries, padding="max_length", truncation=True, max_length=grounder.max_text_len,
                         return_tensors="pt")
    pix = proc.image_processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"]
    inputs = {"input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"], "pixel_values": pix}
    with torch.inference_mode(), autocast_for(grounder.device, getattr(grounder, "precision", None)):
        out = grounder.model(**{k: to_device(v, grounder.device) for k, v in inputs.items()})
    out.logits, out.pred_boxes = out.logits.float().cpu(), out.pred_boxes.float().cpu()
    w, h = image.size
    res = proc.image_processor.post_process_object_detection(out, threshold=grounder.box_threshold,
                                                             target_sizes=[(h, w)])[0]
    answer = []
    for j in range(len(nouns)):
        best = None
        for box, score, label in zip(res["boxes"].tolist(), res["scores"].tolist(), res["labels"].tolist()):
            clipped = _clip_box(box, w, h)
            if label == j and _big_enough(clipped, w, h) and (best is None or score > best[4]):
                best = (*clipped, float(score))
        answer.append(best)
    return answer


def omdet_turbo(grounder, image, nouns: list[str]):
    """OmDet-Turbo by its transformers path: ``OmDetTurboProcessor`` where the checkpoint has one (the
    random builds' tokenizer is no CLIP tokenizer, so their inputs are the grounder's, which the review
    found identical to the processor's), then the processor's ``post_process_grounded_object_detection``."""
    import torch
    from transformers import OmDetTurboProcessor

    from item.featurize.models.hub import autocast_for, to_device
    from item.featurize.models.omdet import TASK

    classes = [_clean(n) for n in nouns]
    proc = grounder.processor
    prepared = grounder.prepare(image)
    with torch.inference_mode(), autocast_for(grounder.device, getattr(grounder, "precision", None)):
        if isinstance(proc, OmDetTurboProcessor):
            inputs = proc(images=image.convert("RGB"), text=classes, task=TASK.format(", ".join(classes)),
                          return_tensors="pt")
            inputs = {k: to_device(v, grounder.device) for k, v in inputs.items()}
        else:
            inputs = grounder.model_inputs([prepared], [nouns])
        out = grounder.model(**inputs)
    out.decoder_coord_logits = out.decoder_coord_logits.float().cpu()
    out.decoder_class_logits = out.decoder_class_logits.float().cpu()
    out.classes_structure = out.classes_structure.cpu()
    w, h = image.size
    res = OmDetTurboProcessor.post_process_grounded_object_detection(
        proc, out, threshold=grounder.box_threshold, target_sizes=[(h, w)])[0]
    # Every box of the noun's class scoring exactly its best score: the post-processing breaks such a tie by
    # the order its top-k (sorted=False) and NMS sort leave, which no rule states (ties are common under
    # fp16 / bf16 autocast, whose logits take few values); any of them is the noun's best kept pair.
    scores = out.decoder_class_logits[0].sigmoid()  # (n_queries, n_classes), as the post-processing scores
    rel = out.decoder_coord_logits[0]
    corners = torch.stack([rel[:, 0] - rel[:, 2] / 2, rel[:, 1] - rel[:, 3] / 2,
                           rel[:, 0] + rel[:, 2] / 2, rel[:, 1] + rel[:, 3] / 2], -1) * torch.tensor([w, h, w, h])
    answer = []
    for j in range(len(nouns)):
        best = None
        for box, score, label in zip(res["boxes"].tolist(), res["scores"].tolist(), res["labels"].tolist()):
            clipped = _clip_box(box, w, h)
            if int(label) == j and _big_enough(clipped, w, h) and (best is None or score > best[4]):
                best = (*clipped, float(score))
        if best is not None:
            tied = [_clip_box(corners[q].tolist(), w, h) for q in torch.nonzero(scores[:, j] == best[4]).flatten()]
            best = (*best, [b for b in tied if _big_enough(b, w, h)])
        answer.append(best)
    return answer


#: grounder family -> its reference path.
GROUNDING_REFERENCES = {"grounding-dino": grounding_dino, "mm-grounding-dino": grounding_dino,
                        "owlv2": owlv2, "omdet-turbo": omdet_turbo}


def reference_boxes(grounder, image, nouns: list[str]):
    """Per noun ``(x0, y0, x1, y1, score)`` or None by the grounder family's reference path; images the
    grounder does not take (empty) ground nothing; an input the detector cannot run (Grounding DINO: fewer
    feature cells than its queries, where transformers' forward raises) grounds nothing either."""
    from item.featurize.models.grounding import not_groundable

    if not nouns or not_groundable(*image.size):
        return [None] * len(nouns)
    family = getattr(grounder, "family", "")
    if family not in GROUNDING_REFERENCES:
        raise KeyError(f"no reference path for grounder family {family!r}; known: {sorted(GROUNDING_REFERENCES)}")
    return GROUNDING_REFERENCES[family](grounder, image, nouns)


def agreement(ours, theirs, box_px: float = 1.0, score_tol: float = 1e-3) -> tuple[int, int, float]:
    """(agreeing noun decisions, decisions, largest box difference in px among nouns both grounded).

    ours: per noun a Box (x0, y0, x1, y1, score attributes) or None; theirs: per noun (x0, y0, x1, y1, score)
    or None, optionally followed by the boxes tied with it at that score (OmDet-Turbo: the reference leaves
    such a tie to its sort order; any of them satisfies the rule). A decision agrees when both leave the noun
    ungrounded, or both ground it with boxes within ``box_px`` (of the reference's box or one tied with it)
    and scores within ``score_tol``."""
    agree, shift = 0, 0.0
    for a, b in zip(ours, theirs):
        if a is None or b is None:
            agree += (a is None) == (b is None)
            continue
        mine = (a.x0, a.y0, a.x1, a.y1)
        d = min(max(abs(x - y) for x, y in zip(mine, box)) for box in [b[:4], *(b[5] if len(b) > 5 else [])])
        shift = max(shift, d)
        agree += d <= box_px and abs(a.score - b[4]) <= score_tol
    return agree, len(list(zip(ours, theirs))), shift


def clip_image_embeddings(clip, images):
    """(n, embed_dim) float32 L2-normalised: open_clip's own eval transform (built from the model's
    ``preprocess_cfg``) and ``encode_image(normalize=True)``, in fp32."""
    import torch
    from open_clip.transform import PreprocessCfg, image_transform_v2

    transform = image_transform_v2(PreprocessCfg(**clip.model.visual.preprocess_cfg), is_train=False)
    pixels = torch.stack([transform(im) for im in images]).to(clip.device)
    with torch.inference_mode():
        emb = clip.model.encode_image(pixels, normalize=True)
    return emb.float().cpu().numpy()


def clip_text_embeddings(clip, texts: list[str]):
    """(n, embed_dim) float32 L2-normalised: open_clip's own tokenizer for the model and ``encode_text``."""
    import open_clip
    import torch

    tokenizer = open_clip.get_tokenizer(clip.info["model"])
    with torch.inference_mode():
        emb = clip.model.encode_text(tokenizer(list(texts)).to(clip.device), normalize=True)
    return emb.float().cpu().numpy()


def blip_captions(captioner, images) -> list[str]:
    """One caption per image, one ``generate`` each, decoded as BLIP's authors decode (their settings, from
    salesforce/BLIP configs/caption_coco.yaml: prompt "a picture of ", 3 beams, 5 to 20 tokens), the
    prompt's characters cut from the text as their ``BLIP_Decoder.generate`` cuts them."""
    import torch

    from item.featurize.models.hub import autocast_for, to_device

    prompt = "a picture of "
    out = []
    for im in images:
        inputs = captioner.processor(images=im.convert("RGB"), text=prompt, return_tensors="pt")
        with torch.inference_mode(), autocast_for(captioner.device, getattr(captioner, "precision", None)):
            ids = captioner.model.generate(pixel_values=to_device(inputs["pixel_values"], captioner.device),
                                           input_ids=to_device(inputs["input_ids"], captioner.device),
                                           num_beams=3, max_length=20, min_length=5, repetition_penalty=1.0,
                                           do_sample=False)
        text = " ".join(captioner.processor.decode(ids[0], skip_special_tokens=True).split())
        out.append(text[len(prompt):].strip() if text.startswith(prompt.strip()) else text)
    return out
