"""The drawn samples of ``item/samples/drawn`` (made by this project with PIL, no third-party content): an
extreme aspect ratio (8:1), a transparent PNG whose hidden pixels are black (so a plain ``convert("RGB")``
sees another image than featurize's composite over white), a 20x20 image, and nouns of several words.

``python tests/drawn_samples.py`` writes them; a test checks that the shipped files hold these pixels.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

FOLDER = Path(__file__).resolve().parent.parent / "item" / "samples" / "drawn"


def street() -> Image.Image:
    """1600x200: a road with a traffic light, a stop sign and a fire hydrant."""
    im = Image.new("RGB", (1600, 200), (150, 200, 235))
    d = ImageDraw.Draw(im)
    d.rectangle([0, 160, 1599, 199], fill=(90, 90, 90))
    d.line([0, 180, 1599, 180], fill=(240, 240, 240), width=3)
    # traffic light: pole and a black housing with red, amber, green lamps (box 100..160 x 10..160)
    d.rectangle([126, 100, 134, 160], fill=(60, 60, 60))
    d.rounded_rectangle([100, 10, 160, 110], radius=8, fill=(20, 20, 20))
    for cy, colour in ((28, (230, 30, 30)), (60, (240, 190, 20)), (92, (40, 200, 60))):
        d.ellipse([116, cy - 13, 144, cy + 13], fill=colour)
    # stop sign: a red octagon with a white rim on a pole (box 700..800 x 20..160)
    d.rectangle([746, 110, 754, 160], fill=(120, 120, 120))
    r, cx, cy = 50, 750, 70
    octagon = [(cx + r * dx, cy + r * dy) for dx, dy in
               ((-0.41, -1), (0.41, -1), (1, -0.41), (1, 0.41), (0.41, 1), (-0.41, 1), (-1, 0.41), (-1, -0.41))]
    d.polygon(octagon, fill=(200, 20, 30), outline=(255, 255, 255), width=4)
    d.text((cx - 14, cy - 6), "STOP", fill=(255, 255, 255))
    # fire hydrant: a red body, cap and side nozzles (box 1290..1370 x 80..160)
    d.rectangle([1305, 100, 1355, 160], fill=(210, 30, 30))
    d.pieslice([1305, 80, 1355, 120], 180, 360, fill=(210, 30, 30))
    d.rectangle([1290, 115, 1305, 130], fill=(180, 20, 20))
    d.rectangle([1355, 115, 1370, 130], fill=(180, 20, 20))
    return im


def ball() -> Image.Image:
    """320x240 RGBA: a tennis ball on a fully transparent background whose colour values are black."""
    im = Image.new("RGBA", (320, 240), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.ellipse([100, 60, 220, 180], fill=(200, 230, 40, 255))
    d.arc([70, 50, 170, 190], -60, 60, fill=(250, 250, 250, 255), width=5)
    d.arc([150, 50, 250, 190], 120, 240, fill=(250, 250, 250, 255), width=5)
    return im


def tiny() -> Image.Image:
    """20x20: a red apple with a green leaf on white."""
    im = Image.new("RGB", (20, 20), (255, 255, 255))
    d = ImageDraw.Draw(im)
    d.ellipse([3, 5, 17, 18], fill=(200, 20, 20))
    d.line([10, 5, 10, 2], fill=(90, 60, 20), width=1)
    d.ellipse([10, 1, 14, 4], fill=(40, 160, 40))
    return im


SAMPLES = {"drawn/street_8to1.png": street, "drawn/tennis_ball_transparent.png": ball,
           "drawn/apple_20x20.png": tiny}


def write(folder: Path = FOLDER.parent) -> None:
    for key, make in SAMPLES.items():
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        make().save(folder / key)


if __name__ == "__main__":
    write()
