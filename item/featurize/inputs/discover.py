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
  generator (``unknown``, :data:`item.manifests.UNKNOWN_GENERATOR`). In a folder with no label folders, every row is ``flat``.

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
kept, the message names ``file:line``): empty path, a URL ("URLs are not
supported: download the files first"), missing file, a directory, an unknown
label, a duplicate path (the first row is kept), an unparsable JSON line, a
key given twice in one JSON object, a caption over ``MAX_CAPTION_CHARS`` or
any field over ``item.manifests.MAX_FIELD_CHARS``. A column given twice in a
CSV header refuses the manifest in one line naming it. An empty caption is
None. The files are read by :mod:`item.manifests`, shared with the store's
``annotate`` and with ``predict``.

Labels (manifest values and arguments; trimmed, case-insensitive):
``real`` = real, 0, nature, natural; ``fake`` = fake, 1, ai, generated,
synthetic; ``unknown`` = unknown or empty. ``true``/``false`` are refused:
whether true means "is fake" or "is real" is not knowable.

Precedence
----------
An explicit ``label`` / ``generator`` / ``split`` argument wins over what the
layout or the manifest says, for every row of every source (you asked for
it by name). Without it, the layout or manifest value is used; rows with
none get label 'unknown', generator 'unknown' and split ''.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from item.errors import InputError
from item.manifests import LABEL_ALIASES as _LABEL_ALIASES
from item.manifests import LABELS, MANIFEST_COLUMNS, MANIFEST_EXTENSIONS, URL_REFUSAL, RowProblem, is_url
from item.manifests import generator_name, normalize_label, read_manifest_records, records as manifest_records
from item.manifests import text as _text

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
#: A given caption longer than this is refused for its row: CLIP encodes 77 tokens (a few hundred
#: characters), and a caption of megabytes made noun extraction and tokenising take gigabytes.
MAX_CAPTION_CHARS = 10_000

__all__ = ["IMAGE_EXTENSIONS", "LABELS", "LAYOUTS", "MANIFEST_COLUMNS", "MANIFEST_EXTENSIONS", "MAX_CAPTION_CHARS",
           "Discovery", "InputRow", "discover", "normalize_label", "read_manifest_records"]
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
    generator: str  # 'unknown' (UNKNOWN_GENERATOR) when the source names none
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
        if is_url(src):
            raise InputError(f"source {src!r}: {URL_REFUSAL}")
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
                generator=generator_name(overrides["generator"] if overrides["generator"] is not None else gen),
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
    layout, records = manifest_records(src)
    rows = []
    for lineno, rec in records:
        origin = f"{src}:{lineno}"
        if isinstance(rec, RowProblem):
            problems.append(f"{origin}: {rec}")
            continue
        path = rec.get("path")
        path = "" if path is None else str(path).strip()
        if not path:
            problems.append(f"{origin}: empty path")
            continue
        if is_url(path):
            problems.append(f"{origin}: {path[:200]}: {URL_REFUSAL}")
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
