"""Caption clean-up removes only the artefact shapes BLIP produces, never a real word or a sentence's sense.

Hand-written BLIP-style captions (BLIP-large's unconditional artefacts, "there is ... that is" frames, end
loops of greedy decoding) and ordinary captions that only look alike. No model runs here.
"""

from __future__ import annotations

import pytest

from item.featurize.text.captions import CLEANUP_VERSION, clean_caption

CLEANED = [
    # the arafed family, wherever it stands; the article before it agrees with the next word
    ("arafed man in a suit and tie standing in front of a building",
     "man in a suit and tie standing in front of a building"),
    ("araffe giraffe standing next to a tree in a field", "giraffe standing next to a tree in a field"),
    ("arafly dressed woman with a hat and a purse", "dressed woman with a hat and a purse"),
    ("an arafed elephant walking down a dirt road", "an elephant walking down a dirt road"),
    ("an arafed man riding a horse", "a man riding a horse"),
    ("a arafed old woman sitting on a bench", "an old woman sitting on a bench"),
    ("arrafed view of a city at night", "view of a city at night"),
    ("araffed zebra standing in the grass", "zebra standing in the grass"),
    ("araffes are standing in a field", "are standing in a field"),
    ("arafe cat laying on a bed", "cat laying on a bed"),
    ("two arafed men standing next to each other", "two men standing next to each other"),
    ("Arafed woman holding an umbrella", "woman holding an umbrella"),
    # the frame, and the relative that only carries it on to a progressive
    ("there is a dog that is sitting on the couch", "a dog sitting on the couch"),
    ("there are two men that are playing frisbee in the park", "two men playing frisbee in the park"),
    ("there is a arafed man that is holding a surfboard on the beach", "a man holding a surfboard on the beach"),
    ("there is a large airplane flying in the sky", "a large airplane flying in the sky"),
    ("this is a painting of a woman with a veil", "a painting of a woman with a veil"),
    ("there's a cat that is sleeping on a laptop", "a cat sleeping on a laptop"),
    ("There is a woman who is walking down the street", "a woman walking down the street"),
    ("these are three horses that are grazing in a field", "three horses grazing in a field"),
    ("there is a bus which is parked on the side of the road", "a bus which is parked on the side of the road"),
    # the frame goes; a relative that says something stays
    ("there is a man holding a sign that is red", "a man holding a sign that is red"),
    ("there is a sign that is red and white", "a sign that is red and white"),
    ("there is a man that is tall standing next to a car", "a man that is tall standing next to a car"),
    ("there is a woman sitting on a bench that is painted blue", "a woman sitting on a bench that is painted blue"),
    ("there are many people walking on a street that is crowded", "many people walking on a street that is crowded"),
    ("there is a cake, that is sitting on a table", "a cake, that is sitting on a table"),
    # doubled articles and end loops
    ("a a man riding a skateboard", "a man riding a skateboard"),
    ("a man sitting at the the table", "a man sitting at the table"),
    ("a plate with a fork and a knife and a knife and a knife and a", "a plate with a fork and a knife"),
    ("a train on the tracks tracks tracks", "a train on the tracks"),
    ("a bowl of fruit on a table on a table on a table", "a bowl of fruit on a table"),
    ("a dog sitting in the grass with a frisbee with a frisbee", "a dog sitting in the grass with a frisbee"),
    ("a bird sitting on a branch of a of a", "a bird sitting on a branch of a"),
    ("a cake with sprinkles on top of it of it of it of", "a cake with sprinkles on top of it"),
    ("a kitchen with a stove on on", "a kitchen with a stove on"),
    # everything at once
    ("there is a arafed woman that is holding a cup of coffee coffee coffee",
     "a woman holding a cup of coffee"),
]

UNTOUCHED = [
    "a man rowing a raft down a river",
    "a giraffe eating leaves from a tree",
    "a sign that is on a pole",
    "a woman that is holding an umbrella",  # no frame: the relative is the sentence's own
    "aravind standing in front of a temple",
    "a portrait of yasser arafat at a podium",
    "an araucaria tree in a garden",
    "an arabian horse running in a field",
    "a man and a woman walking a dog named bo bo",
    "a cha cha class in a dance studio",
    "a bye bye sign on a door",
    "a dog that is sitting next to a dog",
    "side by side photos of a cat",
    "a sign that says stop",
    "a man holding a sign that says there is no planet b",
    "two by two rows of chairs",
    "a chef in a kitchen full of pots and pans",
    "a woman with a bouquet of flowers, smiling",
]


@pytest.mark.parametrize("raw,clean", CLEANED)
def test_cleaned(raw, clean):
    assert clean_caption(raw) == clean


@pytest.mark.parametrize("caption", UNTOUCHED)
def test_untouched(caption):
    assert clean_caption(caption) == caption


def test_every_word_kept_is_a_word_of_the_caption_in_order():
    """The clean-up only deletes: what it returns is the caption's words, in order, with some left out."""
    for raw, _ in CLEANED:
        words, out = raw.lower().split(), clean_caption(raw).lower().split()
        it = iter(words)
        assert all(any(w == x or {w, x} <= {"a", "an"} for x in it) for w in out), raw


def test_nothing_left_keeps_the_caption_and_whitespace_is_normalised():
    assert clean_caption("arafed") == "arafed"
    assert clean_caption("  a  dog\ton a\u2028sofa ") == "a dog on a sofa"
    assert clean_caption("") == ""


def test_version_names_these_rules():
    assert CLEANUP_VERSION == "blip-artefacts-2"
