"""Turn the SOURCE arguments of ``item featurize`` into labelled image rows.

A source is a folder, a manifest (CSV or JSON Lines) or a single image file.
No pixel is read here: decoding (and its skip reasons) is :mod:`.decode`'s job.

Folders
-------
The folder is walked recursively in sorted (deterministic) order. Files with
an image extension (case-insensitive: ``IMAGE_EXTENSIONS``) become rows; other
files, and directories (even one named ``x.jpg``), do not. Names starting
with '.' (``.git``, macOS ``._x.jpg`` resource forks) are skipped. Symlinked
files are listed as they are. Symlinked folders are followed, and what is
found through them is labelled by where the link is listed, not by where its
target lives (``fake/more -> ../real`` gives fake rows); a folder reached along
two paths (GenImage generators sharing one ``nature`` folder) is taken along
each; a link back to one of its own ancestors (a loop) is reported and not
followed.

Each path component below the source is read, deepest first:

- label folders: ``0_real``/``1_fake`` (ForenSynths, UniversalFakeDetect),
  ``real``/``fake``, ``nature``/``ai`` (GenImage); the deepest one wins;
- split folders: ``train``, ``val``, ``validation`` (recorded as ``val``),
  ``test``, anywhere in the path; the deepest one wins;
- generator: the first (outermost) component above the label folder that is
  not a split folder, e.g. ``progan`` in ``progan/car/0_real/x.png`` or
  ``test/progan/1_fake/x.png``, ``sdv4`` in ``sdv4/train/ai/x.png``. A label
  folder directly under the source (or under split folders only) gives no
  generator (''). In a folder with no label folders, every row is ``flat``.

Names compare case-insensitively. The layout name reported per source is a key
of :data:`LAYOUTS`.

Manifests
---------
``.csv`` (comma-separated, header row) or ``.jsonl`` / ``.json`` (one JSON
object per line; a ``.json`` file holding one JSON array of objects works
too). Columns, case-insensitive and trimmed: ``path`` (required), ``label``,
``generator``, ``split``, ``caption``; others are ignored (e.g. ``prompt``).
A UTF-8 BOM and Windows line ends are fine. Relative paths are resolved
against the manifest's folder. Per-row problems (the row is dropped, the rest
kept, the message names ``file:line``): empty path, missing file, a
directory, an unknown label, a duplicate path (the first row is kept), an
unparsable JSON line. An empty caption is None.

Labels (manifest values and arguments; trimmed, case-insensitive):
``real`` = real, 0, nature, natural; ``fake`` = fake, 1, ai, generated,
synthetic; ``unknown`` = unknown or empty. ``true``/``false`` are refused:
whether true means "is fake" or "is real" is not knowable.

Precedence
----------
An explicit ``label`` / ``generator`` / ``split`` argument wins over what the
layout or the manifest says, for every row of every source (you asked for
it by name). Without it, the layout or manifest value is used; rows with
none get label 'unknown', generator '' and split ''.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass, field

from item.errors import InputError

LABELS = ("real", "fake", "unknown")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MANIFEST_EXTENSIONS = (".csv", ".jsonl", ".json")
MANIFEST_COLUMNS = ("path", "label", "generator", "split", "caption")
#: A given caption longer than this is refused for its row: CLIP encodes 77 tokens (a few hundred
#: characters), and a caption of megabytes made noun extraction and tokenising take gigabytes.
MAX_CAPTION_CHARS = 10_000

_LABEL_ALIASES = {
    "real": "real", "0": "real", "nature": "real", "natural": "real",
    "fake": "fake", "1": "fake", "ai": "fake", "generated": "fake", "synthetic": "fake",
    "unknown": "unknown", "": "unknown",
}
_SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}

#: Folder label names per layout (lower case) -> label.
_LABEL_FOLDERS = {
    "forensynths": {"0_real": "real", "1_fake": "fake"},
    "real-fake": {"real": "real", "fake": "fake"},
    "genimage": {"nature": "real", "ai": "fake"},
}
_FOLDER_LABEL = {name: (layout, lab) for layout, d in _LABEL_FOLDERS.items() for name, lab in d.items()}

#: Registry of layouts: name -> one-line description.
LAYOUTS: dict[str, str] = {
    "forensynths": "0_real/ and 1_fake/ folders (ForenSynths, UniversalFakeDetect), optionally under "
    "<generator>/[<category>/] and split folders, e.g. progan/car/0_real",
    "real-fake": "real/ and fake/ folders, optionally under <generator>/ and split folders",
    "genimage": "nature/ and ai/ folders (GenImage), e.g. <generator>/train/ai, <generator>/val/nature",
    "mixed": "a folder holding label folders of more than one of the layouts above",
    "flat": "images with no label folders: label/generator/split come from the arguments "
    "(label 'unknown' if not given)",
    "manifest-csv": "a CSV file with columns path (required), label, generator, split, caption",
    "manifest-jsonl": "a JSON Lines file (one object per line) with keys path (required), label, "
    "generator, split, caption",
    "file": "a single image file: label/generator/split come from the arguments",
}


@dataclass(frozen=True)
class InputRow:
    """One image to featurize."""

    path: str  # absolute path (os.fsdecode form for non-UTF-8 names)
    label: str  # one of LABELS
    generator: str  # '' when unknown
    split: str  # '' when unknown
    caption: str | None  # given caption (manifest), None otherwise
    origin: str  # 'manifest.csv:12' or the source folder, for messages


@dataclass
class Discovery:
    """What discover() found: usable rows, the layout per source, and per-row problems."""

    rows: list[InputRow] = field(default_factory=list)
    layouts: dict[str, str] = field(default_factory=dict)  # source -> key of LAYOUTS
    problems: list[str] = field(default_factory=list)

    def counts(self) -> dict[tuple[str, str], int]:
        """(generator, label) -> number of rows, sorted by key."""
        return dict(sorted(Counter((r.generator, r.label) for r in self.rows).items()))


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
    return _LABEL_ALIASES.get(value.strip().lower())


def _check_arg_label(label) -> str | None:
    if label is None:
        return None
    lab = normalize_label(label)
    if lab is None:
        raise InputError(f"unknown label {label!r}; valid: {', '.join(LABELS)} (aliases: "
                         + ", ".join(f"{k}={v}" for k, v in _LABEL_ALIASES.items() if k and k != v) + ")")
    return lab


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def discover(sources: list[str], *, label=None, generator=None, split=None) -> Discovery:
    """Find every image row in ``sources`` (folders, manifests, image files), in order.

    label / generator / split, when not None, override what each source says (see the
    module docstring). Rows with the same absolute path are kept once (the first),
    with a problem noted. Raises InputError for a source that does not exist, a
    manifest without a path column, an unreadable manifest, or a bad label argument.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    arg_label = _check_arg_label(label)
    overrides = {"label": arg_label, "generator": generator, "split": split}
    found = Discovery()
    seen: dict[str, str] = {}
    for source in sources:
        src = os.fspath(source)
        if isinstance(src, bytes):
            src = os.fsdecode(src)
        if not os.path.exists(src):
            raise InputError(f"source {src!r} does not exist")
        if os.path.isdir(src):
            layout, rows = _walk_folder(src, found.problems)
        elif src.lower().endswith(MANIFEST_EXTENSIONS):
            layout, rows = _read_manifest(src, found.problems)
        elif _is_image_name(src):
            layout, rows = "file", [(os.path.abspath(src), "unknown", "", "", None, src)]
        else:
            raise InputError(f"source {src!r} is neither a folder, a manifest ({', '.join(MANIFEST_EXTENSIONS)}) "
                             f"nor an image ({', '.join(IMAGE_EXTENSIONS)})")
        found.layouts[src] = layout
        for path, lab, gen, spl, caption, origin in rows:
            key = os.path.normpath(path)
            if key in seen:
                found.problems.append(f"{origin}: duplicate of {seen[key]} ({path}); kept the first")
                continue
            seen[key] = origin
            found.rows.append(InputRow(
                path=path,
                label=overrides["label"] if overrides["label"] is not None else lab,
                generator=overrides["generator"] if overrides["generator"] is not None else gen,
                split=overrides["split"] if overrides["split"] is not None else spl,
                caption=caption,
                origin=origin,
            ))
    return found


