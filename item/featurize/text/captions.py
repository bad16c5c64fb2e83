"""Caption clean-up: what CLIP encodes of a BLIP caption.

BLIP-large's unconditional captions carry artefacts of its training text: a made-up leading word of the
"arafed" family ("arafed man in a suit", "araffe giraffe", "arafly dressed woman") and a "there is a ...
that is ..." frame ("there is a man that is riding a bike"). They say nothing about the image, but CLIP
encodes every word, so `clean_caption` strips them from the text CLIP encodes; the store keeps the raw
caption and the encoded one (columns ``caption`` and ``caption_encoded``). Captions given by the user are
encoded as given. ``CLEANUP_VERSION`` names the rules and is part of a store's identity.
"""

from __future__ import annotations

import re

#: Bump when `clean_caption` changes what it returns.
CLEANUP_VERSION = "blip-artefacts-1"

# "arafed", "araffe", "arafly", "araffed", "arrafed", "arav...": never English words.
_ARTEFACT = re.compile(r"^ar+a+f+[a-z]*$|^arav[a-z]*$")
# A caption opening with "there is/are", "there's", "this is", "these are": the frame goes, and with it the
# first relative "that is / who are / which is" that only carries the frame on ("that is riding" -> "riding").
_FRAME = re.compile(r"^(?:there\s+(?:is|are)|there's|this\s+is|these\s+are)\s+(?=\S)")
_RELATIVE = re.compile(r"\s(?:that|who|which)\s+(?:is|are)\s+")
_VOWEL = re.compile(r"^[aeiou]")


def clean_caption(caption: str) -> str:
    """The text CLIP encodes for a BLIP caption: artefact words and the "there is ... that is" frame removed.

    "arafed man in a suit and tie standing in front of a building" -> "man in a suit and tie standing in
    front of a building"; "there is a dog that is sitting on the couch" -> "a dog sitting on the couch".
    Whitespace is normalised; the article before a removed word is made to agree ("an arafed man" -> "a
    man"). A caption that would become empty is returned unchanged (normalised).
    """
    text = " ".join(str(caption).split())
    words = text.split(" ")
    kept: list[str] = []
    moved: set[int] = set()  # positions in `kept` of words that stood right before a removed word
    for w in words:
        if _ARTEFACT.match(w.lower().strip(",.;:!?'\"")):
            if kept:
                moved.add(len(kept) - 1)
            continue
        kept.append(w)
    # articles that stood before a removed word now stand before the next one: make them agree
    for i in sorted(moved):
        if i + 1 < len(kept) and kept[i].lower() in ("a", "an"):
            want = "an" if _VOWEL.match(kept[i + 1].lower()) else "a"
            kept[i] = want if kept[i].islower() else want.capitalize()
    out = " ".join(kept)
    framed = _FRAME.match(out.lower())
    if framed:
        out = out[framed.end():]
        out = _RELATIVE.sub(" ", out, count=1)
    out = " ".join(out.split())
    return out or text
