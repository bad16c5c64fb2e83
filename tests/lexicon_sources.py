"""The detection category lists the noun lexicon covers, and how a category name becomes lexicon entries.

``tests/data/detection_categories.json`` holds the names as their sources list them (COCO's 80 thing
classes and LVIS v1's 1203 from detectron2, Objects365's 365 from mmdetection; repository, path and commit
recorded beside each list). `entries` turns a name into the lexicon's format: lower case, singular, words
separated by one space, one entry per alternative the name lists. `python -m tests.lexicon_sources` prints
the lexicon's source sections, which are checked in below the hand-written part of nouns_lexicon.txt.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

CATEGORIES = Path(__file__).parent / "data" / "detection_categories.json"

#: Objects365 names that are not one object in the singular: "a/b c" alternatives, "x and y" pairs,
#: plurals and misspellings (its v1 list spells better than v2, but still writes "pine apple").
OBJECTS365_SPECIAL = {
    "cutting/chopping board": ["cutting board", "chopping board"],
    "trash bin/can": ["trash bin", "trash can"],
    "shampoo/shower gel": ["shampoo", "shower gel"],
    "picture/frame": ["picture frame", "frame"],
    "tape measure/ruler": ["tape measure", "ruler"],
    "skating and skiing shoes": ["skating shoe", "skiing shoe"],
    "electronic stove and gas stove": ["electronic stove", "gas stove"],
    "sneakers": ["sneaker"], "street lights": ["street light"], "leather shoes": ["leather shoe"],
    "boots": ["boot"], "slippers": ["slipper"], "sandals": ["sandal"], "high heels": ["high heel"],
    "cookies": ["cookie"], "grapes": ["grape"], "green beans": ["green bean"], "nuts": ["nut"],
    "dates": ["date"], "meat balls": ["meat ball"], "spring rolls": ["spring roll"], "chips": ["chip"],
    "noodles": ["noodle"], "toiletries": ["toiletry"], "cleaning products": ["cleaning product"],
    "green vegetables": ["green vegetable"], "skis": ["ski"], "chopsticks": ["chopstick"],
    "pine apple": ["pineapple"], "hotair balloon": ["hot air balloon"], "head phone": ["headphone"],
    "tea pot": ["teapot"], "hair drier": ["hair dryer"], "canned": ["can"], "cd": ["cd"],
}


def load() -> dict:
    return json.loads(CATEGORIES.read_text("utf-8"))


def _tidy(name: str) -> str:
    name = re.sub(r"\([^)]*\)", " ", name)  # LVIS's qualifiers: "bat_(animal)" -> bat
    return " ".join(name.replace("_", " ").lower().split())


def entries(source: str, name: str) -> list[str]:
    """Lexicon entries of one category ``name`` of ``source`` ('coco', 'lvis_v1', 'objects365_v1')."""
    if source == "lvis_v1":  # a few LVIS names list two names, separated by a space: "monitor_(...) computer_monitor"
        return [t for t in (_tidy(part) for part in name.split()) if t]
    key = " ".join(name.lower().split())
    if source == "objects365_v1" and key in OBJECTS365_SPECIAL:
        return list(OBJECTS365_SPECIAL[key])
    if source == "coco" and key == "skis":  # COCO's one plural name
        return ["ski"]
    if source == "objects365_v1":
        return [t for t in (_tidy(part) for part in key.split("/")) if t]
    return [_tidy(name)]


def all_entries() -> dict[str, list[str]]:
    """{source: its lexicon entries, in source order, without repeats}."""
    out = {}
    for source, spec in load().items():
        seen: list[str] = []
        for name in spec["names"]:
            seen += [e for e in entries(source, name) if e not in seen]
        out[source] = seen
    return out


def sections() -> str:
    """The lexicon's source sections: a header naming each source, then its entries."""
    cats = load()
    lines = []
    for source, found in all_entries().items():
        spec = cats[source]
        lines.append(f"# --- {source}: {spec['count']} categories ({spec['what']}), "
                     f"github.com/{spec['repo']} {spec['path']} at {spec['commit']}")
        lines += found
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(sections(), end="")
