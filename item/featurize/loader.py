"""Decoding inputs ahead of the models, in DataLoader worker processes."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from item.featurize.config import FeaturizeConfig
from item.featurize.decode import DecodeError, decode_image
from item.featurize.inputs import InputRow
from item.featurize.loading import Models
from item.featurize.perturb import Perturbation, parse_perturb


@dataclass
class Item:
    """One input on its way through the pipeline."""

    id: str
    row: InputRow
    image: object = None  # PIL RGB after perturbation
    pixels: object = None  # (3, H, W) CLIP input of the whole image
    width: int = 0
    height: int = 0
    format: str = ""
    reason: str = ""  # skip reason; '' when decoded


class _DecodeDataset:
    def __init__(self, items: list[Item], preprocess, perturbation: Perturbation, max_pixels):
        self.items, self.preprocess, self.perturbation, self.max_pixels = items, preprocess, perturbation, max_pixels

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return decode_item(self.items[i], self.preprocess, self.perturbation, self.max_pixels)


def decode_item(it: Item, preprocess, perturbation: Perturbation, max_pixels) -> Item:
    """``it`` decoded (or with its skip reason): the image, after perturbation, and its CLIP pixels.

    An Item that already carries an image (a PIL image handed to ``featurize_images``) is not read from
    disk; it is converted to RGB as files are.
    """
    from item.featurize.decode import _to_rgb

    out = Item(it.id, it.row)
    if it.image is not None:
        img, fmt = _to_rgb(it.image), it.format or (getattr(it.image, "format", None) or "")
    else:
        try:
            dec = decode_image(it.row.path, max_pixels=max_pixels)
        except DecodeError as exc:
            out.reason = exc.reason
            return out
        img, fmt = dec.image, dec.format
    img = perturbation.apply(img) if perturbation.steps else img
    out.image, out.width, out.height, out.format = img, img.width, img.height, fmt
    out.pixels = preprocess(img)
    return out


def _as_list(batch):
    return batch


def worker_init(parent: int, _worker_id: int) -> None:
    """First thing in a decoding worker: never hold the store's locks, never outlive the run."""
    from item.featurize.workers import detach_from_parent_run

    detach_from_parent_run(parent)


def iter_decoded(items: list[Item], models: Models, config: FeaturizeConfig):
    """Yield lists of decoded Items (batch_size each), decoding ahead in worker processes."""
    import torch

    workers = config.workers
    if workers < 0:
        workers = min(4, max(0, (os.cpu_count() or 1) - 1))
    ds = _DecodeDataset(items, models.clip.preprocess, parse_perturb(config.perturb or None), config.max_pixels)
    loader = torch.utils.data.DataLoader(ds, batch_size=config.batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=_as_list, prefetch_factor=4 if workers else None,
                                         persistent_workers=False,
                                         worker_init_fn=functools.partial(worker_init, os.getpid()) if workers else None)
    yield from loader
