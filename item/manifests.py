"""Reading the manifests a user writes (CSV or JSON Lines lists of images), below every stage.

Not the store's own ``manifest.json`` (``item/store/manifest.py``): these are the files given to
``item featurize``, ``item store annotate`` and ``item predict``. Featurize (its discovery),
the store (annotate) and classify (predict) read them here, so the store does not depend on the
featurize stage to read a CSV. Only syntax and shape are checked here; what a row means (does
its file exist, is its label known) is the caller's business.

What is refused, and how:

- the whole file, in one line: not UTF-8, not CSV / JSON, no ``path`` column, a column given twice
  in a CSV header (names compare trimmed and case-insensitive: ``label`` and ``Label `` are one);
- one row, as that row's problem (``file:line: ...``; the rest are read): a field longer than
  ``MAX_FIELD_CHARS`` (Python's csv module refused the whole file past its 131,072-character field
  limit), a JSON line that does not parse, is no object, or names a key twice, a ``path`` that is a
  URL (:data:`URL_REFUSAL`: relative-path resolution turned ``http://host/x.jpg`` into a mangled
  missing file).

A CSV cell that ITEM's own CSV export protected against formula injection (an apostrophe before
``=``, ``+``, ``-``, ``@``, ...: :mod:`item.spreadsheet`) is read without that apostrophe, so an
export edited and given back to ``annotate`` holds the values the store holds.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import threading

from item.errors import InputError
from item.spreadsheet import unescape_cell

LABELS = ("real", "fake", "unknown")
MANIFEST_EXTENSIONS = (".csv", ".jsonl", ".json")
MANIFEST_COLUMNS = ("path", "label", "generator", "split", "caption")
#: A field longer than this is its row's problem (a caption has its own, lower limit in featurize).
MAX_FIELD_CHARS = 1_000_000
URL_REFUSAL = "URLs are not supported: download the files first"

LABEL_ALIASES = {
    "real": "real", "0": "real", "nature": "real", "natural": "real",
    "fake": "fake", "1": "fake", "ai": "fake", "generated": "fake", "synthetic": "fake",
    "unknown": "unknown", "": "unknown",
}

#: The generator of an image whose source names none: a ``0_real/1_fake`` (or ``real/fake``, ``nature/ai``)
#: folder with no folder above its label folder, a manifest without a generator column or with an empty
#: value, a single image file, all without ``--generator``. One name everywhere: stores, ``eval``'s tables,
#: ``store info``, ``neighbors --generator``, the API. Stores written before it hold '' (older tables showed
#: '-'); readers read both as this name (:func:`generator_name`).
UNKNOWN_GENERATOR = "unknown"
#: How a generator name is found, in the order tried (``item store info`` prints it).
GENERATOR_RULE = ("--generator when given; else the folder layout's generator folder (the outermost folder "
                  "above the label folder that is not a split folder) or a manifest's generator value; "
                  f"else {UNKNOWN_GENERATOR!r}")
_NO_GENERATOR = ("", "-")

#: 'scheme://...', and 'data:' (an inline data URL has no '//' but is no file either)
_URL = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.\-]*://|data:)", re.IGNORECASE)
_CSV_LIMIT_LOCK = threading.Lock()


class RowProblem(str):
    """What is wrong with one manifest row, in place of its record (the message, without 'file:line')."""


def generator_name(value) -> str:
    """A stored or given generator value -> its name: '' / '-' / None (no name) -> :data:`UNKNOWN_GENERATOR`."""
    text = "" if value is None else str(value)
    return UNKNOWN_GENERATOR if text.strip() in _NO_GENERATOR else text


def normalize_label(value) -> str | None:
    """A label value or alias -> 'real' | 'fake' | 'unknown'; None when not recognised."""
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str):
        return None
    return LABEL_ALIASES.get(value.strip().lower())


def is_url(path: str) -> bool:
    """True for 'scheme://...' (http, https, s3, gs, file, ...) and 'data:...': a location this tool does
    not fetch."""
    return bool(_URL.match(str(path).strip()))


def text(value) -> str:
    return "" if value is None else str(value).strip()


def read_text(src: str) -> str:
    """The manifest's text (UTF-8, a BOM dropped). Raises InputError."""
    try:
        with open(src, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise InputError(f"cannot read manifest {src!r}: {e.strerror or e}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"manifest {src!r} is not UTF-8 text (byte {e.start})") from None


def records(src: str, text_: str | None = None, keys=("path",)) -> tuple[str, list[tuple[int, dict | RowProblem]]]:
    """(layout, [(line number, {column: value} or RowProblem)]) of the manifest at ``src``.

    Column names are trimmed and lower case; the layout is 'manifest-csv' or 'manifest-jsonl'. One of
    ``keys`` must be a column. Raises InputError for what refuses the whole file (see the module docstring).
    """
    text_ = read_text(src) if text_ is None else text_
    if src.lower().endswith(".csv"):
        return "manifest-csv", _csv_records(src, text_, keys)
    return "manifest-jsonl", _json_records(src, text_, keys)


def read_manifest_records(src: str, keys=("path",)) -> tuple[list[str], list[tuple[str, dict]]]:
    """A manifest's columns and raw records, for tools that update stored rows (``item store annotate``)
    or score listed files (``item predict``).

    Returns (column names, lower case; [(origin 'file:line', {column: value})]); a relative ``path``
    is resolved against the manifest's folder. A row problem (an over-long field, a URL, a bad JSON
    line) refuses the file in one line naming the row: these tools change or score exactly what they
    are given. ``keys``: the columns of which one must be present (annotate takes ``path`` or ``id``).
    A missing file or an empty value is the caller's business.
    """
    if not src.lower().endswith(MANIFEST_EXTENSIONS):
        raise InputError(f"{src!r} is not a manifest ({', '.join(MANIFEST_EXTENSIONS)})")
    _, recs = records(src, keys=keys)
    base = os.path.dirname(os.path.abspath(src))
    columns: list[str] = []
    out = []
    for lineno, rec in recs:
        if isinstance(rec, RowProblem):
            raise InputError(f"{src}:{lineno}: {rec}")
        for k in rec:
            if k not in columns:
                columns.append(k)
        path = text(rec.get("path"))
        if path:
            if is_url(path):
                raise InputError(f"{src}:{lineno}: {path[:200]}: {URL_REFUSAL}")
            rec["path"] = os.path.abspath(path if os.path.isabs(path) else os.path.join(base, path))
        out.append((f"{src}:{lineno}", rec))
    return columns, out


def _missing_path_error(src: str, found, keys=("path",)) -> InputError:
    if tuple(keys) != ("path",):
        return InputError(f"manifest {src!r} has no {' or '.join(repr(k) for k in keys)} column; found columns: "
                          f"{', '.join(repr(c) for c in found) or '(none)'}")
    return InputError(f"manifest {src!r} has no 'path' column; found columns: "
                      f"{', '.join(repr(c) for c in found) or '(none)'}; expected: {', '.join(MANIFEST_COLUMNS)} "
                      "(path required)")


def _too_long(rec: dict) -> RowProblem | None:
    for k, v in rec.items():
        if isinstance(v, str) and len(v) > MAX_FIELD_CHARS:
            return RowProblem(f"the {k!r} field has {len(v):,} characters, more than the {MAX_FIELD_CHARS:,} "
                              "a manifest field may hold; row skipped")
    return None


def _csv_records(src: str, text_: str, keys):
    # csv's own field limit (131,072 characters by default) refused the whole file for one long caption;
    # it is a process-wide setting, lifted only while this file is parsed. Over-long fields are then the
    # row's problem (_too_long).
    with _CSV_LIMIT_LOCK:
        old = csv.field_size_limit()
        csv.field_size_limit(max(old, len(text_) + 1))
        try:
            return _csv_rows(src, text_, keys)
        finally:
            csv.field_size_limit(old)


def _csv_rows(src: str, text_: str, keys):
    reader = csv.reader(io.StringIO(text_, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(f"manifest {src!r} is empty; expected a header row with: {', '.join(MANIFEST_COLUMNS)}") from None
    except csv.Error as e:
        raise InputError(f"manifest {src!r} is not valid CSV: {e}") from None
    cols = [h.strip().lower() for h in header]
    seen: dict[str, int] = {}
    for i, c in enumerate(cols):
        if c and c in seen:
            raise InputError(f"manifest {src!r}: column {c!r} is given twice (columns {seen[c] + 1} and {i + 1}); "
                             "keep one")
        seen[c] = i
    if not set(keys) & set(cols):
        raise _missing_path_error(src, [h.strip() for h in header], keys)
    out = []
    try:
        start = reader.line_num + 1
        for values in reader:
            if not any(v.strip() for v in values):
                start = reader.line_num + 1
                continue
            rec = {c: unescape_cell(v) for c, v in zip(cols, values) if c}
            out.append((start, _too_long(rec) or rec))
            start = reader.line_num + 1
    except csv.Error as e:
        raise InputError(f"manifest {src!r} line {reader.line_num}: not valid CSV: {e}") from None
    return out


def _pairs_once(pairs):
    """object_pairs_hook: a JSON object naming one key twice (trimmed, case-insensitive) is refused."""
    obj: dict = {}
    for k, v in pairs:
        key = str(k).strip().lower()
        if key in obj:
            raise _Duplicate(key)
        obj[key] = v
    return obj


class _Duplicate(ValueError):
    pass


def _json_records(src: str, text_: str, keys):
    stripped = text_.lstrip()
    items = []
    if stripped.startswith("["):  # a .json file holding one array of objects
        try:
            data = json.loads(text_, object_pairs_hook=_pairs_once)
        except _Duplicate as e:
            raise InputError(f"manifest {src!r}: an object gives the key {e.args[0]!r} twice; keep one") from None
        except json.JSONDecodeError as e:
            raise InputError(f"manifest {src!r}: not valid JSON ({e})") from None
        items = [(i + 1, obj) for i, obj in enumerate(data)]  # number = position in the array
    else:
        # JSON Lines ends a line at \n only: str.splitlines() also breaks at U+2028, U+2029, U+0085 and others,
        # which json.dumps(..., ensure_ascii=False) leaves raw inside strings (a \r before \n is JSON whitespace).
        for lineno, line in enumerate(text_.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                items.append((lineno, json.loads(line, object_pairs_hook=_pairs_once)))
            except _Duplicate as e:
                items.append((lineno, RowProblem(f"the key {e.args[0]!r} is given twice; row skipped")))
            except json.JSONDecodeError as e:
                items.append((lineno, RowProblem(f"not valid JSON ({e.msg})")))
    out, keys_seen = [], []
    for lineno, obj in items:
        if isinstance(obj, RowProblem):
            out.append((lineno, obj))
            continue
        if not isinstance(obj, dict):
            out.append((lineno, RowProblem(f"expected a JSON object, got {type(obj).__name__}")))
            continue
        for k in obj:
            if k not in keys_seen:
                keys_seen.append(k)
        rec = {k: v for k, v in obj.items() if k}
        out.append((lineno, _too_long(rec) or rec))
    if out and not any(isinstance(rec, dict) and set(keys) & set(rec) for _, rec in out) and \
            any(isinstance(rec, dict) for _, rec in out):
        raise _missing_path_error(src, keys_seen, keys)
    return out
