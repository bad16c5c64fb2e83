"""Planning a run: content ids of the inputs, what the store already holds, duplicates, the text cache seed."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from item.featurize.inputs.decode import DecodeError, file_id
from item.featurize.inputs.discover import InputRow
from item.featurize.run.loader import Item
from item.featurize.run.steps import Featurizer
from item.featurize.text.nouns import noun_text
from item.store.writer import AliasRecord, storable_text


def _unreadable_id(path: str) -> str:
    # A file that cannot be read has no content hash; its id is derived from its path instead so
    # that a resumed run does not retry it (the row says why it was skipped).
    return hashlib.sha256(b"unreadable:" + os.fsencode(path)).hexdigest()


def hash_inputs(rows: list[InputRow], progress: Callable[[int], None] | None = None,
                threads: int = 4) -> list[tuple[str, str]]:
    """(id, reason) per row: sha256 of the file's bytes, or a path-derived id and the read error."""

    def one(row: InputRow):
        try:
            return file_id(row.path), ""
        except DecodeError as exc:
            return _unreadable_id(row.path), exc.reason

    out = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for res in pool.map(one, rows):
            out.append(res)
            if progress:
                progress(1)
    return out


def plan(rows: list[InputRow], ids: list[tuple[str, str]], done: set[str], known_paths: set[str]):
    """Split inputs into Items to featurize (first path of each new content), aliases, and a count of
    rows whose content the store already holds. ``known_paths``: paths the store already records."""
    todo: list[Item] = []
    aliases: list[AliasRecord] = []
    seen: dict[str, str] = {}
    known = set(known_paths)
    n_done = 0
    for row, (fid, reason) in zip(rows, ids):
        if fid in done or fid in seen:
            n_done += fid in done
            stored = storable_text(row.path)  # the store keeps non-UTF-8 names escaped
            if stored not in known and row.path != seen.get(fid):
                aliases.append(AliasRecord(fid, row.path, row.label, row.generator, row.split))
                known.add(stored)
            continue
        seen[fid] = row.path
        todo.append(Item(fid, row, reason=reason))
    return todo, aliases, n_done


def seed_from_store(feat: Featurizer, root) -> None:
    """Fill the run's text cache with the captions and nouns the store already holds."""
    from item.store import StoreReader
    from item.store import schema

    with StoreReader(root) as reader:
        rows = reader.select()
        meta = reader.metadata([schema.CAPTION_ENCODED, schema.CAPTION_TRUNCATED])
        for chunk, emb in reader.iter_chunks(schema.CAPTION_EMB, rows, dtype=np.float16):
            feat.seed_text_cache(meta[schema.CAPTION_ENCODED][chunk], emb, meta[schema.CAPTION_TRUNCATED][chunk])
        prompt = feat.config.noun_prompt  # the store's (compat noun_prompt equals this run's)
        for s in range(0, rows.size, 65536):
            objs = reader.objects(rows[s:s + 65536], columns=[schema.NOUN, schema.NOUN_EMB])
            feat.seed_text_cache([noun_text(n, prompt) for n in objs[schema.NOUN]], objs[schema.NOUN_EMB],
                                 np.zeros(len(objs[schema.NOUN]), bool))
