"""Caption clean-up: what CLIP encodes of a BLIP caption.

BLIP's captions carry a few artefacts of its training text that say nothing about the image, while CLIP
encodes every word. `clean_caption` removes exactly these shapes and nothing else:

- a made-up word of the "arafed" family ("arafed man in a suit", "araffe giraffe", "an arafly dressed
  woman", "arrafed view"): only the spellings ``ar(r)af(f)`` + one of a few endings (ed, e, es, ly, y,
  fed, fes, or none), so real words that merely start alike ("arafat", "aravind", "araucaria") stay;
- an opening "there is / there are / there's / this is / these are" frame, and with it a relative "that
  is / who are / which is" that only carries the frame on to a progressive verb ("there is a dog that is
  sitting on the couch" -> "a dog sitting on the couch"); a relative that says something ("... a sign that
  is red") is kept, as is one that follows a verb of the sentence;
- a doubled article ("a a man", "the the table");
- a loop at the end, where greedy decoding repeats itself until its length limit: a trailing run of one
  to four words repeated (two or more copies of a run of two or more words, three or more copies of one
  word, two of an article or preposition), possibly cut off part-way, keeps its first copy
  ("a plate with a fork and a knife and a knife and a knife and a" -> "a plate with a fork and a knife").

Whitespace is normalised; an article before a removed word is made to agree with the next one ("an arafed
man" -> "a man"). A caption that would become empty is returned unchanged (normalised). The store keeps
the raw caption and the encoded one (columns ``caption`` and ``caption_encoded``); captions given by the
user are encoded as given. ``CLEANUP_VERSION`` names these rules and is part of a store's identity.
"""

from __future__ import annotations

import re

#: Bump when `clean_caption` changes what it returns. 1: arafed family by prefix, any first relative after a
#: frame. 2: arafed family by exact shape, relative only before a progressive, doubled articles, end loops.
CLEANUP_VERSION = "blip-artefacts-2"

# The spellings BLIP produces: arafed, araffe, arafly, araffed, arrafed, araffes, arafe, araf, arafy.
_ARTEFACT = re.compile(r"^ar{1,2}af{1,2}(?:ed|e|es|ly|y|fed|fes)?(?:'s)?$")

_FRAME = re.compile(r"^(?:there\s+(?:is|are)|there's|this\s+is|these\s+are)\s+(?=\S)", re.IGNORECASE)
_RELATIVE = frozenset({"that", "who", "which"})
_BE = frozenset({"is", "are"})
_ARTICLES = frozenset({"a", "an", "the"})
#: Words whose doubling at the end is a decoding loop, never English ("on a table on on").
_SMALL = _ARTICLES | frozenset({"of", "on", "in", "at", "with", "and", "to", "for", "by"})
_VOWEL = re.compile(r"^[aeiou]")
_MAX_LOOP = 4


def _bare(word: str) -> str:
    return word.lower().strip(",.;:!?'\"")


def _drop_artefacts(words: list[str]) -> list[str]:
    kept: list[str] = []
    moved: set[int] = set()  # positions in `kept` of words that stood right before a removed word
    for w in words:
        if _ARTEFACT.match(_bare(w)):
            if kept:
                moved.add(len(kept) - 1)
            continue
        kept.append(w)
    # articles that stood before a removed word now stand before the next one: make them agree
    for i in sorted(moved):
        if i + 1 < len(kept) and kept[i].lower() in ("a", "an"):
            want = "an" if _VOWEL.match(kept[i + 1].lower()) else "a"
            kept[i] = want if kept[i].islower() else want.capitalize()
    return kept


def _drop_frame(words: list[str]) -> list[str]:
    framed = _FRAME.match(" ".join(words))
    if not framed:
        return words
    rest = " ".join(words)[framed.end():].split(" ")
    # the frame's own relative: "that is" + a progressive, before any verb of the sentence
    for i, w in enumerate(rest[:-2]):
        low = w.lower()
        if low.endswith("ing") or _bare(w) != low:  # a verb, or a punctuation break, came first
            break
        if low in _RELATIVE and rest[i + 1].lower() in _BE:
            nxt = _bare(rest[i + 2])
            if i > 0 and nxt.endswith("ing") and len(nxt) > 4:
                return rest[:i] + rest[i + 2:]
            break
    return rest


def _drop_doubled_articles(words: list[str]) -> list[str]:
    out: list[str] = []
    for w in words:
        if out and w.lower() in _ARTICLES and out[-1].lower() == w.lower():
            continue
        out.append(w)
    return out


def _drop_end_loop(words: list[str]) -> list[str]:
    """The words with a repeated run at the end kept once (see the module docstring)."""
    low = [_bare(w) for w in words]
    best = len(words)
    for n in range(1, _MAX_LOOP + 1):
        for cut in range(n):  # the last copy may be cut off after `cut` words
            end = len(low) - cut
            if end - 2 * n < 0:
                continue
            unit = low[end - n:end]
            if low[end:] != unit[:cut]:
                continue
            copies, start = 1, end - n
            while start - n >= 0 and low[start - n:start] == unit:
                copies += 1
                start -= n
            enough = copies >= 3 or (copies == 2 and (n >= 2 or unit[0] in _SMALL))
            if enough and start + n < best:
                best = start + n
    return words[:best]


def clean_caption(caption: str) -> str:
    """The text CLIP encodes for a BLIP caption (see the module docstring for the rules).

    "arafed man in a suit and tie standing in front of a building" -> "man in a suit and tie standing in
    front of a building"; "there is a dog that is sitting on the couch" -> "a dog sitting on the couch";
    "there is a man holding a sign that is red" -> "a man holding a sign that is red".
    """
    text = " ".join(str(caption).split())
    if not text:
        return text
    words = _drop_artefacts(text.split(" "))
    words = _drop_frame(words) if words else words
    words = _drop_doubled_articles(words)
    words = _drop_end_loop(words)
    out = " ".join(" ".join(words).split())
    return out or text
