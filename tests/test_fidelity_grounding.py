"""Every grounder family against its reference: the family's own transformers processor and post-processing
on the same model, with the per-noun rule DESIGN.md states (item/check/reference.py, which imports no
selection function of the grounders):

- Grounding DINO and MM-Grounding-DINO: a query is kept when its best probability over *every* valid prompt
  token exceeds the box threshold (transformers' post_process_grounded_object_detection); a noun's score is
  the mean probability over its tokens (MMDetection's convert_grounding_to_cls_scores; Grounding DINO's COCO
  evaluation); its box is the kept query with the highest noun score above the text threshold.
- OWLv2: post_process_object_detection labels each box with its argmax query; a noun's box is the highest
  scoring box labelled with it.
- OmDet-Turbo: post_process_grounded_object_detection (top-k pairs, threshold, NMS); a noun's box is the
  highest-scoring box of its class.

Images of every aspect ratio the grounders take (up to 19:1) and tiny ones (20x20), nouns of several word
pieces. The Grounding DINO tests use a tokenizer with BERT's vocabulary layout (transformers' hard-coded
delimiter ids 101 / 102 / 1012 are the real [CLS] / [SEP] / "."): random weights, so only the bookkeeping is
tested, at each family's real thresholds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity_hub import (tiny_grounding_dino_bert, tiny_mm_grounding_dino_bert, with_scaled_logits,  # noqa: E402
                          write_bert_layout_vocab)

from item.check import reference  # noqa: E402
from item.featurize.models.grounders import load_grounder  # noqa: E402
from item.featurize.models.grounding_dino import Grounder, select_boxes  # noqa: E402
from item.featurize.models.mm_grounding_dino import MMGroundingDinoGrounder  # noqa: E402

BOX_T, TEXT_T = 0.35, 0.25
NOUNS = "dog car tree man bike road sky boat cat house cup table".split()
#: Nouns of several word pieces in the BERT-layout vocabulary (words outside it are spelt in letters).
MULTI = ["traffic light", "surfboard", "fire hydrant", "red sofa", "tennis racket"]


def _select(p, valid, spans, rel=None, size=(100, 100)):
    import torch

    p = torch.tensor(p, dtype=torch.float32)
    rel = torch.tensor(rel if rel is not None else [[0.5, 0.5, 0.4, 0.4]] * p.shape[0], dtype=torch.float32)
    return select_boxes(p, rel, torch.tensor(valid), torch.tensor(spans), size, (float(size[0]), float(size[1])),
                        BOX_T, TEXT_T)


def test_a_query_is_kept_by_its_delimiter_tokens_as_the_reference_keeps_it():
    # tokens: [CLS] dog . car . [SEP] [PAD]; query 0 likes only ".", query 1 only [SEP]: both pass the box
    # threshold through them (transformers and the authors keep both); their noun scores decide the nouns.
    valid = [True, True, True, True, True, True, False]
    spans = [[False, True, False, False, False, False, False], [False, False, False, True, False, False, False]]
    p = [[0.05, 0.30, 0.90, 0.10, 0.20, 0.10, 0.99],   # "." 0.90; dog 0.30 reaches the text threshold only
         [0.05, 0.10, 0.10, 0.28, 0.10, 0.80, 0.99]]   # [SEP] 0.80; car 0.28; the [PAD] 0.99 never counts
    dog, car = _select(p, valid, spans, rel=[[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]])
    assert dog is not None and dog.score == pytest.approx(0.30) and dog.box_score == pytest.approx(0.90)
    assert car is not None and car.score == pytest.approx(0.28) and car.box_score == pytest.approx(0.80)
    assert (dog.x0, car.x0) == pytest.approx((20.0, 60.0))


def test_padding_tokens_never_keep_a_query_and_nouns_below_the_text_threshold_stay_ungrounded():
    valid = [True, True, True, True, False]
    spans = [[False, True, False, False, False]]
    (dog,) = _select([[0.1, 0.30, 0.2, 0.2, 0.99]], valid, spans)  # only [PAD] is above 0.35
    assert dog is None
    (dog,) = _select([[0.1, 0.20, 0.9, 0.2, 0.0]], valid, spans)  # kept through ".", dog below 0.25
    assert dog is None


def test_the_candidate_with_the_highest_noun_score_wins_not_the_highest_box_score():
    valid = [True, True, True, True]
    spans = [[False, True, False, False]]
    (dog,) = _select([[0.1, 0.40, 0.95, 0.1],    # box score 0.95, dog 0.40
                      [0.1, 0.60, 0.60, 0.1]],   # box score 0.60, dog 0.60: the noun's best
                     valid, spans, rel=[[0.2, 0.2, 0.2, 0.2], [0.8, 0.8, 0.2, 0.2]])
    assert dog.score == pytest.approx(0.60) and dog.box_score == pytest.approx(0.60) and dog.x0 == pytest.approx(70)




def test_a_noun_of_several_tokens_scores_the_mean_of_its_tokens():
    # tokens: [CLS] traffic light . [SEP]; the max rule (before issue 29) scored the noun 0.9 and grounded it
    valid = [True] * 5
    spans = [[False, True, True, False, False]]
    (noun,) = _select([[0.1, 0.90, 0.20, 0.5, 0.1]], valid, spans)
    assert noun is not None and noun.score == pytest.approx(0.55)
    (noun,) = _select([[0.1, 0.90, 0.10, 0.95, 0.1]], valid, spans)  # mean 0.5 > 0.25: kept through "."
    assert noun.score == pytest.approx(0.5) and noun.box_score == pytest.approx(0.95)
    (noun,) = _select([[0.1, 0.40, 0.05, 0.9, 0.1]], valid, spans)  # mean 0.225: under the text threshold
    assert noun is None


def test_thresholds_are_strict_as_the_reference_applies_them():
    valid, spans = [True, True, True], [[False, True, False]]
    assert _select([[0.1, 0.35, 0.2]], valid, spans) == [None]  # box score exactly 0.35: not kept
    assert _select([[0.1, 0.25, 0.9]], valid, spans) == [None]  # noun score exactly 0.25: not a candidate


def test_the_reference_module_imports_no_selection_function():
    text = Path(reference.__file__).read_text(encoding="utf-8")
    for name in ("select_boxes", "select_owl", "select_omdet", "noun_token_masks", "grounding_dino import"):
        assert name not in text, name


def _images_and_nouns(seed: int, n: int, nouns: list[str], long_side: int = 2800):
    """Random images of aspect ratios 1:1 to 19:1 either way, one 20x20, and 1 to 5 nouns each; the long side
    at most ``long_side`` (OWLv2's processor pads to a square and resizes it slowly on the CPU)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        aspect = float(rng.choice([1.0, 1.3, 2.0, 3.5, 6.0, 11.0, 19.0]))
        side = min(int(rng.integers(24, 150)), int(long_side / aspect))
        w, h = (int(side * aspect), side) if rng.random() < 0.5 else (side, int(side * aspect))
        if i == 0:
            w, h = 20, 20
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        out.append((img, list(rng.choice(nouns, size=int(rng.integers(1, 6)), replace=False))))
    return out


def _agreement(grounder, cases):
    """(agreeing decisions, decisions, grounded by the reference, multi-piece nouns the reference grounds),
    ITEM grounding all cases in one call, the reference one image at a time."""
    ours = grounder.ground([im for im, _ in cases], [ns for _, ns in cases])
    agree = total = grounded = multi = 0
    for (im, ns), mine in zip(cases, ours):
        theirs = reference.reference_boxes(grounder, im, ns)
        a, n, _ = reference.agreement(mine, theirs)
        agree, total = agree + a, total + n
        grounded += sum(b is not None for b in theirs)
        multi += sum(b is not None and noun in MULTI for noun, b in zip(ns, theirs))
    return agree, total, grounded, multi


@pytest.fixture(scope="module")
def bert_vocab(tmp_path_factory):
    return write_bert_layout_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt", NOUNS + ["red", "light"])


@pytest.fixture(scope="module")
def bert_layout(bert_vocab):
    model, processor = tiny_grounding_dino_bert(bert_vocab)
    model = with_scaled_logits(model, 0.2, 3.0)  # probabilities around the thresholds (see the helper)
    ids = processor.tokenizer("dog . car .")["input_ids"]
    assert ids[0] == 101 and ids[-1] == 102 and ids[2] == ids[4] == 1012  # the layout the model's masks assume
    info = {"id": "test-bert-layout", "random_weights": True, "box_threshold": BOX_T, "text_threshold": TEXT_T}
    return Grounder(model, processor, info, "cpu", BOX_T, TEXT_T)


@pytest.mark.parametrize("seed", [23, 29])
def test_grounding_dino_agrees_with_its_reference_at_every_aspect_ratio(bert_layout, seed):
    agree, total, grounded, multi = _agreement(bert_layout, _images_and_nouns(seed, 16, NOUNS + MULTI))
    assert total >= 40 and 5 <= grounded <= total - 5, (grounded, total)  # both directions exercised
    assert agree / total >= 0.99, f"{agree} of {total} noun decisions agree"


def test_mm_grounding_dino_agrees_with_its_reference_at_its_own_thresholds(bert_vocab):
    model, processor = tiny_mm_grounding_dino_bert(bert_vocab)
    assert type(model).__name__ == "MMGroundingDinoForObjectDetection"
    g = MMGroundingDinoGrounder(with_scaled_logits(model, 0.2, 0.0), processor, {}, "cpu", 0.4, 0.3)
    agree, total, grounded, multi = _agreement(g, _images_and_nouns(31, 16, NOUNS + MULTI))
    assert total >= 40 and 5 <= grounded <= total - 5, (grounded, total)
    assert multi >= 2  # nouns of several word pieces, where the mean and the max differ
    assert agree / total >= 0.99, f"{agree} of {total} noun decisions agree"


def test_the_tiny_mm_build_is_not_the_tiny_grounding_dino_build():
    mm = load_grounder("mm-gdino-tiny-random", box_threshold=0.0, text_threshold=0.0)
    gd = load_grounder("tiny-random", box_threshold=0.0, text_threshold=0.0)
    assert not mm.model.config.decoder_bbox_embed_share and not mm.model.config.decoder_cls_embed_share
    img = _images_and_nouns(5, 2, NOUNS)[1][0]
    a, b = mm.ground([img], [["dog", "cat"]])[0], gd.ground([img], [["dog", "cat"]])[0]
    assert [x.score for x in a if x] != [x.score for x in b if x]


@pytest.mark.parametrize("family,name,threshold", [("owlv2", "owlv2-tiny-random", 0.1),
                                                   ("omdet-turbo", "omdet-tiny-random", 0.3)])
@pytest.mark.parametrize("seed", [37, 41])
def test_owlv2_and_omdet_agree_with_their_reference_post_processing(family, name, threshold, seed):
    g = load_grounder(name, box_threshold=threshold)
    assert g.family == family
    agree, total, grounded, _ = _agreement(g, _images_and_nouns(seed, 16, NOUNS + MULTI, long_side=500))
    assert total >= 40 and 5 <= grounded <= total - 5, (grounded, total)
    assert agree / total >= 0.99, f"{agree} of {total} noun decisions agree"


def test_owlv2_never_gives_one_box_to_two_nouns():
    # the reference labels each box with one query: near-synonyms compete for it (before issue 29 each noun
    # took its best patch whatever that patch's label, so "dog" and "puppy" shared one box)
    g = load_grounder("owlv2-tiny-random", box_threshold=0.0)
    for img, nouns in _images_and_nouns(43, 8, NOUNS, long_side=500):
        boxes = [b for b in g.ground([img], [nouns])[0] if b is not None]
        assert len({(b.x0, b.y0, b.x1, b.y1) for b in boxes}) == len(boxes)


def _positive_map_expectation(grounder, image, nouns):
    """The reference's answer computed here from the processor, the forward and transformers' post-processing:
    a noun's tokens are every token of its character span (MMDetection / GLIP ``create_positive_map``:
    ``char_to_token`` of its first and last character), its score their mean probability on a kept query."""
    import torch

    names = [" ".join(n.lower().split()) for n in nouns]
    prompt = " . ".join(names) + " ."
    starts = [sum(len(m) + 3 for m in names[:k]) for k in range(len(names))]
    proc = grounder.processor
    inputs = proc(images=image, text=prompt, return_tensors="pt")
    with torch.inference_mode():
        out = grounder.model(**inputs)
    w, h = image.size
    res = proc.post_process_grounded_object_detection(out, inputs["input_ids"], threshold=BOX_T,
                                                      text_threshold=TEXT_T, target_sizes=[(h, w)])[0]
    probs = out.logits.sigmoid()[0]
    kept = [q for q in range(probs.shape[0]) if float(probs[q].max()) > BOX_T]
    assert len(kept) == len(res["boxes"])
    enc = proc.tokenizer(prompt)
    expected = []
    for name, s in zip(names, starts):
        toks = list(range(enc.char_to_token(s), enc.char_to_token(s + len(name) - 1) + 1))
        best = None
        for q, box in zip(kept, res["boxes"].tolist()):
            x0, x1 = (min(max(v, 0), w) for v in (box[0], box[2]))
            y0, y1 = (min(max(v, 0), h) for v in (box[1], box[3]))
            score = float(probs[q, toks].mean())
            if score > TEXT_T and (x1 - x0) * (y1 - y0) >= min(16, w * h) and (best is None or score > best[4]):
                best = (x0, y0, x1, y1, score)
        expected.append(best)
    return expected


def test_a_character_outside_the_vocabulary_counts_in_its_nouns_mean_as_the_reference_counts_it(bert_layout):
    # "&" is not in the BERT-layout vocabulary: "dog & cat" is dog [UNK] cat, and the reference's positive map
    # (every token of the noun's span) averages all three (ITEM used to drop [UNK] with [CLS] / [SEP])
    assert bert_layout.processor.tokenizer.tokenize("dog & cat") == ["dog", "[UNK]", "cat"]
    rng = np.random.default_rng(53)
    nouns = ["dog & cat", "car & bike", "man & boat", "tree"]
    agree = total = with_unk = 0
    for w, h in [(40, 200), (90, 120), (120, 90), (300, 30), (20, 20), (33, 7), (60, 180), (200, 50), (75, 100)]:
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        expected = _positive_map_expectation(bert_layout, img, nouns)
        ours = bert_layout.ground([img], [nouns])[0]
        for noun, a, b in zip(nouns, ours, expected):
            total += 1
            with_unk += "&" in noun and b is not None
            if a is None or b is None:
                agree += a is None and b is None
            else:
                agree += max(abs(x - y) for x, y in zip((a.x0, a.y0, a.x1, a.y1), b[:4])) <= 1.0 and \
                    abs(a.score - b[4]) <= 1e-6
    assert with_unk >= 3  # the case is exercised
    assert agree == total, f"{agree} of {total}"


def test_omdet_under_autocast_agrees_with_its_reference_where_scores_tie():
    # bf16 (and fp16) logits take few values, so several boxes of one class often share its best score; the
    # post-processing keeps one of them by the order its top-k (sorted=False) and NMS sort leave, which no rule
    # states. ITEM's box must be one of the tied best boxes, computed here from the raw outputs as the
    # post-processing scores them (top-k pairs, threshold), and `item check`'s comparison must accept it.
    import torch
    from transformers import OmDetTurboProcessor

    from item.featurize.models.hub import BF16_AUTOCAST

    g = load_grounder("omdet-tiny-random", box_threshold=0.3)
    g.precision = BF16_AUTOCAST
    cases = _images_and_nouns(59, 16, NOUNS + MULTI, long_side=500)
    ours = g.ground([im for im, _ in cases], [ns for _, ns in cases])
    total = agree = ties = 0
    for (im, ns), mine in zip(cases, ours):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = g.model(**g.model_inputs([g.prepare(im)], [ns]))
        out.decoder_class_logits = out.decoder_class_logits.float()
        out.decoder_coord_logits = out.decoder_coord_logits.float()
        w, h = im.size
        res = OmDetTurboProcessor.post_process_grounded_object_detection(g.processor, out, threshold=0.3,
                                                                         target_sizes=[(h, w)])[0]
        scores, rel = out.decoder_class_logits[0].sigmoid(), out.decoder_coord_logits[0]
        kth = scores.flatten().topk(scores.shape[0]).values[-1]
        for j, box in enumerate(mine):
            total += 1
            x0, x1 = ((rel[:, 0] + s * rel[:, 2] / 2).clamp(0, 1) * w for s in (-1, 1))
            y0, y1 = ((rel[:, 1] + s * rel[:, 3] / 2).clamp(0, 1) * h for s in (-1, 1))
            ok = (scores[:, j] > 0.3) & (scores[:, j] >= kth) & ((x1 - x0) * (y1 - y0) >= 16)
            if not ok.any():
                agree += box is None
                continue
            best = scores[:, j][ok].max()
            tied = torch.nonzero(ok & (scores[:, j] == best)).flatten().tolist()
            ties += len(tied) > 1
            theirs = [sc for b, sc, lab in zip(res["boxes"].tolist(), res["scores"].tolist(), res["labels"].tolist())
                      if lab == j and (b[2] - b[0]) * (b[3] - b[1]) >= 16]
            assert max(theirs) == pytest.approx(float(best), abs=1e-6)  # the post-processing's own best score
            if box is None:
                continue
            near = [max(abs(a - float(b)) for a, b in zip((box.x0, box.y0, box.x1, box.y1),
                                                            (x0[q], y0[q], x1[q], y1[q]))) for q in tied]
            agree += min(near) <= 1.0 and abs(box.score - float(best)) <= 1e-6
    assert ties >= 2, ties  # the case is exercised
    assert agree == total, f"{agree} of {total}"
    checked = [reference.agreement(m, reference.reference_boxes(g, im, ns)) for (im, ns), m in zip(cases, ours)]
    assert sum(c[0] for c in checked) / sum(c[1] for c in checked) >= 0.99
