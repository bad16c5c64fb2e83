"""BLIP's artefacts never reach CLIP: the store keeps the raw caption and the text CLIP encoded.

Tiny random models; the fixed captioner below stands in for BLIP-large's output (the part is passed in,
as any captioner is): its embeddings mean nothing, only which text was encoded is tested.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from item.featurize.models.loading import compat_for, load_models
from item.featurize.models.presets import resolve_models
from item.featurize.run.config import FeaturizeConfig
from item.featurize.run.local import featurize_images
from item.featurize.text.captions import CLEANUP_VERSION, clean_caption

CASES = [
    ("arafed man in a suit and tie standing in front of a building",
     "man in a suit and tie standing in front of a building"),
    ("araffe giraffe standing next to a tree in a field", "giraffe standing next to a tree in a field"),
    ("arafly dressed woman with a hat and a purse", "dressed woman with a hat and a purse"),
    ("an arafed elephant walking down a dirt road", "an elephant walking down a dirt road"),
    ("there is a dog that is sitting on the couch", "a dog sitting on the couch"),
    ("there are two men that are playing frisbee in the park", "two men playing frisbee in the park"),
    ("there is a arafed man that is holding a surfboard on the beach", "a man holding a surfboard on the beach"),
    ("there is a large airplane flying in the sky", "a large airplane flying in the sky"),
    ("this is a painting of a woman with a veil", "a painting of a woman with a veil"),
    ("arrafed view of a city at night", "view of a city at night"),
    # untouched: no artefact, and words that only look alike
    ("a man rowing a raft down a river", "a man rowing a raft down a river"),
    ("a giraffe eating leaves from a tree", "a giraffe eating leaves from a tree"),
    ("a sign that is on a pole", "a sign that is on a pole"),
    ("a woman that is holding an umbrella", "a woman that is holding an umbrella"),
    ("arafed", "arafed"),  # nothing left: the caption stays as it was
]


@pytest.mark.parametrize("raw,clean", CASES)
def test_clean_caption(raw, clean):
    assert clean_caption(raw) == clean


class FixedCaptioner:
    """A captioner part returning BLIP-large-style captions in turn."""

    def __init__(self, captions):
        self.captions = list(captions)
        self.info = {"id": "fixed-blip-large-style", "random_weights": True}

    @staticmethod
    def prepare(image):  # the captioner's image preparation (no pixels needed here)
        return image.size

    def caption_prepared(self, pixels):
        return [self.captions[i % len(self.captions)] for i in range(len(pixels))]

    def caption(self, images):
        return self.caption_prepared([self.prepare(im) for im in images])


def test_encoded_caption_is_the_clean_one_and_both_are_kept(tmp_path):
    models = load_models(resolve_models("tiny-random", grounder="none"), "cpu")
    models.captioner = FixedCaptioner(["there is a arafed man that is riding a bike on the road"])
    paths = []
    for i in range(2):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(p)
        paths.append(str(p))
    given = "arafed cat on a mat"  # a caption the user gave is theirs: encoded as given
    recs = featurize_images(paths, models=models, config=FeaturizeConfig(workers=0), captions={paths[1]: given})
    blip, user = recs
    assert blip.caption == "there is a arafed man that is riding a bike on the road"
    assert blip.caption_encoded == "a man riding a bike on the road"
    assert user.caption == user.caption_encoded == given
    clean_emb, _ = models.clip.encode_texts([blip.caption_encoded])
    raw_emb, _ = models.clip.encode_texts([blip.caption])
    stored = blip.caption_emb.astype(np.float16).astype(np.float32)
    assert np.abs(stored - clean_emb[0]).max() < 2e-3
    assert np.abs(stored - raw_emb[0]).max() > 2e-2
    assert blip.nouns == ["man", "bike", "road"]
    assert compat_for(models, FeaturizeConfig())["caption_cleanup"] == CLEANUP_VERSION


def _greedy_by_hand(model, processor, image, max_new_tokens: int) -> str:
    """BLIP greedy decoding written out from the model's forward pass (no generate()): the vision encoder
    once, then one text-decoder step per token, always the most likely token, until [SEP]."""
    import torch

    pix = processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"]
    cfg = model.config.text_config
    with torch.inference_mode():
        vision = model.vision_model(pixel_values=pix)[0]
        ids = torch.tensor([[cfg.bos_token_id]])
        for _ in range(max_new_tokens):
            logits = model.text_decoder(input_ids=ids, attention_mask=torch.ones_like(ids),
                                        encoder_hidden_states=vision).logits[:, -1]
            nxt = logits.argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
            if int(nxt) == cfg.sep_token_id:
                break
    return " ".join(processor.batch_decode(ids, skip_special_tokens=True)[0].split())


def test_blip_captions_equal_greedy_decoding_by_hand():
    """Second path for the captioner: its captions are BLIP's greedy decoding, token for token."""
    from item.featurize.models.blip import load_captioner

    cap = load_captioner("tiny-random", decoding="greedy")
    rng = np.random.default_rng(2)
    images = [Image.fromarray(rng.integers(0, 255, (40 + 10 * i, 50, 3), dtype=np.uint8)) for i in range(3)]
    ours = [cap.caption([im])[0] for im in images]
    theirs = [_greedy_by_hand(cap.model, cap.processor, im, cap.generation["max_new_tokens"]) for im in images]
    assert ours == theirs
    assert all(len(c.split()) >= 3 for c in ours)  # real text (tiny random BLIP writes the same words for any image)
