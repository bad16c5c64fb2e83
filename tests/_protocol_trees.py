"""Synthetic data folders shaped like the registered benchmarks (tiny PNGs, a few per folder).

Written by hand from each benchmark's published layout (not generated from the protocol files), so
that a protocol that drifts from the real layout fails the tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

UFD_GANS = ["progan", "cyclegan", "biggan", "stylegan", "gaugan", "stargan", "deepfake", "seeingdark", "san", "crn",
            "imle"]
UFD_DIFFUSION = ["guided", "ldm_200", "ldm_200_cfg", "ldm_100", "glide_100_27", "glide_50_27", "glide_100_10", "dalle"]
GENIMAGE = {"Midjourney": "imagenet_midjourney", "stable_diffusion_v_1_4": "imagenet_ai_0419_sdv4",
            "stable_diffusion_v_1_5": "imagenet_ai_0424_sdv5", "ADM": "imagenet_ai_0508_adm", "glide": "imagenet_glide",
            "wukong": "imagenet_ai_0424_wukong", "VQDM": "imagenet_ai_0419_vqdm", "BigGAN": "imagenet_ai_0419_biggan"}


def images(folder: Path, n: int = 2, seed: int = 0, size=(40, 32)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash((str(folder), seed))) % (2 ** 32))
    for i in range(n):
        arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i:03d}.png")


#: Where each UniversalFakeDetect training layout keeps the ProGAN classes of train and val (written by hand from
#: UnivFD's README, the archives' names and CNNDetection's --dataroot convention).
UFD_TRAIN_LAYOUTS = {"distributed": {"train": "train/progan", "val": "val/progan"},
                     "archives": {"train": "progan_train", "val": "progan_val"},
                     "cnndetection-root": {"train": "train", "val": "val"}}


def ufd_tree(root: Path, n: int = 2, *, skip=(), rename=None, extra=None, train_classes=("car", "cat", "chair", "horse"),
             unused_classes=("airplane",), train_layout="distributed") -> Path:
    """UniversalFakeDetect as distributed: ForenSynths train/val (per class), test/<set>, diffusion_datasets.

    train_layout: where train and val live (a key of UFD_TRAIN_LAYOUTS)."""
    rename = rename or {}
    for split in ("train", "val"):
        for cls in tuple(train_classes) + tuple(unused_classes):
            for lab in ("0_real", "1_fake"):
                images(root / UFD_TRAIN_LAYOUTS[train_layout][split] / cls / lab, n)
    for g in UFD_GANS:
        if g in skip:
            continue
        name = rename.get(g, g)
        if g in ("progan", "stylegan", "cyclegan"):  # these come with category sub-folders
            for cat in ("cat", "horse") if g != "cyclegan" else ("apple",):
                for lab in ("0_real", "1_fake"):
                    images(root / "test" / name / cat / lab, n)
        else:
            for lab in ("0_real", "1_fake"):
                images(root / "test" / name / lab, n)
    dd = root / "test" / "diffusion_datasets"
    for d in UFD_DIFFUSION:
        if d not in skip:
            images(dd / rename.get(d, d) / "1_fake", n)
    images(dd / "laion" / "0_real", n)
    images(dd / "imagenet" / "0_real", n)
    if extra:
        images(root / extra, n)
    return root


def genimage_tree(root: Path, n: int = 2, *, skip=(), rename=None, extra=None, archive_level=True) -> Path:
    """GenImage: <generator>/<archive>/{train,val}/{ai,nature}; only SD V1.4 gets train folders here."""
    rename = rename or {}
    for outer, archive in GENIMAGE.items():
        if outer in skip:
            continue
        base = root / rename.get(outer, outer) / (archive if archive_level else "")
        splits = ("train", "val") if outer == "stable_diffusion_v_1_4" else ("val",)
        for split in splits:
            for lab in ("ai", "nature"):
                images(base / split / lab, n)
    if extra:
        images(root / extra, n)
    return root


def chameleon_tree(root: Path, n: int = 2, **_) -> Path:
    images(root / "test" / "0_real", n)
    images(root / "test" / "1_fake", n)
    return root


def cospy_tree(root: Path, n: int = 1, *, sources=("mscoco", "flickr", "cc3m", "textcaps", "sbu"), models=None, **_) -> Path:
    from item.protocols import get_protocol

    names = [p.name for p in get_protocol("cospy").parts("test")]
    for name in names:
        src, model = name.split("/", 1)
        if src in sources and (models is None or model in models):
            images(root / "synthetic" / src / model, n)
    for s in sources:
        images(root / "real" / s, n)
    return root


def synthbuster_tree(root: Path, n: int = 2, **_) -> Path:
    for g in ["dalle2", "dalle3", "stable-diffusion-1-3", "stable-diffusion-1-4", "stable-diffusion-2", "stable-diffusion-xl",
              "glide", "firefly", "midjourney-v5"]:
        images(root / "synthbuster" / g, n)
    images(root / "RAISEpng", n)
    return root


def wildrf_tree(root: Path, n: int = 2, **_) -> Path:
    for split in ("train", "val"):
        for lab in ("0_real", "1_fake"):
            images(root / split / lab, n)
    for p in ("reddit", "facebook", "twitter"):
        for lab in ("0_real", "1_fake"):
            images(root / "test" / p / lab, n)
    return root


TREES = {"ufd": ufd_tree, "genimage": genimage_tree, "chameleon": chameleon_tree, "cospy": cospy_tree,
         "synthbuster": synthbuster_tree, "wildrf": wildrf_tree}
