"""Offline, rule-based extraction of the objects a caption names.

"arafed man riding a bike on the road" -> ['man', 'bike', 'road'].

No model, no download: a lexicon of concrete, visual English nouns ships in
``nouns_lexicon.txt`` next to this module (singular forms, multi-word
compounds such as "fire hydrant" or "wine glass"); a word is an object only
if it (after plural folding) is in the lexicon. The rules, in order:

1. Normalise: Unicode spaces and line separators (U+2028, U+2029, U+0085, ...) count as spaces and
   zero-width characters (U+200B, U+200C, U+200D, U+2060, U+FEFF) as word breaks, so they never glue two
   words into one; then Unicode folded to ASCII, lower case, BLIP junk tokens
   ("arafed", "araffe", ...) and prompt weights (":1.1") removed.
   Punctuation (, . ; : ! ? ( ) [ ] { } " /) ends a phrase: compounds never
   span it. Possessives are cut ("man's" -> man). Hyphenated words are looked
   up whole ("t-shirt") and else as their parts.
2. Longest match first: up to 4 words against the compound lexicon, the last
   word plural-folded ("wine glasses" -> "wine glass").
3. Plural folding: irregular table (men, women, people, children, mice,
   teeth, geese, feet, knives, leaves, ...), then -ies/-ves/-es/-s, keeping
   the first candidate that is in the lexicon. Words that are nouns only in
   their plural form (scissors, jeans, glasses, ...) are listed as such.
   "glasses" is eyewear unless followed by "of" or preceded by a drink word
   ("two glasses of wine" -> glass).
4. Not objects: non-visual nouns (picture, view, side, top, background,
   couple, group, ...), colours, numbers and stop words.
   A colour word that is also a noun (orange, lime, olive, ...) is a colour
   when the next word is a noun or another colour ("an orange reddish rose").
   A material noun directly before another noun is an adjective
   ("a glass bottle" -> bottle, "a wooden table" -> table).
5. Verbs: a lexicon word that is often a verb (ski, surf, park, drink, fly,
   ...) is dropped after to / an auxiliary / a pronoun ("about to ski",
   "they park"), and its -s form is dropped right after a noun
   ("a man rides", "a bird flies"). An -ing noun (building, painting) after
   an auxiliary or before a determiner is a verb ("is painting a fence").
6. The image's medium is never an object. Media words (cartoon, anime, illustration, rendering, artwork,
   watercolor, ...) and media compounds ("digital painting", "oil painting", "concept art", ...) never
   are; a word that may be an object or the medium (painting, drawing, sketch, poster) is the medium
   when "of" follows it ("a painting of a woman"), when it modifies a noun, or when its phrase names no
   other object (a prompt's ", painting"), and an object otherwise ("a painting on the wall").
7. A compound's head is the object: in a run of adjacent nouns a singular one-word noun modifies the
   next ("bathroom mirror" -> mirror, "banana sushi" -> sushi, "cotton candy" -> candy); plurals
   ("cups plates"), owners ("the dog's ball") and multi-word nouns ("fennec fox snow") stay apart, and a
   lexicon compound is matched first ("flat screen tv" -> one object).
8. Duplicates removed, order of first mention kept, at most ``max_objects``.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from importlib import resources

_MAX_COMPOUND = 4

#: Bump when extract_nouns changes its output (part of a store's identity, compat key ``nouns_version``).
NOUNS_VERSION = "rules-3"  # 3: Unicode separators break words; COCO, LVIS and Objects365 names in the lexicon

#: How a noun becomes the text CLIP encodes (noun_emb); the name is recorded (compat key ``noun_prompt``).
#: DESIGN.md, "Identity of a store and noun prompts", says why the default is the photo template.
NOUN_PROMPTS = {"photo": "a photo of a {}.", "bare": "{}"}
DEFAULT_NOUN_PROMPT = "photo"


def noun_prompt_template(name: str) -> str:
    """The template of a noun prompt name; InputError listing the valid names for an unknown one."""
    if name not in NOUN_PROMPTS:
        from item.errors import InputError

        raise InputError(f"unknown noun prompt {name!r}; valid: {', '.join(NOUN_PROMPTS)}")
    return NOUN_PROMPTS[name]


def noun_text(noun: str, prompt: str = DEFAULT_NOUN_PROMPT) -> str:
    """The text CLIP encodes for ``noun`` under the noun prompt ``prompt``: 'dog' -> 'a photo of a dog.'."""
    return noun_prompt_template(prompt).format(noun)

IRREGULAR = {
    "men": "man", "women": "woman", "people": "person", "persons": "person", "children": "child",
    "kids": "kid", "mice": "mouse", "teeth": "tooth", "geese": "goose", "feet": "foot", "knives": "knife",
    "leaves": "leaf", "loaves": "loaf", "wolves": "wolf", "calves": "calf", "halves": "half",
    "shelves": "shelf", "scarves": "scarf", "wives": "wife", "lives": "life", "thieves": "thief",
    "elves": "elf", "hooves": "hoof", "oxen": "ox", "cacti": "cactus", "fungi": "mushroom",
    "octopi": "octopus", "dice": "dice", "sheep": "sheep", "deer": "deer", "fish": "fish", "moose": "moose",
    "bison": "bison", "buffalo": "buffalo", "aircraft": "aircraft", "salmon": "salmon", "trout": "trout",
    "series": "series", "species": "species", "louse": "louse", "lice": "louse", "dominoes": "domino",
    "potatoes": "potato", "tomatoes": "tomato", "mangoes": "mango", "heroes": "hero", "buses": "bus",
    "busses": "bus", "gasses": "gas", "policemen": "policeman", "firemen": "fireman",
    "fishermen": "fisherman", "businessmen": "businessman", "businesswomen": "businesswoman",
    "policewomen": "policewoman", "gentlemen": "gentleman", "ladies": "lady", "skis": "ski",
    "pants": "pants", "fries": "fries", "clothes": "clothes",
}

#: The image's medium: never an object (see rule 6). Multi-word ones are lexicon compounds, so that they are
#: matched whole and their words consumed.
MEDIA = frozenset("""
cartoon cartoons anime manga illustration rendering render artwork art cgi clipart watercolor watercolour
""".split()) | frozenset({
    "digital painting", "digital art", "digital illustration", "oil painting", "acrylic painting",
    "watercolor painting", "watercolour painting", "pencil drawing", "charcoal drawing", "line drawing",
    "ink drawing", "concept art", "pixel art", "vector art", "clip art"})
#: Words that are an object or the image's medium depending on context (rule 6).
MEDIUM_OR_OBJECT = frozenset("painting drawing sketch poster".split())

#: Nouns that are not objects a detector can box (or are quantifiers / framing words).
NON_VISUAL = frozenset("""
picture pictures image images photo photos photograph photography view views front side sides top bottom
middle background foreground closeup shot shots scene scenes lot lots couple group groups bunch pair kind
kinds way ways day days time times number piece pieces variety set row rows line lines type sort area
part parts edge center centre corner distance air inside outside end half amount style color colour
colors colours shape detail details lighting quality resolution art artwork illustration render rendering
portrait landscape scenery nature night evening morning afternoon weather hdr thing things something
stuff other others one ones each lot world life space close angle look shade bit full sort couple
team family crowd audience game match trick meal display assortment collection selection bunch herd flock
pile stack plenty lots dozen several many few some all both dark light glow beauty perspective
""".split())

STOP_WORDS = frozenset("""
a an the this that these those there here it its it's is are was were be been being am do does did
has have had having of in on at to from by with without for into onto over under above below behind
near next beside besides between among around along across through toward towards against up down out
off away back about as and or but nor so yet if then than while when where which who whom whose what
why how very too also just only not no yes some any all both each every few many much more most other
such own same he she they we you i me him her them us my your his their our mine yours hers theirs
ours itself himself herself themselves while can could will would shall should may might must
""".split())

COLOURS = frozenset("""
red orange yellow green blue purple violet pink brown black white gray grey silver gold golden beige
tan maroon navy teal turquoise cyan magenta lavender lilac olive lime peach coral cream ivory khaki
crimson scarlet indigo amber bronze copper charcoal rust salmon mint plum burgundy chocolate lemon
reddish bluish greenish yellowish pinkish brownish orangish purplish greyish grayish whitish blackish
dark light bright pale colorful colourful multicolored multicoloured striped spotted
""".split())

#: Colour words that are also objects; a colour when the next word is a noun or a colour.
_COLOUR_NOUNS = frozenset("orange lime olive peach plum lemon salmon chocolate cream coral gold silver".split())

#: Material nouns used as adjectives right before another noun ("glass bottle").
MATERIALS = frozenset("""
glass wood wooden stone marble metal plastic paper brick leather steel iron gold silver concrete ceramic
porcelain rubber cotton wool denim silk straw clay bamboo crystal cardboard tin copper bronze lace dirt
velvet fur
""".split())

#: Lexicon words often used as verbs.
VERBISH = frozenset("""
ski surf skate skateboard snowboard park walk ride drink fly duck watch stand wave play fire light bat
sink fence dress brush comb iron hammer saw drill paint swing slide bowl lift fish cook shower bath
camp cross plant seat file cover mask shop frame box pack rest land dock bridge store spray sign board
ring mirror rock dust smoke rain snow ice hail water jam butter salt pepper milk bottle can train
kite sail paddle row skate bike bus truck ship cart shovel rake mop vacuum tie button zip lock key
chain rope wrap mow pitch catch bag glove kick skip step stamp stock tap top trim
""".split())

_VERB_CONTEXT = frozenset("""
to will would can could shall should may might must they he she we i you who which that does do
did not
""".split())
_AUX = frozenset("is are was were be been being am".split())
_DETERMINERS = frozenset("a an the his her their its our my your some two three four this that these those".split())
_DRINK_WORDS = frozenset("wine drinking champagne beer water cocktail martini shot".split())
_NUMBERS = frozenset("""
zero one two three four five six seven eight nine ten eleven twelve dozen hundred thousand first second
third fourth fifth
""".split())

_POSSESSIVE = "'s"  # a token no rule takes for a noun: it keeps an owner apart from what it owns
_JUNK = re.compile(r"^(?:ara+f+\w*|arafed|araffe|arafe|arav\w*)$")
_PHRASE_BREAK = re.compile(r"[,.;:!?()\[\]{}\"/|\n\r\t]+")
_WEIGHT = re.compile(r":\s*-?\d+(?:\.\d+)?")
# Any Unicode whitespace but the phrase breaks \n \r \t (so U+2028, U+2029, U+0085, U+00A0, U+3000, ...),
# and the zero-width characters, which break words without showing a space.
_SEPARATOR = re.compile(r"[^\S\n\r\t]|[\u200b\u200c\u200d\u2060\ufeff]")
_TOKEN = re.compile(r"[a-z]+(?:['-][a-z]+)*")


@functools.lru_cache(maxsize=1)
def lexicon() -> tuple[frozenset, frozenset]:
    """(single-word nouns, multi-word compounds) from nouns_lexicon.txt, lower case, singular."""
    text = resources.files(__package__).joinpath("nouns_lexicon.txt").read_text(encoding="utf-8")
    singles, compounds = set(), set()
    for line in text.splitlines():
        entry = " ".join(line.split()).lower()
        if not entry or entry.startswith("#"):
            continue
        (compounds if " " in entry else singles).add(entry)
    singles -= NON_VISUAL
    singles -= MEDIA
    return frozenset(singles), frozenset(compounds)


def singular(word: str) -> str | None:
    """The lexicon form of ``word`` (singular), or None when it is not a lexicon noun."""
    singles, _ = lexicon()
    if word in IRREGULAR:
        return IRREGULAR[word] if IRREGULAR[word] in singles else None
    if word in singles:
        return word
    candidates = []
    if word.endswith("ies") and len(word) > 4:
        candidates.append(word[:-3] + "y")
    if word.endswith("ves"):
        candidates += [word[:-3] + "f", word[:-3] + "fe"]
    if word.endswith("es"):
        candidates.append(word[:-2])
    if word.endswith("s") and not word.endswith("ss"):
        candidates.append(word[:-1])
    return next((c for c in candidates if c in singles), None)


def _compound(words: list[str]) -> str | None:
    _, compounds = lexicon()
    last = words[-1]
    forms = [last, IRREGULAR.get(last, last)]
    if last.endswith("ies"):
        forms.append(last[:-3] + "y")
    if last.endswith("ves"):
        forms += [last[:-3] + "f", last[:-3] + "fe"]
    if last.endswith("es"):
        forms.append(last[:-2])
    if last.endswith("s") and not last.endswith("ss"):
        forms.append(last[:-1])
    head = " ".join(words[:-1])
    return next((f"{head} {f}" for f in forms if f"{head} {f}" in compounds), None)


def _normalise(caption: str) -> list[list[str]]:
    """Caption -> phrases (lists of lower-case tokens), split at punctuation."""
    text = _SEPARATOR.sub(" ", caption)  # before the ASCII fold, which would drop them and glue words
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    text = text.replace("\u2019", "'")
    text = _WEIGHT.sub(" ", text)
    phrases = []
    for chunk in _PHRASE_BREAK.split(text):
        tokens = []
        for tok in _TOKEN.findall(chunk):
            owner = tok.endswith("'s") or tok.endswith("s'")
            if tok.endswith("'s"):
                tok = tok[:-2]
            elif tok.endswith("s'"):
                tok = tok[:-1]
            tok = tok.strip("'-")
            if not tok or _JUNK.match(tok):
                continue
            tokens.append(tok)
            if owner:  # "the dog's ball": the owner is an object of its own, not a modifier (rule 7)
                tokens.append(_POSSESSIVE)
        if tokens:
            phrases.append(tokens)
    return phrases


def _is_noun_at(tokens: list[str], i: int) -> bool:
    """Whether tokens[i] reads as a lexicon noun (used to look one word ahead / behind)."""
    if i < 0 or i >= len(tokens):
        return False
    return singular(tokens[i]) is not None and tokens[i] not in STOP_WORDS


def _phrase_nouns(tokens: list[str]) -> list[str]:
    found: list[tuple[str, int, int, bool]] = []  # (noun, first token, end token, may modify the next noun)
    prev_noun = False
    i = 0
    while i < len(tokens):
        # 1. longest compound first
        hit = None
        for n in range(min(_MAX_COMPOUND, len(tokens) - i), 1, -1):
            hit = _compound(tokens[i:i + n])
            if hit:
                break
        if hit:
            n = len(hit.split())
            if hit in MEDIA:  # "digital painting": the medium, not an object
                prev_noun = False
            else:
                found.append((hit, i, i + n, False))  # multi-word nouns stay apart ("fennec fox snow")
                prev_noun = True
            i += n
            continue
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        prv = tokens[i - 1] if i > 0 else ""
        noun = None
        if "-" in tok:
            noun = singular(tok) or singular(tok.replace("-", ""))
            if noun is None:  # look at the parts: "snow-covered" -> snow
                parts = [p for p in tok.split("-") if p]
                sub = _phrase_nouns(parts)
                if sub:
                    found.extend((x, i, i + 1, False) for x in sub)
                    prev_noun = True
                    i += 1
                    continue
        elif tok not in STOP_WORDS and tok not in _NUMBERS and not tok.isdigit():
            noun = singular(tok)
        if noun is not None and noun in NON_VISUAL:
            noun = None
        if noun is not None:
            noun = _disambiguate(tok, noun, prv, nxt, prev_noun, tokens, i)
        if noun is not None and noun in MEDIUM_OR_OBJECT and _is_medium(tokens, i):
            noun = None
        if noun is not None:
            found.append((noun, i, i + 1, tok == noun))
        prev_noun = noun is not None
        i += 1
    # rule 7: in a run of adjacent nouns, a singular one-word noun right before another one modifies it
    return [noun for k, (noun, _, end, modifier) in enumerate(found)
            if not (modifier and k + 1 < len(found) and found[k + 1][1] == end)]


def _is_medium(tokens: list[str], i: int) -> bool:
    """Whether tokens[i] (painting, drawing, ...) names the image's medium here rather than an object."""
    nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
    in_style = nxt == "in" and tokens[i + 2:i + 4] == ["the", "style"]
    if nxt in ("of", "by") or in_style or _is_noun_at(tokens, i + 1):
        return True  # "a painting of a ship", "a drawing by", "painting in the style of", "painting style"
    others = [j for j in range(len(tokens)) if j != i and _is_noun_at(tokens, j)
              and singular(tokens[j]) not in NON_VISUAL]
    return not others  # a phrase that names nothing else: a prompt's ", oil on canvas painting"


