"""Decode one image file into an RGB ``PIL.Image`` or say exactly why not.

Every failure is a :class:`DecodeError` whose ``reason`` is one word of
:data:`SKIP_REASONS`, so a 100k-image run can skip the file, report the path
and reason, and count reasons in the store's metadata.

What is decoded
---------------
- Formats: whatever Pillow reads (JPEG, PNG, WebP, BMP, TIFF, GIF, ...).
  Multi-frame files (animated GIF / WebP / APNG, multi-page TIFF) give their
  **first frame**.
- EXIF orientation is applied (``ImageOps.exif_transpose``); ``width`` and
  ``height`` are the size *after* it. Broken EXIF is ignored (no rotation).
- ``format`` is Pillow's name of the file format ('JPEG', 'PNG', ...).
- A file whose pixels Pillow cannot fully decode is 'corrupt' (or 'truncated'
  when the decoder says its data ends early), whatever was read before its
  pixels: the pixels are decoded first, then the file cues (JPEG quality,
  EXIF) are read. An error the decoder raises is never 'unreadable' (that
  is the file system's errors). Damage a decoder conceals without an error
  (libjpeg fills a damaged JPEG scan and goes on) cannot be seen here.
- Any size of at least 1x1 decodes, including 1x1 and very thin images such
  as 10000x10: minimum sizes are the business of whoever crops or resizes.
  Neither side may be 0 ('bad-size').

Conversion of every mode to 8-bit RGB
-------------------------------------
- ``RGB``: unchanged.
- Alpha (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``) and any image with a
  ``transparency`` entry (palette PNG/GIF with a transparent index, ``L`` or
  ``RGB`` with a colour key): converted to RGBA by Pillow, then alpha-
  composited over **white** (a transparent pixel becomes (255, 255, 255)).
- ``P`` (palette) without transparency, ``L``, ``1`` (0 -> 0, 1 -> 255),
  ``CMYK`` (Pillow's conversion; no ICC colour management), ``YCbCr``,
  ``LAB``, ``HSV``: ``Image.convert('RGB')``.
- ``I;16`` / ``I;16B`` / ``I;16L`` / ``I;16N`` (16-bit): ``v * 255 / 65535``
  rounded (65535 -> 255, 32768 -> 128): scaled, never clipped.
- ``I`` (32-bit int): treated as 16-bit when every value is in 0..65535
  (what Pillow gives for most 16-bit files); otherwise stretched linearly
  from its min..max to 0..255.
- ``F`` (32-bit float): values in 0..1 are multiplied by 255; otherwise
  stretched from min..max to 0..255. NaN becomes 0.
  Grey results are repeated over the three channels.

Size limit (decompression bombs)
--------------------------------
``max_pixels`` (default: Pillow's ``Image.MAX_IMAGE_PIXELS`` at import time,
89,478,485) is compared with ``width * height`` read from the header, before
any pixel is decoded: more pixels -> 'too-large'. ``None`` means no limit.
Unlike Pillow, which warns above its limit and refuses above twice it, the
check here is strict. Raising the limit above Pillow's global briefly lifts
the global inside ``Image.open`` (header parsing only) under a lock; the
global is never changed otherwise, and ``ImageFile.LOAD_TRUNCATED_IMAGES`` is
never set: a truncated file is 'truncated', not silently grey-filled.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from item.errors import ItemError
from item.imagefile import open_image_cues

#: Pillow's own decompression-bomb limit (pixels), as it was at import.
DEFAULT_MAX_PIXELS: int | None = Image.MAX_IMAGE_PIXELS

#: The fixed vocabulary of reasons a file is skipped, with what each means.
SKIP_REASONS: dict[str, str] = {
    "missing": "no file at this path",
    "broken-symlink": "the path is a symbolic link whose target does not exist",
    "is-a-directory": "the path is a directory",
    "not-a-file": "the path is a device, socket or pipe, not a regular file",
    "unreadable": "the file exists but cannot be read (permissions, I/O error)",
    "empty-file": "the file has zero bytes",
    "not-an-image": "Pillow does not recognise the bytes as any image format",
    "truncated": "the image data ends before the image does",
    "corrupt": "the image data is damaged or uses an unsupported encoding",
    "too-large": "width * height exceeds max_pixels (decompression-bomb guard)",
    "bad-size": "the header declares a zero width or height",
}

_CHUNK = 1 << 20
_OPEN_LOCK = threading.Lock()
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N"}


class DecodeError(ItemError):
    """An image file that cannot be used; ``reason`` is a key of :data:`SKIP_REASONS`."""

    def __init__(self, path, reason: str, detail: str = ""):
        if reason not in SKIP_REASONS:  # a programming error, not a user one
            raise ValueError(f"unknown skip reason {reason!r}; valid: {', '.join(SKIP_REASONS)}")
        self.path = os.fsdecode(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"skipping {self.path}: {reason}" + (f" ({detail})" if detail else ""))


@dataclass
class Decoded:
    """A decoded image: ``image`` is 8-bit RGB of size (width, height) after EXIF orientation."""

    image: Image.Image
    width: int
    height: int
    format: str
    # File cues for `item audit` (item.imagefile), -1 when not known.
    file_size: int = -1  # bytes of the file
    jpeg_quality: int = -1  # estimated IJG quality of a JPEG
    exif: int = -1  # 1 / 0: the file carries EXIF data


def _check_path(path) -> None:
    """Raise DecodeError for paths that are not a readable regular file (no pixels read)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            raise DecodeError(path, "broken-symlink") from None
        raise DecodeError(path, "missing") from None
    except NotADirectoryError:
        raise DecodeError(path, "missing", "a parent of the path is a file") from None
    except PermissionError as e:
        raise DecodeError(path, "unreadable", e.strerror or str(e)) from None
    except OSError as e:  # ELOOP, ENAMETOOLONG, EIO ...
        raise DecodeError(path, "unreadable", e.strerror or str(e)) from None
    if stat.S_ISDIR(st.st_mode):
        raise DecodeError(path, "is-a-directory")
    if not stat.S_ISREG(st.st_mode):
        raise DecodeError(path, "not-a-file")
    if st.st_size == 0:
        raise DecodeError(path, "empty-file")


