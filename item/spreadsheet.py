"""CSV cells a spreadsheet shows as text: the defence against CSV (formula) injection.

A CSV written by ITEM carries text that came from users and files: paths, captions, generator names
from a manifest. A spreadsheet that opens the file runs a cell starting with ``=`` (or ``+``, ``-``,
``@``, which it reads as the start of a formula too, and tab or carriage return, which some strip
before they look): ``=HYPERLINK(...)`` or ``=cmd|' /C calc'!A1`` in a caption would run on the
analyst's machine. Following OWASP's CSV-injection guidance, such a cell is written with a leading
apostrophe, which the spreadsheet shows as text and does not evaluate. The full-width forms of the
four signs (U+FF1D, U+FF0B, U+FF0D, U+FF20), which some spreadsheets also take for a formula, and a
leading line feed are treated the same. Only text cells are changed: numbers stay numbers.

:func:`unescape_cell` undoes exactly this (an apostrophe followed by one of those characters), so a
CSV that ITEM exported reads back as the values it holds (``item store annotate`` on an edited export).
Parquet and JSON outputs keep the raw values.
"""

from __future__ import annotations

#: The first characters that make a spreadsheet read a cell as a formula (OWASP, plus full-width forms).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def safe_cell(value):
    """``value`` as a CSV cell a spreadsheet shows as text: a string starting with one of
    ``FORMULA_STARTS`` gets a leading apostrophe; anything else (numbers included) is returned as is."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def safe_row(row: dict) -> dict:
    """:func:`safe_cell` of every value of a CSV row."""
    return {k: safe_cell(v) for k, v in row.items()}


def unescape_cell(value):
    """The value :func:`safe_cell` was given: one leading apostrophe before a formula start removed."""
    if isinstance(value, str) and value.startswith("'") and value[1:].startswith(FORMULA_STARTS):
        return value[1:]
    return value
