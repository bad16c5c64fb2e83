"""A second backbone from an existing store (``item featurize --objects-from OLD``).

Captions, nouns and boxes do not depend on the image-text backbone, so a run under another CLIP takes them
from a store that holds them already: each image's caption (raw and as encoded), caption source, nouns,
boxes, their scores and grounding decisions come from OLD's row of the same content id, and only the crops
and the new CLIP's embeddings and misalignment vectors are computed. No captioner and no grounder loads.

What OLD decided is what the new store records as its own: the captioner, grounder, thresholds, grounder
input, box rule, caption decoding and clean-up, noun extractor, max_objects, perturbation and alignment of
its identity are OLD's (so a head trained on the new store applies to images that the full pipeline
featurizes with those models), and ``models.objects_from`` names OLD (its path, fingerprint, backbone and
captioner / grounder) so that a head trained on it says where its objects came from. The CLIP side (model,
weights, preprocessing, activation, crop padding, noun prompt, device class and precision) is the run's.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from item.errors import InputError, StoreError

#: Identity keys (store.schema.COMPAT_KEYS) that a run with --objects-from takes from OLD: everything that
#: decides the captions, nouns and boxes. The rest is the run's own (its CLIP, its noun prompt, its device).
OBJECT_KEYS = ("captioner", "grounder", "caption_decoding", "caption_cleanup", "nouns_version", "box_threshold",
               "text_threshold", "ground_input", "box_selection", "transformers_version", "max_objects",
               "perturbation", "alignment")
#: Fields of the model spec (presets.ModelSpec) that are OLD's.
SPEC_KEYS = ("captioner", "grounder", "box_threshold", "text_threshold", "ground_size")
#: The skip reason of an image that OLD holds as skipped (it was unreadable there, or its vectors overflowed).
SKIPPED_IN_SOURCE = "skipped in the --objects-from store"


@dataclass
class StoredObjects:
    """What OLD holds for one image: its caption as written and as encoded, where the caption came from,
    its nouns and, per noun, a grounding.Box or None (not grounded); ``reason`` is the row's note (an
    image beyond the grounders' aspect limit says so), or the skip reason of a skipped row."""

    status: str
    reason: str
    caption: str
    caption_encoded: str
    caption_source: str
    nouns: list
    boxes: list