def _os_error(path, e: OSError) -> DecodeError:
    if isinstance(e, FileNotFoundError):
        return DecodeError(path, "missing")
    if isinstance(e, IsADirectoryError):
        return DecodeError(path, "is-a-directory")
    return DecodeError(path, "unreadable", e.strerror or str(e))


def _damaged(path, e: OSError) -> DecodeError:
    """A decoder's OSError: 'truncated' when it says the data ends early, else 'corrupt'."""
    msg = str(e)
    return DecodeError(path, "truncated" if "truncat" in msg.lower() else "corrupt", msg)


def file_id(path) -> str:
    """sha256 hex digest (64 lowercase hex chars) of the file's bytes, read in 1 MiB chunks.

    Raises DecodeError ('missing', 'broken-symlink', 'is-a-directory', 'unreadable', ...)
    when the file cannot be read. An empty file has the sha256 of b'' (it is hashable,
    though decode_image refuses it).
    """
    try:
        _check_path(path)
    except DecodeError as e:
        if e.reason != "empty-file":
            raise
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as e:
        raise _os_error(path, e) from None
    return h.hexdigest()


@contextmanager
def _pillow_limit(max_pixels: int | None):
    """Let Image.open parse headers above Pillow's global limit when max_pixels asks for it."""
    glob = Image.MAX_IMAGE_PIXELS
    if glob is None or (max_pixels is not None and max_pixels <= glob):
        yield
        return
    with _OPEN_LOCK:
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = glob


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, as documented in the module docstring."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        import numpy as np

        a = np.asarray(im)
        if mode in _SIXTEEN_BIT:
            a = a.astype(np.float64) * (255.0 / 65535.0)
        else:
            a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
            if mode == "I" and lo >= 0 and hi <= 65535:
                a = a * (255.0 / 65535.0)
            elif mode == "F" and lo >= 0 and hi <= 1:
                a = a * 255.0
            elif hi > lo:
                a = (a - lo) * (255.0 / (hi - lo))
            else:
                a = np.zeros_like(a)
        grey = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return im.convert("RGB")


