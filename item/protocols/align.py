"""Format alignment for benchmark runs: the fakes re-encoded before featurizing.

Real and fake images of most benchmarks differ in file format and compression (GenImage: JPEG reals,
PNG fakes), and detectors learn that instead of generation. Dual Data Alignment (arXiv 2505.14359)
reports its numbers with the fakes of GenImage, ForenSynths and AIGCDetectBenchmark re-encoded as
JPEG quality 96. ``--align-format jpeg:96`` does the same here: every fake of the run (training and
test) is re-encoded once, to WORK/aligned-jpeg-96/files/, and the manifests point at those files; the
reals are used as they are. Files are written under a temporary name and renamed when complete, so an
interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from item.errors import InputError

#: Alignment kinds: name -> (value range, what it does).
ALIGNMENTS = {"jpeg": ((1, 100), "re-encode the fakes as baseline JPEG at this quality (Pillow, 4:2:0 chroma)")}


@dataclass(frozen=True)
class Alignment:
    kind: str
    value: int

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"

    @property
    def slug(self) -> str:
        return f"aligned-{self.kind}-{self.value}"


def parse_alignment(spec: str | None) -> Alignment | None:
    """'jpeg:96' -> Alignment('jpeg', 96); None / '' -> None. A bad spec raises InputError listing the valid ones."""
    if not spec:
        return None
    valid = "; ".join(f"{k}:N ({lo}..{hi}): {what}" for k, ((lo, hi), what) in ALIGNMENTS.items())
    kind, sep, value = spec.strip().partition(":")
    if not sep or kind not in ALIGNMENTS:
        raise InputError(f"--align-format {spec!r}: unknown alignment. Valid: {valid}")
    (lo, hi), _ = ALIGNMENTS[kind]
    try:
        n = int(value)
    except ValueError:
        raise InputError(f"--align-format {spec!r}: {kind} takes an integer quality. Valid: {valid}") from None
    if not lo <= n <= hi:
        raise InputError(f"--align-format {spec!r}: quality out of range. Valid: {valid}")
    return Alignment(kind, n)


def aligned_path(src: str, folder: Path, alignment: Alignment) -> Path:
    """Where the aligned copy of ``src`` goes: one sub-folder per source folder (a hash of its path), the file's
    name with the new suffix added ('000.png' -> '000.png.jpg', so 'a.png' and 'a.jpg' stay apart)."""
    src = os.path.abspath(src)
    key = hashlib.sha256(os.path.dirname(src).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return folder / key / (Path(src).name + "." + alignment.kind.replace("jpeg", "jpg"))


def align_rows(rows: list[dict], folder: Path, alignment: Alignment, *,
               log: Callable[[str], None] = lambda s: None) -> tuple[list[dict], dict]:
    """Manifest rows with every fake re-encoded under ``folder``; reals unchanged.

    Returns (rows, counts {'written', 'kept', 'failed'}); a fake that cannot be decoded keeps its
    original path (featurize then skips or stores it by its own rules) and is counted as failed."""
    from PIL import Image, UnidentifiedImageError

    out, counts = [], {"written": 0, "kept": 0, "failed": 0}
    for row in rows:
        if row.get("label") != "fake":
            out.append(row)
            continue
        dst = aligned_path(row["path"], folder, alignment)
        if dst.is_file():
            counts["kept"] += 1
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(dst.name + ".tmp")
            try:
                with Image.open(row["path"]) as im:
                    im.convert("RGB").save(tmp, format="JPEG", quality=alignment.value)
                os.replace(tmp, dst)
                counts["written"] += 1
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                tmp.unlink(missing_ok=True)
                log(f"warning: {row['path']}: not re-encoded ({exc}); its original file is used")
                counts["failed"] += 1
                out.append(row)
                continue
        out.append({**row, "path": str(dst)})
    return out, counts
