"""The rows a writer takes: an image row with its ragged object rows, and an alias (another path of
the same bytes). Plain dataclasses: featurize builds them, the writer checks and encodes them."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields

import numpy as np

from item.store import schema


@dataclass
class ObjectRecord:
    """One noun of an image. ``box`` is (x0, y0, x1, y1) in pixels, None when ungrounded."""

    noun: str
    noun_emb: np.ndarray  # (embed_dim,) float32, L2-normalised
    box: tuple[float, float, float, float] | None = None
    score: float = 0.0
    crop_emb: np.ndarray | None = None  # (embed_dim,) float32 L2-normalised; None when ungrounded


@dataclass
class ImageRecord:
    """One image row. Embeddings are None for skipped rows (stored as zeros)."""

    id: str
    path: str
    label: str = "unknown"
    generator: str = ""
    split: str = ""
    status: str = schema.STATUS_OK
    reason: str = ""
    caption: str = ""
    caption_source: str = ""
    caption_truncated: bool = False
    caption_encoded: str = ""  # the text CLIP encoded (the caption after clean-up)
    nouns: list[str] = field(default_factory=list)
    width: int = 0
    height: int = 0
    format: str = ""
    perturbation: str = ""
    file_size: int = schema.UNKNOWN_CUE  # bytes of the file as read
    jpeg_quality: int = schema.UNKNOWN_CUE  # estimated IJG quality of a JPEG (item.imagefile)
    exif: int = schema.UNKNOWN_CUE  # 1 / 0: whether the file carries EXIF data
    image_emb: np.ndarray | None = None  # (embed_dim,) float32
    caption_emb: np.ndarray | None = None  # (embed_dim,) float32
    misalignment: np.ndarray | None = None  # (misalignment_dim,) float32
    objects: list[ObjectRecord] = field(default_factory=list)


@dataclass(frozen=True)
class AliasRecord:
    """Another path whose bytes equal those of the stored image ``id``."""

    id: str
    path: str
    label: str = "unknown"
    generator: str = ""
    split: str = ""


#: Skip reason of a row whose text (caption, generator, split, noun) cannot be stored as given:
#: HDF5 strings end at a NUL character, so such text would come back cut. The row is kept as a
#: skipped row (its path and id stay, so a resumed run does not retry it) and the run goes on.
UNSTORABLE_TEXT = "unstorable-text"


def storable_text(text: str) -> str:
    """``text`` as the store keeps it (HDF5 strings are UTF-8): unchanged when it encodes as UTF-8.

    A file name whose bytes are not UTF-8 reaches Python as lone surrogates (PEP 383,
    ``os.fsdecode``), which UTF-8 cannot encode; such text is stored with every byte that is not
    UTF-8 written as the four characters ``\\xNN`` (e.g. ``caf\\xe9.png`` for the bytes
    ``b"caf\\xe9.png"``), its backslashes as ``\\x5c``, and any other lone surrogate as ``\\udNNN``;
    :func:`openable_path` gives the original name back. Compare paths through this function when
    matching them with stored ones.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    # A backslash of the name itself is written \\x5c too, so that :func:`openable_path` can undo this exactly.
    text = text.replace("\\", "\\x5c")
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


_ESCAPE = re.compile(r"\\x([0-9a-f]{2})|\\u(d[89a-f][0-9a-f]{2})")


def openable_path(stored: str) -> str:
    """A path as the store keeps it -> a name that opens the file again (the inverse of :func:`storable_text`).

    A file name that was not UTF-8 is stored with its foreign bytes written as ``\\xNN``; this gives those
    bytes back (as the lone surrogates ``os.fsdecode`` makes, which ``open`` turns into the original
    bytes). A valid UTF-8 name that really contains the characters ``\\xNN`` is the one ambiguity: the
    name that exists on disk wins, and the stored text when neither does.
    """
    if "\\" not in stored or not _ESCAPE.search(stored):
        return stored
    out, at = bytearray(), 0
    for m in _ESCAPE.finditer(stored):
        out += stored[at:m.start()].encode("utf-8", "surrogateescape")
        if m.group(1):
            out.append(int(m.group(1), 16))
        else:  # a lone surrogate that was not a byte: keep it as the surrogate it was
            out += chr(int(m.group(2), 16)).encode("utf-8", "surrogatepass")
        at = m.end()
    out += stored[at:].encode("utf-8", "surrogateescape")
    candidate = os.fsdecode(bytes(out))
    return candidate if os.path.lexists(candidate) else stored


_TEXT_FIELDS = ("path", "label", "generator", "split", "reason", "caption", "caption_source", "caption_encoded",
                "format", "perturbation")


def unstorable_fields(record: ImageRecord) -> list[str]:
    """Names of the record's text fields that the store cannot keep losslessly (they hold a NUL)."""
    bad = [f for f in _TEXT_FIELDS if "\x00" in str(getattr(record, f) or "")]
    if any("\x00" in str(n) for n in record.nouns) or any("\x00" in str(o.noun) for o in record.objects):
        bad.append("nouns")
    return bad


def as_unstorable(record: ImageRecord, bad: list[str]) -> ImageRecord:
    """The skipped row that stands for ``record``: NULs shown as ``\\x00`` in what is kept, no vectors."""
    keep = {f.name: getattr(record, f.name) for f in fields(ImageRecord)
            if f.name in ("id", "path", "label", "generator", "split", "width", "height", "format",
                          "perturbation", "file_size", "jpeg_quality", "exif")}
    for k in ("path", "label", "generator", "split", "format", "perturbation"):
        keep[k] = str(keep[k]).replace("\x00", "\\x00")
    if "\x00" in record.label or keep["label"] not in schema.LABELS:
        keep["label"] = "unknown"
    return ImageRecord(**keep, status=schema.STATUS_SKIPPED, reason=UNSTORABLE_TEXT)