class ObjectsSource:
    """Read access to OLD's captions, nouns and boxes by content id (one open StoreReader)."""

    def __init__(self, root):
        from item.store import StoreReader

        self.root = Path(root)
        try:
            self.reader = StoreReader(self.root)
        except (StoreError, OSError) as exc:  # not a store, or an unreadable one: one line naming it
            raise InputError(f"--objects-from {root}: {exc}") from None
        self.compat = dict(self.reader.compat)
        self.models = dict(self.reader.models)
        self.fingerprint = self.reader.fingerprint
        self._rows: dict | None = None
        self._paths: dict | None = None

    @property
    def row_of(self) -> dict:
        """{content id: OLD's row}, read on first use (the identity alone needs only the manifest)."""
        from item.store import schema

        if self._rows is None:
            ids = self.reader.metadata([schema.ID])[schema.ID].astype(str)
            self._rows = {i: r for r, i in enumerate(ids)}
        return self._rows

    def hold(self) -> "ObjectsSource":
        """Hold OLD's writer lock shared for as long as this source is open, so that an ``--overwrite`` of
        OLD is refused while a run reads from it (rows added to OLD meanwhile are harmless)."""
        from item.store.locks import ReaderLock

        self._lock = ReaderLock(self.root).acquire()
        return self

    def close(self) -> None:
        self.reader.close()
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()
            self._lock = None

    # -- what the run inherits ----------------------------------------------------------------------------
    def describe(self) -> dict:
        """``models.objects_from`` of the new store (and of each run's manifest entry)."""
        return {
            "store": str(self.root.resolve()),
            "fingerprint": self.fingerprint,
            "n_images": int(self.reader.n_images),
            "clip_model": self.compat.get("clip_model"),
            "clip_pretrained": self.compat.get("clip_pretrained"),
            **{k: self.compat.get(k) for k in OBJECT_KEYS},
            "captioner_info": self.models.get("captioner", {}),
            "grounder_info": self.models.get("grounder", {}),
        }

    def config_for(self, config, max_objects: int | None = None):
        """``config`` with OLD's max_objects, perturbation, alignment and caption decoding. A perturbation or
        alignment other than OLD's is refused (OLD's captions and boxes were computed on its own pixels);
        ``max_objects`` may be OLD's or fewer (nouns are kept in order of mention, so the first k of OLD's
        are exactly what extraction with at most k gives), never more."""
        from item.featurize.inputs.perturb import parse_perturb

        old_perturb = str(self.compat.get("perturbation", "") or "")
        run_perturb = str(parse_perturb(config.perturb or None))
        if run_perturb and run_perturb != old_perturb:
            raise InputError(f"--perturb {config.perturb}: the --objects-from store's captions and boxes were computed "
                             f"under perturbation {old_perturb or 'none'!r}; give none (it is inherited) or the same one")
        if config.alignment and config.alignment != self.compat.get("alignment", ""):
            raise InputError(f"alignment {config.alignment!r} differs from the --objects-from store's "
                             f"{self.compat.get('alignment', '')!r}")
        old_max = int(self.compat.get("max_objects", 8))
        if max_objects is not None and max_objects > old_max:
            raise InputError(f"--max-objects {max_objects}: the --objects-from store kept at most {old_max} nouns per "
                             f"image; give {old_max} or fewer")
        decoding = self.compat.get("caption_decoding", "authors")
        return dataclasses.replace(
            config, perturb=old_perturb,
            alignment=str(self.compat.get("alignment", "")),
            max_objects=old_max if max_objects is None else int(max_objects),
            caption_decoding=decoding if decoding in ("authors", "greedy") else config.caption_decoding)

    def compat_for(self, compat: dict, clip_info: dict, max_objects: int) -> dict:
        """The new store's identity: the run's own ``compat`` (computed with no captioner or grounder
        loaded) with OLD's object keys, the crop mode of the run's CLIP where OLD grounded, and random weights
        where either side has them."""
        from item.featurize.crops import crop_mode_for, pad_colour
        from item.store import schema

        out = dict(compat)
        for k in OBJECT_KEYS:
            if k in self.compat:
                out[k] = self.compat[k]
        out["max_objects"] = int(max_objects)
        if self.compat.get("grounder", schema.NO_MODEL) != schema.NO_MODEL:
            out["crop_mode"] = crop_mode_for(pad_colour(clip_info.get("preprocess", {}).get("mean")))
        out["random_weights"] = bool(compat.get("random_weights")) or bool(self.compat.get("random_weights"))
        return out

    def models_info(self, info: dict) -> dict:
        """The new store's ``models``: the run's CLIP; OLD's captioner, grounder and noun extractor; OLD named."""
        out = dict(info)
        old_spec = dict(self.models.get("spec") or {})
        spec = dict(info.get("spec") or {})
        for k in SPEC_KEYS:
            if k in old_spec:
                spec[k] = old_spec[k]
        random = bool(info.get("random_weights")) or bool(self.models.get("random_weights"))
        spec["random_weights"] = bool(spec.get("random_weights")) or random
        out["spec"] = spec
        for k in ("captioner", "grounder", "nouns"):
            if k in self.models:
                out[k] = self.models[k]
        out["random_weights"] = random
        out["objects_from"] = self.describe()
        return out

    # -- per image ----------------------------------------------------------------------------------------
    def refuse_missing(self, rows, ids) -> None:
        """InputError naming the first input (and how many) whose content OLD does not hold: a file that
        changed since OLD was featurized (OLD has its path under another content id) or one never in OLD.
        ``rows``: InputRows; ``ids``: their (content id, unreadable reason) from planning.hash_inputs
        (an unreadable file is left for the run to skip with its reason)."""
        missing = [(row.path, fid) for row, (fid, reason) in zip(rows, ids) if not reason and fid not in self.row_of]
        if not missing:
            self._refuse_other_captions(rows, ids)
            return
        first, first_id = missing[0]
        changed = self._path_ids().get(first)
        more = f" ({len(missing)} inputs in all)" if len(missing) > 1 else ""
        if changed is not None:
            raise InputError(f"{first}: the file changed since {self.root} was featurized (its content id is "
                             f"{first_id[:12]}, the store holds {changed[:12]}){more}; featurize it in full, "
                             "or restore the file")
        raise InputError(f"{first}: not in the --objects-from store {self.root}{more}; featurize those images "
                         "into it first (or without --objects-from)")

    def _refuse_other_captions(self, rows, ids) -> None:
        """InputError naming the first input whose manifest gives a caption other than the one OLD holds for
        its content (a caption OLD's captioner wrote, or another given one): the run reuses OLD's caption, nouns
        and boxes, so the given caption would be dropped without a word, and the store would not be the one a
        full featurize of these inputs makes."""
        from item.store import schema

        given = [(row, fid) for row, (fid, reason) in zip(rows, ids) if not reason and row.caption]
        if not given:
            return
        wanted = np.asarray(sorted({self.row_of[fid] for _, fid in given}), np.int64)
        meta = self.reader.metadata([schema.ID, schema.CAPTION], wanted)
        held = dict(zip(meta[schema.ID].astype(str), (str(c or "") for c in meta[schema.CAPTION])))
        other = [(row, held[fid]) for row, fid in given if held.get(fid, row.caption) != row.caption]
        if other:
            (row, old), more = other[0], f" ({len(other)} inputs in all)" if len(other) > 1 else ""
            raise InputError(f"{row.path}: its manifest gives the caption {row.caption!r}, {self.root} holds "
                             f"{old!r} for this image{more}; --objects-from reuses the captions, nouns and boxes "
                             "OLD holds: give OLD's captions, or featurize these images without --objects-from")

    def _path_ids(self) -> dict:
        from item.store import schema

        if self._paths is None:
            meta = self.reader.metadata([schema.ID, schema.PATH])
            self._paths = dict(zip(meta[schema.PATH].astype(str), meta[schema.ID].astype(str)))
            al = self.reader.aliases()
            self._paths.update(zip(al.get(schema.ALIAS_PATH, np.array([])).astype(str),
                                   al.get(schema.ALIAS_ID, np.array([])).astype(str)))
        return self._paths

    def lookup(self, ids, max_objects: int) -> dict:
        """{content id: StoredObjects} of the ids OLD holds, read in one pass over their shards; at most
        ``max_objects`` nouns (and their boxes) each."""
        from item.featurize.models.grounding import Box
        from item.store import schema

        wanted = sorted({self.row_of[i] for i in ids if i in self.row_of})
        if not wanted:
            return {}
        rows = np.asarray(wanted, np.int64)
        cols = [schema.ID, schema.STATUS, schema.REASON, schema.CAPTION, schema.CAPTION_ENCODED,
                schema.CAPTION_SOURCE, schema.NOUNS]
        meta = self.reader.metadata(cols, rows)
        objs = self.reader.objects(rows, columns=[schema.OBJ_IMAGE, schema.NOUN, schema.BOX, schema.SCORE,
                                                  schema.GROUNDED])
        by_row: dict[int, list] = {}
        for img, noun, box, score, grounded in zip(objs[schema.OBJ_IMAGE], objs[schema.NOUN], objs[schema.BOX],
                                                    objs[schema.SCORE], objs[schema.GROUNDED]):
            b = Box(*(float(v) for v in box), score=float(score)) if grounded else None
            by_row.setdefault(int(img), []).append((str(noun), b))
        out = {}
        for k, r in enumerate(wanted):
            stored = by_row.get(r, [])
            nouns = json.loads(str(meta[schema.NOUNS][k]) or "[]")
            if [n for n, _ in stored] != list(nouns):
                raise StoreError(f"{self.root}: row {r} lists nouns {nouns} but holds objects "
                                 f"{[n for n, _ in stored]}; run `item store verify {self.root}`")
            stored = stored[:max_objects]
            out[str(meta[schema.ID][k])] = StoredObjects(
                status=str(meta[schema.STATUS][k]), reason=str(meta[schema.REASON][k] or ""),
                caption=str(meta[schema.CAPTION][k] or ""), caption_encoded=str(meta[schema.CAPTION_ENCODED][k] or ""),
                caption_source=str(meta[schema.CAPTION_SOURCE][k] or ""), nouns=[n for n, _ in stored],
                boxes=[b for _, b in stored])
        return out


