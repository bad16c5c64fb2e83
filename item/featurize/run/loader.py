"""Decoding inputs ahead of the models, in DataLoader worker processes."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from item.featurize.inputs.decode import DecodeError, decode_image
from item.featurize.inputs.discover import InputRow
from item.featurize.inputs.perturb import Perturbation, parse_perturb
from item.featurize.models.loading import Models
from item.featurize.run.config import FeaturizeConfig


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
    file_size: int = -1  # file cues (see item.imagefile), -1 when not known
    jpeg_quality: int = -1
    exif: int = -1
    reason: str = ""  # skip reason; '' when decoded
    caption_pixels: object = None  # (3, h, w) captioner input, when the row has no caption
    ground_input: object = None  # grounder input (GroundImage), when a grounder runs


class _DecodeDataset:
    """Decoding and every model's image preparation, in the worker processes (all parts are picklable)."""

    def __init__(self, items: list[Item], preprocess, perturbation: Perturbation, max_pixels,
                 caption_prep=None, ground_prep=None):
        self.items, self.preprocess, self.perturbation, self.max_pixels = items, preprocess, perturbation, max_pixels
        self.caption_prep, self.ground_prep = caption_prep, ground_prep

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return decode_item(self.items[i], self.preprocess, self.perturbation, self.max_pixels,
                           self.caption_prep, self.ground_prep)


def decode_item(it: Item, preprocess, perturbation: Perturbation, max_pixels, caption_prep=None,
                ground_prep=None) -> Item:
    """``it`` decoded (or with its skip reason): the image, after perturbation, and its CLIP pixels;
    with ``caption_prep`` / ``ground_prep`` (the captioner's and grounder's picklable ``prepare``) also their
    inputs, so that only forwards are left for the main process.

    An Item that already carries an image (a PIL image handed to ``featurize_images``) is not read from
    disk; it is converted to RGB as files are.
    """
    from item.featurize.inputs.decode import _to_rgb

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
        out.file_size, out.jpeg_quality, out.exif = dec.file_size, dec.jpeg_quality, dec.exif
    img = perturbation.apply(img) if perturbation.steps else img
    out.image, out.width, out.height, out.format = img, img.width, img.height, fmt
    out.pixels = preprocess(img)
    if caption_prep is not None and not it.row.caption:
        out.caption_pixels = caption_prep(img)
    if ground_prep is not None:
        out.ground_input = ground_prep(img)
    return out


def _as_list(batch):
    return batch


def worker_init(parent: int, _worker_id: int) -> None:
    """First thing in a decoding worker: never hold the store's locks, never outlive the run."""
    from item.featurize.run.workers import detach_from_parent_run

    detach_from_parent_run(parent)


def iter_decoded(items: list[Item], models: Models, config: FeaturizeConfig):
    """Yield lists of decoded Items (batch_size each, in input order), decoding ahead in worker processes.

    Workers decode single images, not whole batches: a DataLoader that collates batches hands each batch
    to one worker, so a batch of 64 (the CUDA default) was decoded and prepared by one process while the
    others idled, and a run of one or two batches (predict, a server, a benchmark of 64 images) never used
    them at all (2.9 of 7.5 s on an H100, benchmarks/results/gpu_h100_issue14). The batches themselves
    are formed here, in the same order, so a run's rows are the same bits either way.
    """
    import itertools
    import math

    import torch

    workers = config.workers
    if workers < 0:
        # On CUDA, image preparation for three models feeds one GPU: more cores pay; on the CPU the models
        # need the cores themselves.
        cap = 8 if str(models.device).startswith("cuda") else 4
        workers = min(cap, max(0, (os.cpu_count() or 1) - 1))
    batch_size = config.resolved_batch_size(models.device)
    ds = _DecodeDataset(items, models.clip.preprocess, parse_perturb(config.perturb or None), config.max_pixels,
                        caption_prep=models.captioner.prepare if models.captioner else None,
                        ground_prep=models.grounder.prepare if models.grounder else None)
    # About two batches in flight over all workers; prepared grounder inputs are large (800x1066 float32:
    # 10 MB an image), so one batch ahead when they are made.
    ahead = 1 if models.grounder is not None else 2
    prefetch = max(2, math.ceil(ahead * batch_size / workers)) if workers else None
    loader = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers,
                                         collate_fn=_as_list, prefetch_factor=prefetch, persistent_workers=False,
                                         worker_init_fn=functools.partial(worker_init, os.getpid()) if workers else None)
    it = iter(loader)
    while batch := list(itertools.islice(it, batch_size)):
        yield batch
