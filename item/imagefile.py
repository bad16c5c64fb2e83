"""What an image file says about itself besides its pixels: JPEG quality, EXIF presence, size in bytes.

Featurize records these at decode time (store schema 3) and ``item audit`` reads them, from the store
or, for older stores, from the files. Shared by both stages, so it sits in a module of its own.

JPEG quality is estimated the way forensic tools do: the file's luminance quantisation table is
compared with the IJG standard table (JPEG standard, Annex K, table K.1) scaled for each quality 1..100
as libjpeg scales it (``jpeg_quality_scaling``: ``scale = 5000 / q`` below 50, ``200 - 2q`` from 50;
``entry = clamp((base * scale + 50) // 100, 1, 255)``), and the quality with the smallest mean absolute
difference is taken. Encoders that use IJG tables (libjpeg, Pillow, most cameras at their standard
settings) give an exact fit (difference 0); others get the nearest IJG quality.
"""

from __future__ import annotations

import math
import os

import numpy as np

from item.errors import InputError

UNKNOWN = -1  # an integer cue that is not known (quality of a non-JPEG, size of a vanished file)

#: IJG's standard luminance quantisation table, natural (row-major) order.
IJG_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
], dtype=np.float64)

#: Row-major index of each zig-zag position (a table may come in either order; both are tried).
_ZIGZAG = np.array([
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14,
    21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60,
    61, 54, 47, 55, 62, 63])

_TABLES = None


def _ijg_tables() -> np.ndarray:
    """(100, 64) float64: the IJG luminance table scaled for quality 1..100."""
    out = np.empty((100, 64))
    for q in range(1, 101):
        scale = 5000 / q if q < 50 else 200 - 2 * q
        out[q - 1] = np.clip(np.floor((IJG_LUMINANCE * scale + 50) / 100), 1, 255)
    return out


def estimate_jpeg_quality(luminance) -> tuple[int, float]:
    """(quality 1..100, mean absolute difference of the fit) for a 64-entry luminance table in natural or
    zig-zag order; a difference of 0.0 means the table is exactly IJG's at that quality."""
    global _TABLES
    if _TABLES is None:
        _TABLES = _ijg_tables()
    table = np.asarray(list(luminance), dtype=np.float64).reshape(-1)
    if table.size != 64:
        raise InputError(f"a JPEG quantisation table has 64 entries, not {table.size}")
    best = (UNKNOWN, math.inf)
    for candidate in (table, table[np.argsort(_ZIGZAG)]):
        err = np.abs(_TABLES - candidate).mean(axis=1)
        q = int(np.argmin(err))
        if err[q] < best[1]:
            best = (q + 1, float(err[q]))
    return best


def open_image_cues(im) -> tuple[int, int]:
    """(jpeg_quality or UNKNOWN, exif 1/0) of an open PIL image.

    The quality comes from the header. EXIF may not: a PNG's ``getexif()`` decodes the image to find an
    eXIf chunk after its pixels, so a decoder calls this after ``load()`` (a failed decode here would leave
    the image marked loaded).
    """
    quality = UNKNOWN
    tables = getattr(im, "quantization", None)
    if (im.format or "").upper() == "JPEG" and tables:
        try:
            quality = estimate_jpeg_quality(tables[min(tables)])[0]
        except (InputError, TypeError, ValueError):
            quality = UNKNOWN
    try:
        exif = bool(im.info.get("exif")) or len(im.getexif()) > 0
    except Exception:  # a broken EXIF block still says the file carries one
        exif = "exif" in im.info
    return quality, int(exif)


def file_cues(path) -> dict:
    """The cues of one file, read from it: {format, jpeg_quality, width, height, exif (bool), file_size}.

    Raises InputError when the file cannot be read as an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        size = os.path.getsize(path)
        with Image.open(path) as im:
            quality, exif = open_image_cues(im)
            return {"format": (im.format or "").upper(), "jpeg_quality": quality, "width": int(im.width),
                    "height": int(im.height), "exif": bool(exif), "file_size": int(size)}
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise InputError(f"{path}: cannot read its image header ({exc})") from None
