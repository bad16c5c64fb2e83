"""Several stores of the same images, one per backbone, read as one: rows joined by image id, features
side by side.

A store identifies each image by its content id (``schema.ID``, the sha256 of the file as read), so two
featurizations of the same files under two CLIP models share ids whatever their row order. A join keeps
the images that are an ok row in every store, in the first store's row order:

    rows[j]: (n_joined,) int64, the store-j row of each joined image (rows[0] ascending)
    features(recipe, r) = [store_features(store 0, r) | store_features(store 1, to_rows(1, r)) | ...]
                          (len(r), sum of each store's feature_width) float32, the stores in the order given

Labels, splits and generators are read from the first store; for the images a join keeps, every store
must agree on them (a disagreement is refused, naming the first image). A one-store join holds every ok
row and reads exactly what the store alone gives, so code written for a join serves one store unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np

from item.classify.features import store_feature_width, store_features
from item.errors import InputError
from item.store import StoreReader
from item.store import schema

#: The metadata every store of a join must agree on for the images it shares.
AGREE_ON = (schema.LABEL, schema.SPLIT, schema.GENERATOR)


def backbone_label(compat: dict) -> str:
    """A short name of the image-text space a store's ``compat`` records: the registered backbone's name
    (``item backbones``) when its (model, tag) pair has one, else ``MODEL/TAG`` (a local checkpoint as its
    folder and file name, seeded random weights as ``random``)."""
    from item.featurize import backbone_of

    model, tag = str(compat.get("clip_model", "")), str(compat.get("clip_pretrained", ""))
    name = backbone_of(model, tag)
    if name:
        return name
    if not tag:
        tag = "random"
    elif "/" in tag or "\\" in tag:
        p = Path(tag)
        tag = f"{p.parent.name}/{p.name}" if p.parent.name else p.name
    return f"{model}/{tag}"


def backbone_record(compat: dict) -> dict:
    """What a head records of a store's backbone: its registry name (None when unregistered), a label,
    and the CLIP model, pretrained tag and width it was measured with."""
    from item.featurize import backbone_of

    return {"name": backbone_of(str(compat.get("clip_model", "")), str(compat.get("clip_pretrained", ""))),
            "label": backbone_label(compat), "clip_model": compat.get("clip_model"),
            "pretrained": compat.get("clip_pretrained"), "embed_dim": compat.get("embed_dim")}


class Join:
    """Open readers of several stores and their rows joined by image id (see the module docstring)."""

    def __init__(self, paths, readers, rows, n_ok):
        self.paths = [Path(p) for p in paths]
        self.readers = list(readers)
        self.rows = [np.asarray(r, np.int64) for r in rows]
        self.n_ok = [int(n) for n in n_ok]
        self._to = []
        for j, r in enumerate(self.rows):
            to = np.full(self.readers[0].n_images, -1, np.int64)
            to[self.rows[0]] = r
            self._to.append(to)

    @property
    def first(self) -> StoreReader:
        return self.readers[0]

    @property
    def n_joined(self) -> int:
        return int(self.rows[0].size)

    def __len__(self) -> int:
        return len(self.readers)

    def to_rows(self, j: int, rows0) -> np.ndarray:
        """Store-j rows (n,) of the joined images at first-store rows ``rows0`` (n,); every one must be joined."""
        rows0 = np.asarray(rows0, np.int64).reshape(-1)
        out = self._to[j][rows0]
        if (out < 0).any():
            raise InputError(f"row {int(rows0[np.argmax(out < 0)])} of {self.paths[0]} is not in every store")
        return out

    def widths(self, recipe: str, use=None) -> list[int]:
        """Feature width of each store in ``use`` (default all) for ``recipe``."""
        return [store_feature_width(self.readers[j], recipe) for j in self._use(use)]

    def feature_width(self, recipe: str, use=None) -> int:
        return int(sum(self.widths(recipe, use)))

    def features(self, recipe: str, rows0, use=None) -> np.ndarray:
        """(len(rows0), feature_width(recipe, use)) float32: each store's recipe features of the joined
        images at first-store rows ``rows0``, side by side in the order of ``use`` (default all stores)."""
        parts = [store_features(self.readers[j], recipe, self.to_rows(j, rows0)) for j in self._use(use)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def _use(self, use) -> list[int]:
        return list(range(len(self.readers))) if use is None else list(use)

    def summary(self) -> dict:
        """{'by', 'n_joined', 'stores': [{'store', 'n_ok', 'dropped'}]} (what train and eval print)."""
        return {"by": "image id (content)", "n_joined": self.n_joined,
                "stores": [{"store": str(p), "n_ok": n, "dropped": n - self.n_joined}
                           for p, n in zip(self.paths, self.n_ok)]}

    def close(self) -> None:
        for r in self.readers:
            r.close()


def join_line(summary: dict) -> str:
    """One line saying how many images a join kept, and how many each store dropped."""
    per = ", ".join(f"{s['store']} {s['dropped']} of {s['n_ok']} ok rows" for s in summary["stores"])
    return (f"joined {summary['n_joined']} images of {len(summary['stores'])} stores by image id; dropped (not in "
            f"every store): {per}")


def _ok_ids(reader: StoreReader) -> tuple[np.ndarray, np.ndarray]:
    """(ok rows, their image ids as str) of a store; a repeated id keeps its first row."""
    rows = reader.select()
    ids = reader.metadata([schema.ID])[schema.ID][rows].astype(str)
    uniq, first = np.unique(ids, return_index=True)
    keep = np.sort(first)
    return rows[keep], ids[keep]


def check_distinct(paths) -> None:
    """Refuse a store given twice (the same folder under two spellings too)."""
    seen: set[str] = set()
    for p in paths:
        key = str(Path(p).resolve())
        if key in seen:
            raise InputError(f"store {p} is given twice; give each store once")
        seen.add(key)


def join_readers(paths, readers) -> Join:
    """Join open readers (see the module docstring); refuses a store given twice, no shared image, and
    stores that disagree on an image's label, split or generator."""
    paths = [Path(p) for p in paths]
    check_distinct(paths)
    if len(readers) == 1:
        rows = readers[0].select()
        return Join(paths, readers, [rows], [rows.size])
    oks = [_ok_ids(r) for r in readers]
    common = oks[0][1]
    for _, ids in oks[1:]:
        common = common[np.isin(common, ids)]
    if common.size == 0:
        raise InputError(f"no image is an ok row of every store ({', '.join(str(p) for p in paths)}): a join "
                         "needs featurizations of the same images (matched by content id)")
    first_rows, first_ids = oks[0]
    keep = np.isin(first_ids, common)
    joined_ids = first_ids[keep]
    rows = [first_rows[keep]]
    for rows_j, ids_j in oks[1:]:
        order = np.argsort(ids_j, kind="stable")
        rows.append(rows_j[order[np.searchsorted(ids_j[order], joined_ids)]])
    join = Join(paths, readers, rows, [o[0].size for o in oks])
    _check_agreement(join, joined_ids)
    return join


def _check_agreement(join: Join, ids: np.ndarray) -> None:
    base = join.first.metadata(list(AGREE_ON) + [schema.PATH], rows=join.rows[0])
    for j in range(1, len(join)):
        other = join.readers[j].metadata(list(AGREE_ON) + [schema.PATH], rows=join.rows[j])
        for col in AGREE_ON:
            a, b = base[col].astype(str), other[col].astype(str)
            bad = np.flatnonzero(a != b)
            if bad.size:
                k = int(bad[0])
                raise InputError(
                    f"image {ids[k]} ({base[schema.PATH][k]}) has {col} {a[k]!r} in {join.paths[0]} but {b[k]!r} "
                    f"in {join.paths[j]} ({bad.size} image(s) disagree): joined stores must agree on label, split "
                    f"and generator; set them with `item store annotate`")


@contextmanager
def open_join(paths):
    """Open the stores at ``paths`` and join them; yields a :class:`Join`, closes every reader after."""
    readers = []
    try:
        for p in paths:
            readers.append(StoreReader(p))
        yield join_readers(paths, readers)
    finally:
        for r in readers:
            r.close()
