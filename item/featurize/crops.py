"""Crops: a grounded box -> the square region CLIP sees, keeping the whole box.

CLIP's own preprocessing resizes the shortest side and takes the centre square: fed a 1:3 box it keeps the
middle third, and a 60x600 crop can lose all of its content. So each box is first made square here, and
only then goes through CLIP's preprocessing (which on a square input only resizes):

- side = the box's longer side; the square is centred on the box's centre;
- along each axis the square is shifted to lie inside the image where the image is at least that long
  (clamped at the edges), so it takes context from the image rather than padding;
- only where the image itself is shorter than the side is the square padded, evenly on both sides, with
  the CLIP model's own normalisation mean (its pretrained tag's ``mean``, as open_clip's preprocess config
  carries it; each channel ``int(255 * mean)``), which normalises to about zero.

The mode is recorded in every store (compat key ``crop_mode``, ``crop_mode_for``); change ``CROP_MODE`` when
this changes. Padding in OpenAI's mean is what every store was padded with before the colour followed the
tag: its crop_mode stays ``CROP_MODE``; another mean is named in it ("square-in-image-1 pad=127,127,127"),
so a store padded the old way under such a tag is not resumed with the new colour.
"""

from __future__ import annotations

import math

CROP_MODE = "square-in-image-1"
#: OpenAI CLIP's normalisation mean (0.48145466, 0.4578275, 0.40821073) as 8-bit RGB.
PAD_COLOUR = (122, 116, 104)


def pad_colour(mean=None) -> tuple[int, int, int]:
    """8-bit RGB padding for a CLIP normalisation ``mean`` (3 floats in [0, 1]); OpenAI's when None."""
    if mean is None:
        return PAD_COLOUR
    values = [float(m) for m in (mean if isinstance(mean, (list, tuple)) else [mean] * 3)]
    if len(values) != 3 or not all(0.0 <= v <= 1.0 for v in values):
        return PAD_COLOUR  # not an RGB mean in [0, 1]: OpenAI's, as before
    r, g, b = (int(255 * v) for v in values)
    return r, g, b


def crop_mode_for(pad: tuple[int, int, int]) -> str:
    """The crop_mode identity value of crops padded with ``pad``."""
    return CROP_MODE if tuple(pad) == PAD_COLOUR else f"{CROP_MODE} pad={','.join(str(c) for c in pad)}"


def square_region(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) integer square around ``box`` (pixels), possibly reaching outside the image
    only along an axis the image is shorter than the square's side. right - left == bottom - top >= 1."""
    x0, y0, x1, y1 = box
    x0, y0 = math.floor(x0), math.floor(y0)
    x1, y1 = max(math.ceil(x1), x0 + 1), max(math.ceil(y1), y0 + 1)
    side = max(x1 - x0, y1 - y0)

    def axis(lo: int, hi: int, extent: int) -> int:
        start = lo - (side - (hi - lo)) // 2  # centred on the box
        if side <= extent:
            return min(max(start, 0), extent - side)  # inside the image, clamped at its edges
        return -((side - extent) // 2)  # the image is shorter than the side: centre the image, pad both ends

    left, top = axis(x0, x1, width), axis(y0, y1, height)
    return left, top, left + side, top + side


def square_crop(image, box: tuple[float, float, float, float], pad: tuple[int, int, int] = PAD_COLOUR):
    """The square region of ``box`` (see module docstring) as a PIL RGB image of side max(box w, box h);
    ``pad`` fills what lies outside the image (`pad_colour` of the CLIP model's mean)."""
    from PIL import Image

    w, h = image.size
    left, top, right, bottom = square_region(box, w, h)
    if left >= 0 and top >= 0 and right <= w and bottom <= h:
        return image.crop((left, top, right, bottom))
    canvas = Image.new("RGB", (right - left, bottom - top), tuple(pad))
    inside = image.crop((max(left, 0), max(top, 0), min(right, w), min(bottom, h)))
    canvas.paste(inside, (max(left, 0) - left, max(top, 0) - top))
    return canvas
