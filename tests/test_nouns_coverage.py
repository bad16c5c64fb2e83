"""Nouns are never lost: Unicode separators break words, and the lexicon covers the category names of COCO
(80), LVIS v1 (1203) and Objects365 (365); captions without nouns or not in English are counted.

The category lists sit in tests/data/detection_categories.json as their sources write them (repository,
path and commit recorded there and in the lexicon's header); tests/lexicon_sources.py normalises them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from item.cli import app
from item.featurize.text.nouns import (
    MEDIUM_OR_OBJECT,
    NOUNS_VERSION,
    STOP_WORDS,
    extract_nouns,
    lexicon,
    reads_as_english,
)
from item.store import StoreReader, schema
from tests import lexicon_sources

LEXICON = Path(__file__).resolve().parents[1] / "item" / "featurize" / "text" / "nouns_lexicon.txt"

SEPARATORS = ["\u2028", "\u2029", "\u0085", "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00a0", "\u3000",
              "\u200d\u200b", "\u1680"]


@pytest.mark.parametrize("sep", SEPARATORS, ids=[f"U+{ord(s[0]):04X}" for s in SEPARATORS])
def test_unicode_separators_break_words(sep):
    assert extract_nouns(f"a dog{sep}on a sofa") == ["dog", "sofa"]
    assert extract_nouns(f"a man{sep}with a hat") == ["man", "hat"]
    assert extract_nouns(f"a cat{sep}{sep}and a laptop computer") == ["cat", "laptop computer"]


def test_the_source_lists_are_complete():
    cats = lexicon_sources.load()
    assert {k: len(v["names"]) for k, v in cats.items()} == {"coco": 80, "lvis_v1": 1203, "objects365_v1": 365}
    assert all(v["count"] == len(v["names"]) and len(v["commit"]) == 40 for v in cats.values())


def test_lexicon_holds_the_generated_sections_and_cites_each_source():
    text = LEXICON.read_text("utf-8")
    assert lexicon_sources.sections() in text  # regenerate with `python -m tests.lexicon_sources`
    for spec in lexicon_sources.load().values():
        assert spec["repo"] in text and spec["path"] in text and spec["commit"] in text


#: Category names the extractor never returns alone, and why: "can" is a stop word (a modal verb far more
#: often than a tin); painting and poster alone in a phrase name the image's medium (rule 6), see below.
NEVER_ALONE = {"can"}


def _every_entry():
    for source, entries in lexicon_sources.all_entries().items():
        for entry in entries:
            yield source, entry


def test_every_category_name_gives_its_noun():
    missed = []
    for source, entry in _every_entry():
        if entry in NEVER_ALONE:
            assert entry in STOP_WORDS
            continue
        caption = f"a {entry} on the wall." if entry in MEDIUM_OR_OBJECT else f"a photo of a {entry}."
        if entry not in extract_nouns(caption):
            missed.append((source, entry, extract_nouns(caption)))
    assert not missed, missed[:20]


def test_multi_word_names_give_the_multi_word_noun():
    singles, compounds = lexicon()
    multi = [e for _, e in _every_entry() if " " in e]
    assert len(multi) > 300 and all(e in compounds for e in multi)
    assert extract_nouns("a laptop computer on a desk") == ["laptop computer", "desk"]
    assert extract_nouns("cakes in a display case") == ["cake", "display case"]


GAPS = [
    ("a living room full of furniture", ["living room", "furniture"]),
    ("a man singing on a stage", ["man", "stage"]),
    ("a skateboarder jumping off a ramp", ["skateboarder", "ramp"]),
    ("a crowd at a concert", ["concert"]),
    ("pastries in a display case", ["pastry", "display case"]),
    ("a donut with sprinkles", ["donut", "sprinkles"]),
    ("a cat sleeping on a laptop computer", ["cat", "laptop computer"]),
]


@pytest.mark.parametrize("caption,want", GAPS)
def test_gaps_named_in_the_issue(caption, want):
    got = extract_nouns(caption)
    assert all(w in got for w in want), got


def test_version_bumped():
    assert NOUNS_VERSION == "rules-3"


ENGLISH = ["a dog on a sofa", "arafed man riding a bike", "two cats", "abstract", "ein Hund auf dem Sofa",
           "a café with tables", "", "1234"]
NOT_ENGLISH = ["一只狗在沙发上", "собака на диване", "un chien sur un canapé", "la casa blanca", "犬がソファの上にいる",
               "ένας σκύλος σε έναν καναπέ"]


@pytest.mark.parametrize("caption", ENGLISH)
def test_reads_as_english(caption):
    assert reads_as_english(caption)


@pytest.mark.parametrize("caption", NOT_ENGLISH)
def test_does_not_read_as_english(caption):
    assert not reads_as_english(caption)


def _manifest(folder: Path, captions: list[str]) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    m = folder / "manifest.csv"
    with open(m, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "caption"])
        for i, c in enumerate(captions):
            p = folder / f"im{i}.png"
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(p)
            w.writerow([str(p), "real" if i % 2 else "fake", c])
    return m


def test_manifest_captions_with_separators_keep_every_noun_through_featurize(tmp_path):
    captions = ["a dog\u2028on a sofa", "a man\u200d\u200bwith a hat", "a cat\u0085on a mat\ufeffwith a ball",
                "一只狗在沙发上", "very nice and so beautiful"]
    store = tmp_path / "s"
    r = CliRunner().invoke(app, ["featurize", str(_manifest(tmp_path / "in", captions)), "--store", str(store),
                                 "--models", "tiny-random", "--captioner", "none", "--workers", "0",
                                 "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["n_captions_without_nouns"] == 2 and summary["n_captions_not_english"] == 1
    with StoreReader(store) as rd:
        meta = rd.metadata([schema.CAPTION, schema.NOUNS])
    nouns = {c: json.loads(n) if isinstance(n, str) else list(n) for c, n in zip(meta[schema.CAPTION], meta[schema.NOUNS])}
    assert nouns[captions[0]] == ["dog", "sofa"]
    assert nouns[captions[1]] == ["man", "hat"]
    assert nouns[captions[2]] == ["cat", "mat", "ball"]
    info = json.loads(CliRunner().invoke(app, ["store", "info", str(store), "--json"]).stdout)
    assert info["captions"] == {"without_nouns": 2, "not_english": 1, "runs_counted": 1, "runs": 1}
    text = CliRunner().invoke(app, ["store", "info", str(store)]).stdout
    assert "2 without any noun, 1 not in English" in text