def _walk_folder(src: str, problems: list[str] | None = None):
    """-> (layout name, [(abs path, label, generator, split, None, origin)]).

    Symlinked folders are followed and labelled by where they are listed, not where they point; a
    folder reached along several paths is taken once along each; a symlink that leads back to one of
    its own ancestors (a loop) is not followed and is reported in ``problems``.
    """
    root = os.path.abspath(src)
    rows, layouts = [], set()

    def visit(dirpath: str, parts: list[str], ancestors: frozenset) -> None:
        try:
            entries = sorted(os.scandir(dirpath), key=lambda e: e.name)
        except OSError as exc:
            if problems is not None:
                problems.append(f"{dirpath}: cannot list this folder ({exc.strerror or exc}); skipped")
            return
        lab, gen, spl, layout = _classify_parts(parts)
        if layout:
            layouts.add(layout)
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                is_dir = e.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append(e)
            elif _is_image_name(e.name):
                rows.append((os.path.join(dirpath, e.name), lab, gen, spl, None, src))
        for e in subdirs:
            real = os.path.realpath(e.path)
            if real in ancestors:
                if problems is not None:
                    problems.append(f"{e.path}: symlink loop (leads back to {real}); not followed")
                continue
            visit(e.path, parts + [e.name], ancestors | {real})

    visit(root, [], frozenset([os.path.realpath(root)]))
    if not layouts:
        layout = "flat"
    elif len(layouts) == 1:
        layout = layouts.pop()
    else:
        layout = "mixed"
    return layout, rows


