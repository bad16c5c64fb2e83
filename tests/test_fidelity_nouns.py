"""Nouns on captions as BLIP-large writes them (nouns rules-3).

Each case was written by hand in BLIP-large's unconditional style (its "arafed" family, "there is a ...
that is" frames, "in the background", "with a ... on it") and its expectation checked by reading: the
objects a detector should box, singular, in order of first mention.
"""

from __future__ import annotations

import pytest

from item.featurize.text.captions import clean_caption
from item.featurize.text.nouns import NOUNS_VERSION, extract_nouns

CASES = [
    # aircraft and vehicles (BLIP's usual words for them)
    ("arafed jetliner flying in the sky with a cloudy sky in the background", ["jetliner", "sky"]),
    ("there is a large jetliner that is sitting on the runway", ["jetliner", "runway"]),
    ("a jumbo jet taking off from an airport runway", ["jumbo jet", "runway"]),
    ("arafed fighter jet flying over a mountain range", ["fighter jet", "mountain range"]),
    ("an old biplane parked on a grassy field next to a hangar", ["biplane", "field", "hangar"]),
    ("a seaplane floating on a lake with mountains in the background", ["seaplane", "lake", "mountain"]),
    ("there is a tow truck that is parked on the side of the road", ["tow truck", "road"]),
    ("arafed dump truck driving down a dirt road", ["dump truck", "dirt road"]),
    ("a red double decker bus driving down a city street", ["double decker bus", "city street"]),
    ("a tugboat pulling a barge down a river", ["tugboat", "barge", "river"]),
    ("a man riding an atv through the mud", ["man", "atv", "mud"]),
    # compounds whose head is a noun: one object (a lexicon compound, else the head alone)
    ("a jetliner parked at the airport terminal", ["jetliner", "terminal"]),
    ("a man sitting at a computer desk with a coffee mug", ["man", "desk", "coffee mug"]),
    ("a living room with a couch and a flat screen tv", ["living room", "couch", "flat screen tv"]),
    ("arafed cat sitting on a kitchen counter next to a sink", ["cat", "kitchen counter", "sink"]),
    ("a dog laying on a dog bed in a living room", ["dog", "bed", "living room"]),
    ("there is a pizza box on the table with a slice of pizza", ["pizza box", "table", "slice", "pizza"]),
    ("a man wearing a cowboy hat and a plaid shirt", ["man", "cowboy hat", "shirt"]),
    ("a woman with a flower crown on her head", ["woman", "crown", "head"]),
    ("a cat laying on top of a laptop computer", ["cat", "laptop computer"]),  # rules-3: an LVIS compound
    ("a baseball player swinging a bat at a ball", ["baseball player", "bat", "ball"]),
    ("the dog's bowl is next to the cat's toy", ["dog", "bowl", "cat", "toy"]),
    ("a bunch of bananas and apples in a fruit bowl", ["banana", "apple", "bowl"]),
    # the medium is never an object
    ("a painting of a woman with a veil on her head", ["woman", "veil", "head"]),
    ("a digital painting of a castle on a hill", ["castle", "hill"]),
    ("an oil painting of a ship in a stormy sea", ["ship", "sea"]),
    ("a drawing of a cat sitting on a chair", ["cat", "chair"]),
    ("a cartoon dog sitting on a couch", ["dog", "couch"]),
    ("an illustration of a dragon flying over a city", ["dragon", "city"]),
    ("a 3d rendering of a modern house with a pool", ["house", "pool"]),
    ("a sketch of a man with a beard", ["man", "beard"]),
    ("anime girl with long hair and a sword", ["girl", "hair", "sword"]),
    ("a close up of a woman's face, digital art", ["woman", "face"]),
    ("a painting hanging on the wall above a fireplace", ["painting", "wall", "fireplace"]),
    ("a child holding a drawing in front of a house", ["child", "drawing", "house"]),
    # everyday concrete nouns the lexicon lacked
    ("arafed bride in a wedding dress and veil standing in a church", ["bride", "wedding dress", "veil", "church"]),
    ("a plate of pasta with basil and tomatoes", ["plate", "pasta", "basil", "tomato"]),
    ("there is a wall with graffiti on it in a city", ["wall", "graffiti", "city"]),
    ("a woman wearing a hijab and a shawl", ["woman", "hijab", "shawl"]),
    ("a man in a turban sitting on a rickshaw", ["man", "turban", "rickshaw"]),
    ("a bowl of soup with dumplings and cilantro", ["bowl", "soup", "dumpling", "cilantro"]),
    ("a hammock hanging between two palm trees on the beach", ["hammock", "palm tree", "beach"]),
    ("a mural on the side of a building", ["mural", "building"]),
    ("a girl wearing a beret and a cardigan", ["girl", "beret", "cardigan"]),
    # frames and junk words never become objects; weather is not a box
    ("arafed man in a suit and tie standing in front of a building", ["man", "suit", "tie", "building"]),
    ("there is a woman that is holding an umbrella in the rain", ["woman", "umbrella"]),
    ("araffe giraffe eating leaves from a tall tree", ["giraffe", "leaf", "tree"]),
    ("arafly dressed woman walking down a street with a purse", ["woman", "street", "purse"]),
]


@pytest.mark.parametrize("caption,expected", CASES)
def test_blip_large_style(caption, expected):
    assert extract_nouns(caption) == expected
    # the clean-up CLIP sees never changes the objects
    assert extract_nouns(clean_caption(caption)) == expected


def test_enough_cases_and_version():
    assert len(CASES) >= 40
    assert NOUNS_VERSION == "rules-3"
