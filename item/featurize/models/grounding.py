"""What every grounder family shares: the Box a noun is grounded to, which images can be grounded, image
preparation in the decode workers (each family's own processor, on the image as it is), batching pixels,
box conversion, and ``PreparedGrounder`` (``ground`` = ``prepare`` + ``ground_prepared``).

Each family (grounding_dino, owlv2, and any later one) imports from here; this module imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from item.errors import InputError


@dataclass(frozen=True)
class Box:
    """A box in pixels of the original image, clipped inside it: 0 <= x0 < x1 <= width, 0 <= y0 < y1 <= height,
    covering at least MIN_BOX_AREA pixels of it (or the whole of a smaller image).

    score: the noun score, the detector's confidence that this box is this noun (the value the store keeps
    as the object's ``score``); box_score: the query's own score before any noun is chosen (Grounding DINO:
    its best probability over every prompt token; grounders with one score per noun: the noun score again).
    """

    x0: float
    y0: float
    x1: float
    y1: float
    score: float
    box_score: float | None = None


#: --ground-size below this is refused (the coarsest feature map would have no cell).
MIN_GROUND_SIZE = 32


#: A box whose area inside the real image (not the padding) is below this many pixels is no box: its noun
#: is ungrounded (for images smaller than this, the box must cover the whole image).
MIN_BOX_AREA = 16.0


def not_groundable(width: int, height: int) -> str:
    """Why an image of this size is not grounded by any grounder ('' when it may be). A grounder may refuse
    more once its processor has sized the image (``PreparedGrounder.input_problem``, ``too_small``)."""
    if width < 1 or height < 1:
        return "not grounded: empty image"
    return ""


def level_cells(height: int, width: int, patch: int, out_stages, n_extra: int) -> list[int]:
    """Cells of each feature map a DETR-style detector with a hierarchical backbone makes from an input of
    ``height`` x ``width`` pixels: stage 1 is the patch embedding (``patch`` px), each later stage and each
    of ``n_extra`` levels added after the backbone halves the map, rounding up (they pad to even sizes, as
    Swin's patch merging and a stride-2 conv with padding 1 do). Checked against transformers' Grounding
    DINO shapes in tests/test_trust_round3_variants.py."""
    h, w = -(-int(height) // int(patch)), -(-int(width) // int(patch))
    cells, stage = [], 1
    for target in sorted(int(s) for s in out_stages):
        while stage < target:
            h, w, stage = -(-h // 2), -(-w // 2), stage + 1
        cells.append(h * w)
    for _ in range(int(n_extra)):
        h, w = -(-h // 2), -(-w // 2)
        cells.append(h * w)
    return cells


def _pixel_boxes(rel, width: int, height: int, pad_w: float, pad_h: float):
    """(n, 4) relative cx, cy, w, h in a (pad_w, pad_h) canvas -> ((n, 4) boxes clipped to the image,
    (n,) area of each box inside the real image). A box in the padding has area 0."""
    import torch

    cx, cy, bw, bh = rel.unbind(-1)
    x0 = ((cx - bw / 2) * pad_w).clamp(0, width)
    x1 = ((cx + bw / 2) * pad_w).clamp(0, width)
    y0 = ((cy - bh / 2) * pad_h).clamp(0, height)
    y1 = ((cy + bh / 2) * pad_h).clamp(0, height)
    area = (x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0)
    return torch.stack([x0, y0, x1, y1], -1), area


@dataclass
class GroundImage:
    """One image made ready for the detector (picklable: made in the decode workers).

    pixel_values: (3, h, w) float32 tensor, resized and normalised by the model's own image processor.
    size: (width, height) of the original image; padded: (width, height), in the original image's pixels, of
    the frame the detector's relative boxes refer to (the image itself, or the square OWLv2's processor pads
    it to).
    """

    pixel_values: object
    size: tuple[int, int]
    padded: tuple[float, float]


def collate_pixels(prepared: list[GroundImage]):
    """(pixel_values (n, 3, H, W) float32, pixel_mask (n, H, W) int64): zero padding at the right and bottom
    up to the batch's largest height and width, mask 1 on real pixels, as the image processor pads a batch."""
    import torch

    h = max(int(g.pixel_values.shape[1]) for g in prepared)
    w = max(int(g.pixel_values.shape[2]) for g in prepared)
    pix = torch.zeros((len(prepared), 3, h, w), dtype=torch.float32)
    mask = torch.zeros((len(prepared), h, w), dtype=torch.int64)
    for b, g in enumerate(prepared):
        _, gh, gw = g.pixel_values.shape
        pix[b, :, :gh, :gw] = g.pixel_values
        mask[b, :gh, :gw] = 1
    return pix, mask


def set_ground_size(image_processor, ground_size: int | None) -> int:
    """Set the detector's input size (shortest side; longest side capped at the same 1333/800 ratio as the
    model's default) and return the shortest side in effect. None keeps the processor's own size. The new
    size keeps the type of the old one, so that the recorded ``input_size`` has the same keys either way."""
    size = image_processor.size
    if ground_size:
        if int(ground_size) < MIN_GROUND_SIZE:
            raise InputError(f"--ground-size must be at least {MIN_GROUND_SIZE} pixels, got {ground_size}")
        s = int(ground_size)
        new = {"shortest_edge": s, "longest_edge": int(round(s * 1333 / 800))}
        image_processor.size = new if isinstance(size, dict) else type(size)(**new)
        size = image_processor.size
    shortest = size.get("shortest_edge") if hasattr(size, "get") else getattr(size, "shortest_edge", None)
    return int(shortest or 0)