def open_source(path, store) -> ObjectsSource:
    """OLD opened for a run that writes ``store``; refuses OLD being the store itself."""
    if not os.path.isdir(path):
        raise InputError(f"--objects-from {path}: no such store folder")
    if os.path.realpath(path) == os.path.realpath(store):
        raise InputError(f"--objects-from {path} is the store being written; give another --store")
    return ObjectsSource(path).hold()


def clip_only(models):
    """``models`` (a ModelSpec, a preset name or loaded Models) without captioner and grounder: what a run
    with --objects-from loads."""
    from item.featurize.models.loading import Models
    from item.featurize.models.presets import ModelSpec, resolve_models

    if isinstance(models, str):
        models = resolve_models(models)
    if isinstance(models, Models):
        return Models(dataclasses.replace(models.spec, captioner="none", grounder="none"), models.clip, None, None,
                      models.device)
    if isinstance(models, ModelSpec):
        return dataclasses.replace(models, captioner="none", grounder="none")
    raise InputError(f"models must be a preset name, a ModelSpec or loaded Models, not {type(models).__name__}")


def run_identity(models, config) -> tuple[dict, dict]:
    """(compat, models info) that a run with loaded ``models`` and ``config`` gives its store: what
    loading.compat_for / models_info say, with OLD's object identity where ``config.objects_from`` names OLD."""
    from item.featurize.models.loading import compat_for, models_info

    compat, info = compat_for(models, config), models_info(models)
    if config.objects_from:
        source = ObjectsSource(config.objects_from)
        try:
            compat, info = source.compat_for(compat, models.clip.info, config.max_objects), source.models_info(info)
        finally:
            source.close()
    return compat, info
