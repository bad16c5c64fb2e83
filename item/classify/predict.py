"""Score new image files with a head, and look up what stored images a query resembles.

New files are featurized with exactly the models the head (or the store) was built with, through
featurize's public entry point; a mismatch between what loads and what was recorded is refused.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from item.classify.features import record_features
from item.classify.heads import load_head
from item.classify.train import HEAD_COMPAT_KEYS, check_head_fits, identity_diff
from item.errors import IncompatibleError, InputError, StoreError
from item.store import StoreIndex, StoreReader
from item.store import schema
from item.store.index import INDEX_ON, list_indexes


def featurize_like(paths: list[str], compat: dict, models: dict, *, device: str = "auto", batch_size: int = 16,
                   allow_mixed: bool = False):
    """Featurize files with the models ``compat``/``models`` record. Returns (records, loaded compat).

    Refuses (IncompatibleError) when what loaded here would compute other numbers than ``compat`` records;
    ``allow_mixed`` lets schema.ALLOW_MIXED_KEYS (library versions, device class, precision) differ."""
    from item.featurize import FeaturizeConfig, ModelSpec, featurize_images, load_models
    from item.featurize.loading import compat_for
    from item.featurize.nouns import DEFAULT_NOUN_PROMPT

    loaded = load_models(ModelSpec.from_head({"compat": compat, "models": models}), device)
    prompt = compat.get("noun_prompt", DEFAULT_NOUN_PROMPT)
    config = FeaturizeConfig(workers=0, batch_size=batch_size, device=device,
                             max_objects=int(compat.get("max_objects", 8)), recipe=compat.get("recipe", "hierarchical"),
                             noun_prompt=prompt if prompt != schema.UNRECORDED else DEFAULT_NOUN_PROMPT)
    got = compat_for(loaded, config)
    diff, mixable = identity_diff(compat, got, HEAD_COMPAT_KEYS, allow_mixed)
    if diff:
        raise IncompatibleError("the models that loaded here differ from those recorded: "
                                + "; ".join(f"{k}: recorded {compat[k]!r}, loaded {got.get(k)!r}" for k in diff)
                                + ("; pass --allow-mixed to go on anyway" if mixable else ""))
    return featurize_images(paths, models=loaded, config=config), got


def expand_paths(inputs: list[str]) -> list[str]:
    """Files as given; folders walked recursively for image files (sorted)."""
    from item.featurize.inputs import IMAGE_EXTENSIONS

    out = []
    for p in inputs:
        path = Path(p)
        if path.is_dir():
            found = sorted(str(f) for f in path.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
            if not found:
                raise InputError(f"{p}: no image files in this folder")
            out.extend(found)
        elif path.exists() or path.is_symlink():
            out.append(str(path))
        else:
            raise InputError(f"{p}: no such file or folder")
    return out


def predict(inputs: list[str], head_dir, *, device: str = "auto", batch_size: int = 16,
            allow_mixed: bool = False) -> list[dict]:
    """One dict per image: path, status, p_fake, label (at the head's threshold), caption, objects."""
    from item.misalignment import pair_scores

    head, info = load_head(head_dir)
    compat = info.get("compat")
    if not compat:
        raise InputError(f"{head_dir}: the head records no models; it cannot featurize new images")
    paths = expand_paths(inputs)
    records, got = featurize_like(paths, compat, info.get("models", {}), device=device, batch_size=batch_size,
                                  allow_mixed=allow_mixed)
    check_head_fits(info, got, "the models loaded for prediction", allow_mixed)
    ok = [r for r in records if r.status == schema.STATUS_OK]
    probs = head.predict_proba(record_features(info["recipe"], ok))[:, 1] if ok else np.zeros(0)
    p_of = {id(r): float(p) for r, p in zip(ok, probs)}
    out = []
    for r in records:
        row = {"path": r.path, "id": r.id, "status": r.status, "reason": r.reason}
        if r.status == schema.STATUS_OK:
            p = p_of[id(r)]
            objects = []
            for o in r.objects:
                cos = float(pair_scores(o.crop_emb[None], o.noun_emb[None])[0]) if o.box is not None else None
                objects.append({"noun": o.noun, "grounded": o.box is not None,
                                "box": [round(float(v), 1) for v in o.box] if o.box is not None else None,
                                "detector_score": round(float(o.score), 4), "alignment": cos})
            row.update({"p_fake": p, "label": "fake" if p >= info["threshold"] else "real",
                        "threshold": info["threshold"], "caption": r.caption,
                        "global_alignment": float(pair_scores(r.image_emb[None], r.caption_emb[None])[0]),
                        "objects": objects})
        out.append(row)
    return out


# -- neighbours -----------------------------------------------------------------------------------
def _exact_search(reader: StoreReader, column: str, candidates: np.ndarray, queries: np.ndarray, k: int,
                  chunk_rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force cosine top-k over ``candidates`` rows: (scores (q,k), rows (q,k))."""
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    best_s = np.full((q.shape[0], 0), -np.inf, np.float32)
    best_r = np.zeros((q.shape[0], 0), np.int64)
    for chunk, vecs in reader.iter_chunks(column, candidates, chunk_rows=chunk_rows):
        vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        sims = q @ vecs.T
        s = np.concatenate([best_s, sims], axis=1)
        r = np.concatenate([best_r, np.broadcast_to(chunk, sims.shape)], axis=1)
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best_s, best_r = np.take_along_axis(s, order, 1), np.take_along_axis(r, order, 1)
    return best_s, best_r


def _fresh_index(store, on: str):
    for info in list_indexes(store):
        if info.get("on") == on and info.get("fresh"):
            return StoreIndex(store, on=on, kind=info["kind"])
    return None


def _check_k(k: int) -> None:
    if int(k) < 1:
        raise InputError(f"-k must be at least 1, got {k}")


def resolve_query(store, query: str, on: str, *, device: str = "auto") -> tuple[np.ndarray, dict]:
    """A query vector (1, dim) and a description: a stored row (number or id) or an image file."""
    if on not in INDEX_ON:
        raise InputError(f"unknown --on {on!r}; choose {', '.join(INDEX_ON)}")
    column = INDEX_ON[on]
    with StoreReader(store) as reader:
        if os.path.exists(query) and not query.isdigit():
            # a lookup tolerates rounding-level differences (another device or precision than the store's)
            records, _ = featurize_like([query], reader.compat, reader.models, device=device, allow_mixed=True)
            rec = records[0]
            if rec.status != schema.STATUS_OK:
                raise InputError(f"{query}: cannot be featurized ({rec.reason})")
            vec = rec.image_emb if on == "image" else rec.misalignment
            return np.asarray(vec, np.float32)[None], {"query": query, "kind": "file", "caption": rec.caption,
                                                       "id": rec.id}
        row = int(query) if query.isdigit() else reader.find_id(query)
        if not 0 <= row < reader.n_images:
            raise InputError(f"row {row} is out of range 0..{reader.n_images - 1}")
        meta = reader.metadata([schema.ID, schema.PATH, schema.STATUS])
        if meta[schema.STATUS][row] != schema.STATUS_OK:
            raise InputError(f"row {row} ({meta[schema.PATH][row]}) was skipped at featurize time")
        return reader.read(column, [row]), {"query": query, "kind": "row", "row": row,
                                            "id": meta[schema.ID][row], "path": meta[schema.PATH][row]}


def neighbors(store, query: str, k: int = 10, on: str = "image", *, device: str = "auto") -> dict:
    """The k stored rows nearest to ``query`` (cosine), with their metadata.

    Uses a fresh FAISS index on ``on`` when the store has one, else exact search over the store.
    """
    _check_k(k)
    vec, desc = resolve_query(store, query, on, device=device)
    exclude = {desc["row"]} if desc.get("kind") == "row" else set()
    ix = _fresh_index(store, on)
    if ix is not None:
        hits = ix.search_rows(vec, k, exclude=exclude)[0]
        ix.close()
        method = f"index {ix.kind}"
    else:
        with StoreReader(store) as reader:
            cand = np.setdiff1d(reader.select(), np.array(sorted(exclude), np.int64))
            scores, rows = _exact_search(reader, INDEX_ON[on], cand, vec, k)
            meta = reader.metadata([schema.ID, schema.PATH, schema.LABEL, schema.GENERATOR, schema.SPLIT,
                                    schema.CAPTION])
            hits = [{"row": int(r), "similarity": float(s), **{c: str(v[r]) for c, v in meta.items()}}
                    for s, r in zip(scores[0], rows[0])]
        method = "exact"
    return {**desc, "on": on, "method": method, "hits": hits}


def generator_profile(store, generator: str, k: int = 10, on: str = "image") -> dict:
    """Which other generators (and reals) the rows of ``generator`` sit nearest to.

    For every ok row of ``generator``, its k nearest rows among all other generators' rows (exact
    search). Returns per neighbour group: share of all neighbours, mean similarity, and how many
    of the generator's rows have their top-1 neighbour there.
    """
    _check_k(k)
    if on not in INDEX_ON:
        raise InputError(f"unknown --on {on!r}; choose {', '.join(INDEX_ON)}")
    column = INDEX_ON[on]
    with StoreReader(store) as reader:
        meta = reader.metadata([schema.LABEL, schema.GENERATOR])
        mine = reader.select(generator=generator)
        if mine.size == 0:
            gens = sorted(set(meta[schema.GENERATOR][reader.select()]))
            raise InputError(f"no rows of generator {generator!r}; generators: {', '.join(gens)}")
        mine_fake = mine[meta[schema.LABEL][mine] == "fake"]
        queries_rows = mine_fake if mine_fake.size else mine
        others = np.setdiff1d(reader.select(), mine)
        if others.size == 0:
            raise StoreError("the store holds no rows of any other generator to compare with")
        group = np.where(meta[schema.LABEL] == "real", "real", meta[schema.GENERATOR]).astype(str).astype(object)
        group[group == ""] = "(no generator)"  # unlabelled rows, or fakes of unknown origin
        totals, sims, top1 = defaultdict(int), defaultdict(float), defaultdict(int)
        for s in range(0, queries_rows.size, 1024):
            q = reader.read(column, queries_rows[s:s + 1024])
            scores, rows = _exact_search(reader, column, others, q, k)
            for srow, rrow in zip(scores, rows):
                for j, (sc, r) in enumerate(zip(srow, rrow)):
                    g = group[r]
                    totals[g] += 1
                    sims[g] += float(sc)
                    if j == 0:
                        top1[g] += 1
    n_nb = sum(totals.values())
    table = sorted(({"neighbour": g, "share": totals[g] / n_nb, "mean_similarity": sims[g] / totals[g],
                     "top1": top1[g]} for g in totals), key=lambda d: -d["share"])
    return {"generator": generator, "n_queries": int(queries_rows.size), "k": k, "on": on, "table": table}
