"""Grounding DINO box selection follows the reference rule (transformers' post_process_grounded_object_detection
and the authors' ``predict``): a query is kept when its best probability over *every* valid prompt token
([CLS], [SEP] and the "." delimiters included) reaches the box threshold; a noun's candidates are the kept
queries whose best probability over the noun's tokens reaches the text threshold; its box is the candidate
with the highest noun score.

The model-level test uses a tokenizer with BERT's vocabulary layout (so transformers' hard-coded delimiter ids
101 / 102 / 1012 are the real [CLS] / [SEP] / ".") and a seeded tiny GroundingDinoForObjectDetection: random
weights, so only the bookkeeping is tested, at the real default thresholds 0.35 / 0.25.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity_hub import tiny_grounding_dino_bert, with_scaled_logits, write_bert_layout_vocab  # noqa: E402

from item.featurize.models.grounding_dino import Grounder, select_boxes  # noqa: E402
from item.featurize.models.grounding import MIN_BOX_AREA  # noqa: E402

BOX_T, TEXT_T = 0.35, 0.25
NOUNS = "dog car tree man bike road sky boat cat house cup table".split()


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


@pytest.fixture(scope="module")
def bert_layout(tmp_path_factory):
    vocab = write_bert_layout_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt", NOUNS)
    model, processor = tiny_grounding_dino_bert(vocab)
    model = with_scaled_logits(model, 0.2, 3.0)  # probabilities around the thresholds (see the helper)
    ids = processor.tokenizer("dog . car .")["input_ids"]
    assert ids[0] == 101 and ids[-1] == 102 and ids[2] == ids[4] == 1012  # the layout the model's masks assume
    info = {"id": "test-bert-layout", "random_weights": True, "box_threshold": BOX_T, "text_threshold": TEXT_T}
    return Grounder(model, processor, info, "cpu", BOX_T, TEXT_T)


def _reference(g, img, nouns):
    """Per noun: (box, noun score) or None from transformers' processor + post_process_grounded_object_detection
    on the same model, its phrase labels mapped back to nouns by their words. The noun score of a detection is
    the probability at the noun's own token, found in input_ids by the token's id."""
    import torch

    prompt = " . ".join(nouns) + " ."
    inputs = g.processor(images=img, text=prompt, return_tensors="pt")
    with torch.inference_mode():
        out = g.model(**inputs)
    res = g.processor.post_process_grounded_object_detection(
        out, inputs["input_ids"], threshold=BOX_T, text_threshold=TEXT_T, target_sizes=[(img.height, img.width)])[0]
    probs = out.logits.sigmoid()[0]
    kept = torch.nonzero(probs.max(-1).values > BOX_T).flatten().tolist()  # the rows of res, in order
    assert len(kept) == len(res["boxes"])
    ids = inputs["input_ids"][0].tolist()
    answer = []
    noun_pos = [ids.index(g.processor.tokenizer.convert_tokens_to_ids(n)) for n in nouns]
    for noun, pos in zip(nouns, noun_pos):
        best = None
        for q, box, label in zip(kept, res["boxes"].tolist(), res["text_labels"]):
            if noun not in re.findall(r"[a-z]+", label):  # "[CLS] man. [SEP]": decoding glues the "."
                continue
            x0, y0 = max(box[0], 0.0), max(box[1], 0.0)
            x1, y1 = min(box[2], img.width), min(box[3], img.height)
            if max(x1 - x0, 0) * max(y1 - y0, 0) < MIN_BOX_AREA:
                continue
            score = float(probs[q, pos])
            # kept only through a token outside the nouns ([CLS], [SEP], "."): the old rule dropped it
            through_delimiter = float(probs[q, noun_pos].max()) < BOX_T
            if best is None or score > best[1]:
                best = ((x0, y0, x1, y1), score, through_delimiter)
        answer.append(best)
    return answer


@pytest.mark.slow
def test_box_selection_agrees_with_transformers_post_processing_on_many_images(bert_layout):
    rng = np.random.default_rng(19)
    decisions = agree = grounded = ungrounded = delimiter_kept = 0
    for _ in range(32):
        w, h = (int(v) for v in rng.integers(48, 200, 2))
        if max(w / h, h / w) > 2.9:
            continue  # the project pads such images first (letterbox); the reference does not
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        nouns = list(rng.choice(NOUNS, size=int(rng.integers(1, 6)), replace=False))
        ours = bert_layout.ground([img], [nouns])[0]
        theirs = _reference(bert_layout, img, nouns)
        for noun, a, b in zip(nouns, ours, theirs):
            decisions += 1
            if a is None or b is None:
                agree += (a is None) == (b is None)
                ungrounded += a is None
                continue
            grounded += 1
            delimiter_kept += b[2]
            same_box = np.allclose([a.x0, a.y0, a.x1, a.y1], b[0], atol=1.0)
            agree += same_box and a.score == pytest.approx(b[1], abs=1e-5)
    assert decisions >= 60
    assert grounded >= 10 and ungrounded >= 10, (grounded, ungrounded)  # both directions are exercised
    assert delimiter_kept >= 3  # nouns whose box only a delimiter token kept: the old rule failed these
    assert agree / decisions >= 0.99, f"{agree} of {decisions} noun decisions agree"