def input_shape(prepared) -> tuple | None:
    """The shape of a prepared grounder input's pixels ((3, h, w)), None for anything without pixels."""
    pix = getattr(prepared, "pixel_values", None)
    return tuple(int(v) for v in pix.shape) if pix is not None else None


def shape_groups(prepared: list, indices: list[int]) -> list[list[int]]:
    """``indices`` split into groups of equal ``input_shape``, each group and the groups in first-seen order.

    A detector forward pads every image of a batch to the batch's largest, and the padding changes the
    boxes of the smaller images (one image moved 22 px beside a 90x120 one): only images of one shape
    share a forward, so an image's boxes never depend on what else is in its batch."""
    groups: dict = {}
    for i in indices:
        groups.setdefault(input_shape(prepared[i]), []).append(i)
    return list(groups.values())


class ProcessorPrep:
    """Picklable image preparation through an image processor: PIL image -> GroundImage (the processor's
    resize and normalisation; None when the image cannot be grounded). ``padded`` says the frame the
    processor's boxes are relative to: the image itself here; a square for processors that pad to one."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def padded(self, size: tuple[int, int]) -> tuple[float, float]:
        return float(size[0]), float(size[1])

    def __call__(self, image) -> GroundImage | None:
        if not_groundable(*image.size):
            return None
        rgb = image.convert("RGB")
        try:
            pix = self.image_processor(images=[rgb], return_tensors="pt")["pixel_values"][0]
        except (ValueError, ZeroDivisionError):
            # the processor's own resize has no pixels left on one side (transformers' Grounding DINO processor
            # raises "Size must contain ..." for a 1x2000 image at 128 / 192): the reference cannot take it
            if max(rgb.size) > 32 * min(rgb.size):
                return None
            raise
        return GroundImage(pix.contiguous(), rgb.size, self.padded(rgb.size))


class ImageTextProcessor:
    """An image processor and a tokenizer that save as one processor folder: what the random grounder
    builders return where transformers' own processor class refuses the tiny tokenizer (OWLv2's and
    OmDet-Turbo's insist on CLIP's tokenizer class). A grounder uses only these two parts."""

    def __init__(self, image_processor, tokenizer):
        self.image_processor, self.tokenizer = image_processor, tokenizer

    def save_pretrained(self, folder) -> None:
        self.image_processor.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)


class PreparedGrounder:
    """What every grounder shares: ``ground`` is ``prepare`` (in the decode workers in a run) then
    ``ground_prepared``, which runs ``ground_batch`` (the forward and box selection, implemented by each
    family) once per group of equally shaped inputs (``shape_groups``): batching never changes a box."""

    #: The arithmetic it runs in (hub.RUN_PRECISIONS; None: the device's own); set by ``load_models``.
    precision: str | None = None
    #: The row's reason when ``prepare`` returns None for an image ``not_groundable`` accepts.
    too_small = "not grounded: the grounder's processor cannot take this image"

    def ground(self, images, nouns: list[list[str]]) -> list[list[Box | None]]:
        """PIL images and each image's nouns -> for each image, one Box (or None: ungrounded) per noun."""
        if len(images) != len(nouns):
            raise InputError(f"ground got {len(images)} images but {len(nouns)} noun lists")
        return self.ground_prepared([self.prepare(im) if n else None for im, n in zip(images, nouns)], nouns)

    def ground_prepared(self, prepared: list, nouns: list[list[str]]) -> list[list[Box | None]]:
        """`prepare` outputs and nouns -> boxes, as `ground`; None (no nouns, or not groundable) grounds nothing.
        One forward per group of equally shaped inputs."""
        result, todo = self._start(prepared, nouns)
        for group in shape_groups(prepared, todo):
            for i, boxes in zip(group, self.ground_batch([prepared[i] for i in group], [nouns[i] for i in group])):
                result[i] = boxes
        return result

    def input_problem(self, prepared) -> str:
        """Why the detector cannot take this ``prepare`` output ('' when it can): such an image is left
        ungrounded with this as its reason. Families whose input size is fixed have none."""
        return ""

    def auto_batch_size(self, device: str) -> int:
        """Images per forward when the run leaves it to the grounder: 4 on CUDA (Grounding DINO on an H200:
        27 ms an image at 4, 34 ms at 16, BENCHMARKS.md), 1 on the CPU (batching gains nothing there)."""
        return 4 if str(device).startswith("cuda") else 1

    def ground_batch(self, prepared: list, nouns: list[list[str]]) -> list[list[Box | None]]:
        """One forward over inputs of one shape, each with at least one noun -> one Box or None per noun."""
        raise NotImplementedError

    def _start(self, prepared, nouns: list[list[str]]) -> tuple[list[list[Box | None]], list[int]]:
        """(all-ungrounded result, indices of the images with nouns and a grounder input)."""
        if len(prepared) != len(nouns):
            raise InputError(f"ground got {len(prepared)} images but {len(nouns)} noun lists")
        result: list[list[Box | None]] = [[None] * len(n) for n in nouns]
        return result, [i for i, n in enumerate(nouns)
                        if n and prepared[i] is not None and not self.input_problem(prepared[i])]