def _disambiguate(tok, noun, prv, nxt, prev_noun, tokens, i):
    """Return noun, another reading of it, or None when tok is a verb / adjective here."""
    next_is_noun = _is_noun_at(tokens, i + 1) or nxt in COLOURS
    if tok in _COLOUR_NOUNS and next_is_noun:
        return None
    if noun in MATERIALS and _is_noun_at(tokens, i + 1) and nxt not in STOP_WORDS:
        return None
    if noun == "glasses" or tok == "glasses":
        if nxt == "of" or prv in _DRINK_WORDS:
            return "glass"
        return "glasses"
    if noun in VERBISH:
        if prv in _VERB_CONTEXT:
            return None
        if tok != noun and tok.endswith("s") and prev_noun and tok not in IRREGULAR:
            # "a man rides", "a bird flies": third-person verb right after a noun
            return None
    if tok.endswith("ing") and (prv in _AUX or nxt in _DETERMINERS):
        return None
    return noun


def reads_as_english(caption: str) -> bool:
    """Whether ``caption`` reads as English to this extractor, which is English only.

    Not English: fewer than half of its letters are Latin once accents are folded ("一只狗在沙发上",
    "собака на диване"), or it has three or more words and not one is an English stop word or a lexicon
    noun ("un chien sur un canapé"). A caption without letters is not judged (True).
    """
    if not isinstance(caption, str):
        return True
    letters = [c for c in caption if c.isalpha()]
    if not letters:
        return True
    latin = sum(unicodedata.normalize("NFKD", c).encode("ascii", "ignore").isalpha() for c in letters)
    if latin * 2 < len(letters):
        return False
    words = [w for phrase in _normalise(caption) for w in phrase if w != _POSSESSIVE]
    if len(words) < 3:
        return True
    return any(w in STOP_WORDS or singular(w) is not None for w in words)


def extract_nouns(caption: str, max_objects: int = 8) -> list[str]:
    """The objects a caption names, singular, lower case, in order of first mention.

    At most ``max_objects`` (>= 0) nouns, duplicates removed. Empty, whitespace-only,
    non-English (no lexicon word) or non-string captions give [].
    """
    if max_objects < 0:
        raise ValueError("max_objects must be >= 0")
    if not isinstance(caption, str) or not caption.strip() or max_objects == 0:
        return []
    seen: list[str] = []
    for phrase in _normalise(caption):
        for noun in _phrase_nouns(phrase):
            if noun not in seen:
                seen.append(noun)
                if len(seen) >= max_objects:
                    return seen
    return seen