def _classify_parts(parts: list[str]):
    """Folder components below the source -> (label, generator, split, layout or None)."""
    low = [p.lower() for p in parts]
    label_at = next((i for i in range(len(low) - 1, -1, -1) if low[i] in _FOLDER_LABEL), None)
    split = next((_SPLIT_FOLDERS[p] for p in reversed(low) if p in _SPLIT_FOLDERS), "")
    if label_at is None:
        return "unknown", "", split, None
    layout, label = _FOLDER_LABEL[low[label_at]]
    generator = next((parts[i] for i in range(label_at) if low[i] not in _SPLIT_FOLDERS), "")
    return label, generator, split, layout


def _read_manifest(src: str, problems: list[str]):
    """-> (layout name, [(abs path, label, generator, split, caption, origin)])."""
    base = os.path.dirname(os.path.abspath(src))
    try:
        with open(src, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise InputError(f"cannot read manifest {src!r}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"manifest {src!r} is not UTF-8 text (byte {e.start})") from None
    if src.lower().endswith(".csv"):
        layout, records = "manifest-csv", _csv_records(src, text)
    else:
        layout, records = "manifest-jsonl", _json_records(src, text, problems)
    rows = []
    for lineno, rec in records:
        origin = f"{src}:{lineno}"
        path = rec.get("path")
        path = "" if path is None else str(path).strip()
        if not path:
            problems.append(f"{origin}: empty path")
            continue
        full = path if os.path.isabs(path) else os.path.join(base, path)
        full = os.path.abspath(full)
        lab = normalize_label(rec.get("label"))
        if lab is None:
            problems.append(f"{origin}: unknown label {rec.get('label')!r} (valid: {', '.join(LABELS)}, "
                            "or 0/1, nature/ai, natural, generated, synthetic; empty = unknown)")
            continue
        if not os.path.exists(full):
            what = "broken symlink" if os.path.lexists(full) else "missing file"
            problems.append(f"{origin}: {what} {full}")
            continue
        if os.path.isdir(full):
            problems.append(f"{origin}: {full} is a directory, not an image file")
            continue
        caption = rec.get("caption")
        caption = None if caption is None or not str(caption).strip() else str(caption).strip()
        if caption is not None and len(caption) > MAX_CAPTION_CHARS:
            problems.append(f"{origin}: caption of {len(caption)} characters is longer than the "
                            f"{MAX_CAPTION_CHARS} allowed (CLIP reads 77 tokens of it)")
            continue
        rows.append((full, lab, _text(rec.get("generator")), _text(rec.get("split")), caption, origin))
    return layout, rows


def read_manifest_records(src: str) -> tuple[list[str], list[tuple[str, dict]]]:
    """A manifest's columns and raw records, for tools that update stored rows (``item store annotate``).

    Returns (column names, lower case; [(origin 'file:line', {column: value})]); a relative ``path``
    is resolved against the manifest's folder. Nothing is checked beyond the file's syntax: unlike
    featurizing, a missing file or an empty value is the caller's business.
    """
    try:
        with open(src, "rb") as f:
            text = f.read().decode("utf-8-sig")
    except OSError as e:
        raise InputError(f"cannot read manifest {src!r}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"manifest {src!r} is not UTF-8 text (byte {e.start})") from None
    if not src.lower().endswith(MANIFEST_EXTENSIONS):
        raise InputError(f"{src!r} is not a manifest ({', '.join(MANIFEST_EXTENSIONS)})")
    problems: list[str] = []
    records = _csv_records(src, text) if src.lower().endswith(".csv") else _json_records(src, text, problems)
    if problems:
        raise InputError(problems[0])
    base = os.path.dirname(os.path.abspath(src))
    columns: list[str] = []
    out = []
    for lineno, rec in records:
        for k in rec:
            if k not in columns:
                columns.append(k)
        path = _text(rec.get("path"))
        if path:
            rec["path"] = os.path.abspath(path if os.path.isabs(path) else os.path.join(base, path))
        out.append((f"{src}:{lineno}", rec))
    return columns, out


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def _norm_keys(rec: dict) -> dict:
    return {str(k).strip().lower(): v for k, v in rec.items() if k is not None}


def _missing_path_error(src: str, found) -> InputError:
    return InputError(f"manifest {src!r} has no 'path' column; found columns: "
                      f"{', '.join(repr(c) for c in found) or '(none)'}; expected: {', '.join(MANIFEST_COLUMNS)} "
                      "(path required)")


def _csv_records(src: str, text: str):
    import io

    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(f"manifest {src!r} is empty; expected a header row with: {', '.join(MANIFEST_COLUMNS)}") from None
    except csv.Error as e:
        raise InputError(f"manifest {src!r} is not valid CSV: {e}") from None
    cols = [h.strip().lower() for h in header]
    if "path" not in cols:
        raise _missing_path_error(src, [h.strip() for h in header])
    records = []
    try:
        start = reader.line_num + 1
        for values in reader:
            if not any(v.strip() for v in values):
                start = reader.line_num + 1
                continue
            rec = {}
            for c, v in zip(cols, values):
                rec.setdefault(c, v)
            records.append((start, rec))
            start = reader.line_num + 1
    except csv.Error as e:
        raise InputError(f"manifest {src!r} line {reader.line_num}: not valid CSV: {e}") from None
    return records


def _json_records(src: str, text: str, problems: list[str]):
    stripped = text.lstrip()
    if stripped.startswith("["):  # a .json file holding one array of objects
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"manifest {src!r}: not valid JSON ({e})") from None
        items = [(i + 1, obj) for i, obj in enumerate(data)]  # number = position in the array
    else:
        items = []
        # JSON Lines ends a line at \n only: str.splitlines() also breaks at U+2028, U+2029, U+0085 and others,
        # which json.dumps(..., ensure_ascii=False) leaves raw inside strings (a \r before \n is JSON whitespace).
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                items.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                items.append((lineno, e))
    records, keys_seen = [], []
    for lineno, obj in items:
        if isinstance(obj, json.JSONDecodeError):
            problems.append(f"{src}:{lineno}: not valid JSON ({obj.msg})")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{src}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            continue
        rec = _norm_keys(obj)
        for k in obj:
            if str(k).strip() not in keys_seen:
                keys_seen.append(str(k).strip())
        records.append((lineno, rec))
    if records and not any("path" in rec for _, rec in records):
        raise _missing_path_error(src, keys_seen)
    return records