def _open(path, max_pixels: int | None) -> Image.Image:
    """Image.open (header only) with this module's errors."""
    if max_pixels is not None and max_pixels <= 0:
        raise ValueError("max_pixels must be a positive int or None")
    _check_path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _pillow_limit(max_pixels):
                return Image.open(path)
    except Image.DecompressionBombError as e:
        raise DecodeError(path, "too-large", str(e)) from None
    except UnidentifiedImageError:
        raise DecodeError(path, "not-an-image") from None
    except OSError as e:
        if e.errno is None:  # raised by a decoder, not by the file system (a damaged WebP: "could not create
            raise _damaged(path, e) from None  # decoder object")
        raise _os_error(path, e) from None
    except Exception as e:  # plugins raise SyntaxError, ValueError, struct.error ... on junk headers
        raise DecodeError(path, "corrupt", f"{type(e).__name__}: {e}") from None


def probe_image(path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from the file's header, no pixel decoded; DecodeError as decode_image would raise
    for the header ('too-large' above ``max_pixels``, 'bad-size', 'not-an-image', ...)."""
    with _open(path, max_pixels) as im:
        w, h = im.size
    if w <= 0 or h <= 0:
        raise DecodeError(path, "bad-size", f"{w}x{h}")
    if max_pixels is not None and w * h > max_pixels:
        raise DecodeError(path, "too-large", f"{w}x{h} = {w * h} pixels > max_pixels {max_pixels}")
    return w, h


def decode_image(path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 draft: tuple[int, int] | None = None) -> Decoded:
    """Decode the file at ``path`` (str, bytes or PathLike) to 8-bit RGB.

    ``draft``: (width, height) the caller will shrink the image to (a thumbnail); a JPEG is then decoded
    at the smallest DCT scale still at least that large (Pillow's ``Image.draft``), so a 100-megapixel
    JPEG never sits in memory at full size. ``width``/``height`` are then the reduced size.

    Returns Decoded(image: RGB PIL image (height, width, 3) uint8, width, height, format).
    Raises DecodeError with a reason from SKIP_REASONS; never any other exception for
    bad files.
    """
    im = _open(path, max_pixels)
    with im:
        fmt = im.format or ""
        w, h = im.size
        if w <= 0 or h <= 0:
            raise DecodeError(path, "bad-size", f"{w}x{h}")
        if max_pixels is not None and w * h > max_pixels:
            raise DecodeError(path, "too-large", f"{w}x{h} = {w * h} pixels > max_pixels {max_pixels}")
        try:
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            if draft is not None and fmt == "JPEG":
                im.draft("RGB", draft)
            im.load()
        except OSError as e:
            if e.errno is not None:  # the file system's (EIO on a failing disk), not the decoder's
                raise _os_error(path, e) from None
            raise _damaged(path, e) from None
        except (EOFError, SyntaxError, ValueError, IndexError, TypeError) as e:
            raise DecodeError(path, "corrupt", f"{type(e).__name__}: {e}") from None
        except Exception as e:  # zlib.error, struct.error, MemoryError from odd codecs
            raise DecodeError(path, "corrupt", f"{type(e).__name__}: {e}") from None
        # The file cues only after the pixels decoded: reading them may decode (a PNG's getexif() loads the
        # image to find an eXIf chunk after IDAT), and a failed decode there left Pillow's image marked
        # loaded, so the load above passed a PNG with damaged IDAT data as good (issue 30).
        quality, exif = open_image_cues(im)
        try:
            oriented = ImageOps.exif_transpose(im)
        except Exception:  # broken EXIF must not cost the image: keep it unrotated
            oriented = im
        rgb = _to_rgb(oriented)
        if rgb is im:  # detach from the file handle that `with` closes
            rgb = im.copy()
    try:
        size = os.stat(path).st_size
    except OSError:
        size = -1
    return Decoded(image=rgb, width=rgb.width, height=rgb.height, format=fmt, file_size=size, jpeg_quality=quality,
                   exif=exif)
