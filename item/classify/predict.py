"""Score new image files with a head, and look up what stored images a query resembles.

New files are featurized with exactly the models the head (or the store) was built with, through
featurize's public entry point; a mismatch between what loads and what was recorded is refused.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from item.classify.features import record_features
from item.classify.heads import load_head
from item.classify.train import HEAD_COMPAT_KEYS, fit_problem, check_head_fits, head_parts, identity_diff
from item.errors import HeadError, IncompatibleError, InputError, StoreError
from item.manifests import generator_name
from item.store import StoreIndex, StoreReader
from item.store import schema
from item.store.index import INDEX_ON, list_indexes


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def check_named_models(compat: dict, allowed_paths=()) -> None:
    """Refuse (HeadError) a head or store that names a model other than: a preset's, an open_clip
    model with one of its own pretrained tags, a hub id spelled ``ORG/NAME`` (loaded without remote
    code, from safetensors or pickle-free torch.load), or a local path the user passed (``allowed_paths``).

    A head.json is a file users exchange: it must not make ITEM open an arbitrary local file."""
    import open_clip

    from item.featurize.models.presets import PRESETS, is_random

    allowed = {os.path.realpath(p) for p in allowed_paths}
    preset_values = {v for s in PRESETS.values() for v in (s.clip_model, s.clip_pretrained, s.captioner, s.grounder)}

    def local_ok(value: str) -> bool:  # a path the user passed, or a file inside a folder they passed
        real = os.path.realpath(value)
        return real in allowed or os.path.dirname(real) in allowed

    clip_model, tag = str(compat.get("clip_model", "")), str(compat.get("clip_pretrained", ""))
    # A local checkpoint's name may be one its open_clip_config.json defines (load_clip registers it from
    # that file): the path decides, and it must be one the user passed (the check on the weights below).
    local_tag = bool(tag) and (os.sep in tag or os.path.exists(tag))
    if clip_model not in preset_values and clip_model not in open_clip.list_models() and not local_tag \
            and not (clip_model.startswith("hf-hub:") and _HUB_ID.fullmatch(clip_model[7:])):
        raise HeadError(f"the head names an unknown CLIP model {clip_model!r}")
    if tag and tag not in preset_values and tag not in open_clip.list_pretrained_tags_by_model(clip_model) \
            and not local_ok(tag):
        raise HeadError(f"the head names CLIP weights {tag!r}, which are neither a known tag of {clip_model} nor a "
                        "path you passed; pass --model-path PATH to allow a local checkpoint")
    for role in ("captioner", "grounder"):
        value = str(compat.get(role, ""))
        if value in ("none", "") or is_random(value) or value in preset_values or local_ok(value):
            continue
        if _HUB_ID.fullmatch(value) and not os.path.exists(value):
            continue
        raise HeadError(f"the head names the {role} {value!r}, which is neither a preset's model, a hub id "
                        "(ORG/NAME) nor a path you passed; pass --model-path PATH to allow a local folder")


def own_flags_message(message: str, local_flag: str | None = "--model-path") -> str:
    """A model-loading error in predict's terms: the loaders' advice names featurize's flags (--captioner,
    --pretrained, ...), which predict does not take; it loads the recorded models, or a local copy
    passed with ``local_flag`` (None: the command takes none)."""
    kept = [part for part in message.split("; ") if "--" not in part]
    return ("; ".join(kept) + "; the recorded models are loaded from the Hugging Face cache (set HF_HOME to one that "
            "holds them, or allow network access)"
            + (f", or from a local copy you pass with {local_flag} PATH" if local_flag else ""))


def featurize_like(paths: list[str], compat: dict, models: dict, *, device: str = "auto", batch_size: int = 16,
                   captions: dict[str, str] | None = None, allow_mixed: bool = False, mixable_keys=None,
                   local_flag: str | None = "--model-path", progress=None, log=None, precision: str | None = None):
    """Featurize files with the models ``compat``/``models`` record. Returns (records, loaded compat).

    ``progress(n)`` is called after each batch of ``batch_size`` images with the number done;
    ``log(message)`` receives a line before the models load.
    ``captions``: {path: caption} used instead of the captioner. Captions are decoded as ``compat`` records
    (``caption_decoding``; greedy for identities that predate it). Refuses (IncompatibleError) when what
    loaded here would compute other numbers than ``compat`` records; ``allow_mixed`` lets ``mixable_keys``
    differ (default schema.mixable_keys: library versions; device class and precision only where no captioner
    or grounder ran). ``precision``: the models' arithmetic on the CPU (``--precision``: fp32, bf16, auto; None:
    the device's own); a precision asked for explicitly may differ from the recorded one (the caller reports
    both: what was computed is the user's choice, said in the output, never silent)."""
    from item.errors import ModelLoadError
    from item.featurize import FeaturizeConfig, ModelSpec, compat_for, featurize_images, load_models
    from item.featurize.models.blip import recorded_caption_decoding
    from item.featurize.text.nouns import DEFAULT_NOUN_PROMPT

    spec = ModelSpec.from_head({"compat": compat, "models": models})
    if log is not None:
        log(f"loading models ({compat.get('clip_model')}, {compat.get('captioner')}, {compat.get('grounder')}"
            f"{', RANDOM WEIGHTS' if compat.get('random_weights') else ''}) ...")
    try:
        loaded = load_models(spec, device, precision)
    except ModelLoadError as exc:
        raise ModelLoadError(own_flags_message(str(exc), local_flag)) from None
    prompt = compat.get("noun_prompt", DEFAULT_NOUN_PROMPT)
    config = FeaturizeConfig(workers=0, batch_size=batch_size, device=device, precision=precision,
                             max_objects=int(compat.get("max_objects", 8)), recipe=compat.get("recipe", "hierarchical"),
                             noun_prompt=prompt if prompt != schema.UNRECORDED else DEFAULT_NOUN_PROMPT,
                             caption_decoding=recorded_caption_decoding(compat))
    got = compat_for(loaded, config)
    diff, mixable = identity_diff(compat, got, HEAD_COMPAT_KEYS, allow_mixed, mixable_keys)
    diff = [k for k in diff if k not in explicit_keys(precision)]
    if diff:
        why = schema.why_not_mixable(diff, compat, got) if mixable_keys is None else ""
        raise IncompatibleError("the models that loaded here differ from those recorded: "
                                + "; ".join(f"{k}: recorded {compat[k]!r}, loaded {got.get(k)!r}" for k in diff)
                                + ("; pass --allow-mixed to go on anyway" if mixable else "")
                                + (f" ({why})" if why else ""))
    step = max(1, int(batch_size))
    records = []
    for start in range(0, len(paths), step):  # in batches, so a caller can show progress
        records += featurize_images(paths[start:start + step], models=loaded, config=config, captions=captions)
        if progress is not None:
            progress(len(paths[start:start + step]))
    return records, got


def explicit_keys(precision: str | None) -> tuple[str, ...]:
    """Identity keys a scoring run may differ in from the head's because the user chose them: ``precision``
    when ``--precision`` was given (the prediction reports the precision it ran in beside the head's)."""
    return ("precision",) if precision is not None else ()


def precision_note(recorded: str | None, ran: str) -> str:
    """A warning line when new images were scored in another arithmetic than the head's embeddings were made
    in ('' when they agree or nothing is recorded)."""
    if not recorded or recorded == ran or recorded == schema.UNRECORDED:
        return ""
    return (f"--precision: scored in {ran}, the head's embeddings were made in {recorded}; `item check --precision "
            "bf16` measures how far the two agree on your weights (bf16_* checks)")


def expand_inputs(inputs: list[str]) -> tuple[list[str], dict[str, str]]:
    """(absolute paths, {path: given caption}): files as given, folders walked recursively for image
    files (sorted), manifests (CSV / JSON Lines with ``path`` and optional ``caption``) read."""
    from item.featurize.inputs.discover import IMAGE_EXTENSIONS
    from item.manifests import MANIFEST_EXTENSIONS, URL_REFUSAL, is_url, read_manifest_records

    out, captions = [], {}
    for p in inputs:
        if is_url(str(p)):
            raise InputError(f"{p}: {URL_REFUSAL}")
        path = Path(p)
        if path.is_dir():
            found = sorted(str(f.absolute()) for f in path.rglob("*")
                           if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
            if not found:
                raise InputError(f"{p}: no image files in this folder")
            out.extend(found)
        elif path.suffix.lower() in MANIFEST_EXTENSIONS and path.is_file():
            _, records = read_manifest_records(str(path))
            for origin, rec in records:
                if not rec.get("path"):
                    raise InputError(f"{origin}: empty path")
                out.append(rec["path"])
                caption = str(rec.get("caption") or "").strip()
                if caption:
                    captions[rec["path"]] = caption
        elif path.exists() or path.is_symlink():
            out.append(os.path.abspath(path))
        else:
            raise InputError(f"{p}: no such file or folder")
    return out, captions


def expand_paths(inputs: list[str]) -> list[str]:
    """Image files of ``inputs`` (files, folders, manifests), as ``expand_inputs`` finds them."""
    return expand_inputs(inputs)[0]


def _caption_warnings(info: dict, records) -> list[str]:
    """Warn when prediction captions differently from how the head's training rows were captioned."""
    sources = info.get("caption_sources")
    ok = [r for r in records if r.status == schema.STATUS_OK]
    out = [f"the head: {info['caption_source_warning']}"] if info.get("caption_source_warning") else []
    if not sources or not ok:
        return out
    given = sum(d.get("given", 0) for d in sources.values())
    total = given + sum(d.get("model", 0) for d in sources.values())
    by_model = sum(r.caption_source != "given" for r in ok)
    by_user = len(ok) - by_model
    # Mixed training captions are the head's own warning above; here, a head of one caption source
    # meeting the other one.
    if total and given / total >= 0.9 and by_model:
        out.append(f"{by_model} of {len(ok)} images were captioned by the captioner, but the head was trained on "
                   f"captions given by the user ({given} of {total} rows): its scores need not match eval's; give "
                   "captions (a manifest with path and caption columns)")
    if total and given / total <= 0.1 and by_user:
        out.append(f"{by_user} of {len(ok)} images have given captions, but the head was trained on captions by "
                   f"{info.get('compat', {}).get('captioner', 'the captioner')} ({total - given} of {total} rows): "
                   "its scores need not match eval's")
    return out


def predict_files(inputs: list, head_dir, *, device: str = "auto", batch_size: int = 16,
                  captions: dict[str, str] | None = None, allow_mixed: bool = False, model_paths=(),
                  progress=None, log=None, precision: str | None = None) -> dict:
    """Score image files, folders, manifests and PIL images with a head.

    Returns {'random_weights': bool, 'warnings': [str], 'precision': the arithmetic the models ran in
    ('fp32', 'bf16-autocast', 'fp16-autocast'; ``precision`` is the ``--precision`` setting), 'rows': [one ``item.outputs.prediction`` per
    image: path, id, status, reason, and for ok rows p_fake, label (at the head's threshold), threshold,
    caption, caption_source, global_alignment, width, height, objects]}. Captions given in a manifest or ``captions``
    ({path: caption}) are used instead of the captioner. ``model_paths``: local model files or folders
    the head may name (see :func:`check_named_models`). ``progress(n, total=None)``: called once with the
    number of images (``n`` 0) once the inputs are expanded, then with the images done after each batch;
    ``log``: status lines. A head over several stores (one per backbone) featurizes each image once per
    backbone, with each store's recorded models, and scores their features side by side; the caption,
    objects and global alignment shown are the first backbone's.
    """
    from item import outputs
    from item.misalignment import pair_scores

    head, info = load_head(head_dir)
    parts = head_parts(info)
    for part in parts:
        if not part.get("compat") or not isinstance(part["compat"], dict):
            raise InputError(f"{head_dir}: the head records no models; it cannot featurize new images")
        check_named_models(part["compat"], model_paths)
    paths, given = [], {}
    for x in inputs:
        if isinstance(x, (str, os.PathLike)):
            found, caps = expand_inputs([os.fspath(x)])
            paths += found
            given.update(caps)
        else:  # a PIL image, featurized as it is
            paths.append(x)
    given.update({os.path.abspath(k): v for k, v in (captions or {}).items()})
    if log is not None:
        log(f"scoring {len(paths)} image(s) with head {head_dir}")
    if progress is not None:
        progress(0, total=len(paths) * len(parts))
    # A head over several backbones: each backbone featurizes the images in full with the models its store
    # was made with (its own captioner and grounder runs too: featurize's front door takes no given boxes).
    per_part, got_first = [], None
    for k, part in enumerate(parts):
        if log is not None and len(parts) > 1:
            log(f"backbone {k + 1} of {len(parts)}: {part['backbone']['label']}")
        records, got = featurize_like(paths, part["compat"], part.get("models", {}), device=device,
                                      batch_size=batch_size, captions=given, allow_mixed=allow_mixed,
                                      progress=progress, log=log, precision=precision)
        if len(parts) == 1:
            check_head_fits(info, got, "the models loaded for prediction", allow_mixed,
                            tolerated=explicit_keys(precision))
        else:
            a, b = part["feature_columns"]
            problem = fit_problem(part["compat"], info["recipe"], b - a, got,
                                   f"the models loaded for backbone {part['backbone']['label']}", allow_mixed,
                                   tolerated=explicit_keys(precision))
            if problem is not None:
                raise problem
        per_part.append(records)
        got_first = got if got_first is None else got_first
    records = per_part[0]
    for other in per_part[1:]:  # an image skipped by any backbone is skipped
        for i, (r, o) in enumerate(zip(records, other)):
            if r.status == schema.STATUS_OK and o.status != schema.STATUS_OK:
                records[i] = o
    ok_at = [i for i, r in enumerate(records) if r.status == schema.STATUS_OK]
    ok = [records[i] for i in ok_at]
    if ok:
        X = np.concatenate([record_features(info["recipe"], [recs[i] for i in ok_at]) for recs in per_part], axis=1)
        probs = head.predict_proba(X)[:, 1]
    else:
        probs = np.zeros(0)
    p_of = {id(r): float(p) for r, p in zip(ok, probs)}
    random_weights = bool(info.get("random_weights") or any(p["compat"].get("random_weights") for p in parts))
    head_name = Path(head_dir).resolve().name if isinstance(head_dir, (str, os.PathLike)) else ""
    out = []
    for r in records:
        if r.status != schema.STATUS_OK:
            out.append(outputs.prediction(path=r.path, id=r.id, status=r.status, reason=r.reason,
                                          random_weights=random_weights))
            continue
        p = p_of[id(r)]
        objs = outputs.objects(
            [o.noun for o in r.objects], [o.box for o in r.objects], [o.box is not None for o in r.objects],
            [o.score for o in r.objects],
            [float(pair_scores(o.crop_emb[None], o.noun_emb[None])[0]) if o.box is not None else float("nan")
             for o in r.objects])
        out.append(outputs.prediction(
            path=r.path, id=r.id, status=r.status, reason=r.reason, random_weights=random_weights,
            p_fake=p, label="fake" if p >= info["threshold"] else "real", threshold=float(info["threshold"]),
            threshold_from=str(info.get("threshold_from", "")), head=head_name, caption=r.caption,
            caption_source=r.caption_source, width=int(r.width), height=int(r.height),
            global_alignment=float(pair_scores(r.image_emb[None], r.caption_emb[None])[0]), objects=objs))
    warnings = _caption_warnings(info, records)
    ran = got_first["precision"]
    note = precision_note(parts[0]["compat"].get("precision"), ran) if precision is not None else ""
    return {"random_weights": random_weights, "warnings": warnings + ([note] if note else []),
            "precision": ran, "rows": out}


def predict(inputs: list[str], head_dir, *, device: str = "auto", batch_size: int = 16,
            captions: dict[str, str] | None = None, allow_mixed: bool = False, model_paths=(),
            precision: str | None = None) -> list[dict]:
    """One dict per image (see ``predict_files``; its warnings are dropped here)."""
    return predict_files(inputs, head_dir, device=device, batch_size=batch_size, captions=captions,
                         allow_mixed=allow_mixed, model_paths=model_paths, precision=precision)["rows"]


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
    """(a usable index on ``on`` or None, a warning when an index exists but cannot be trusted)."""
    problems = []
    for info in list_indexes(store):
        if info.get("on") != on:
            continue
        if not info.get("fresh"):
            problems.append(f"{info['file']}: {info.get('problem')}")
            continue
        try:
            return StoreIndex(store, on=on, kind=info["kind"]), ""
        except StoreError as exc:
            problems.append(str(exc))
    if problems:
        return None, "not using the index (" + "; ".join(problems) + "); searching exactly instead"
    return None, ""


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
            return _file_query(reader, query, on, column, device)
        row = int(query) if query.isdigit() else reader.find_id(query)
        if not 0 <= row < reader.n_images:
            raise InputError(f"row {row} is out of range 0..{reader.n_images - 1}")
        meta = reader.metadata([schema.ID, schema.PATH, schema.STATUS], rows=[row])
        if meta[schema.STATUS][0] != schema.STATUS_OK:
            raise InputError(f"row {row} ({meta[schema.PATH][0]}) was skipped at featurize time")
        return reader.read(column, [row]), {"query": query, "kind": "row", "row": row,
                                            "id": meta[schema.ID][0], "path": meta[schema.PATH][0]}


def _file_query(reader: StoreReader, query: str, on: str, column: str, device: str) -> tuple[np.ndarray, dict]:
    """An image file as a query vector, loading as little as it can.

    A file whose content (sha256) is stored is answered from its stored row: no model loads. Otherwise
    ``--on image`` loads CLIP's image tower only; ``--on misalignment`` needs the caption, the nouns and
    the boxes, so it runs the whole featurize path.
    """
    from item.featurize.inputs.decode import DecodeError, file_id

    try:
        fid = file_id(query)
    except DecodeError as exc:
        raise InputError(f"{query}: cannot be read ({exc.reason})") from None
    ids = reader.metadata([schema.ID])[schema.ID]
    hit = np.flatnonzero(ids.astype(str) == fid)
    status = reader.metadata([schema.STATUS, schema.CAPTION])
    if hit.size and status[schema.STATUS][hit[0]] == schema.STATUS_OK:
        row = int(hit[0])
        return reader.read(column, [row]), {"query": query, "kind": "file", "id": fid, "stored_row": row,
                                            "caption": str(status[schema.CAPTION][row]), "models_loaded": []}
    if on == "image":
        from item.featurize.run.lookup import embed_image_files

        from item.featurize import ModelSpec

        (_, reason, emb), = embed_image_files([query], ModelSpec.from_store(reader.manifest), device=device,
                                              expect=reader.compat)
        if reason:
            raise InputError(f"{query}: cannot be featurized ({reason})")
        return np.asarray(emb, np.float32)[None], {"query": query, "kind": "file", "id": fid,
                                                   "models_loaded": ["clip"]}
    # a lookup tolerates another device class or precision than the store's, even where a captioner or
    # grounder ran: the query's features are compared, never stored
    records, _ = featurize_like([query], reader.compat, reader.models, device=device, allow_mixed=True,
                                mixable_keys=schema.ALLOW_MIXED_KEYS, local_flag=None)
    rec = records[0]
    if rec.status != schema.STATUS_OK:
        raise InputError(f"{query}: cannot be featurized ({rec.reason})")
    return np.asarray(rec.misalignment, np.float32)[None], {
        "query": query, "kind": "file", "caption": rec.caption, "id": rec.id,
        "models_loaded": ["clip"] + [m for m in ("captioner", "grounder") if reader.compat.get(m) != "none"]}


def neighbors(store, query: str, k: int = 10, on: str = "image", *, device: str = "auto") -> dict:
    """The k stored rows nearest to ``query`` (cosine), each an ``item.outputs.neighbour``.

    Uses a fresh FAISS index on ``on`` when the store has one, else exact search over the store. A
    stored query (a row, an id, or a file whose content is stored) is left out of its own neighbours,
    as ``item serve`` does; ``excluded`` lists the rows left out. Similarities are clamped to [-1, 1].
    """
    from item import outputs

    _check_k(k)
    vec, desc = resolve_query(store, query, on, device=device)
    own = desc.get("row", desc.get("stored_row"))
    exclude = {int(own)} if own is not None else set()
    ix, warning = _fresh_index(store, on)
    with StoreReader(store) as reader:
        random_weights = bool(reader.random_weights)
    if ix is not None:
        hits = ix.search_rows(vec, k, exclude=exclude)[0]
        ix.close()
        method = f"index {ix.kind}"
    else:
        from item.store.index import hit_rows

        with StoreReader(store) as reader:
            cand = np.setdiff1d(reader.select(), np.array(sorted(exclude), np.int64))
            scores, rows = _exact_search(reader, INDEX_ON[on], cand, vec, k)
            hits = hit_rows(reader, scores, rows, k)[0]
        method = "exact"
    return {**desc, "on": on, "method": method, "k": int(k), "excluded": sorted(exclude),
            "neighbors": [outputs.neighbour_from_hit(h) for h in hits],
            "warnings": [warning] if warning else [], "random_weights": random_weights}


def generator_profile(store, generator: str, k: int = 10, on: str = "image") -> dict:
    """Which other generators (and reals) the rows of ``generator`` sit nearest to.

    For every ok row of ``generator``, its k nearest rows among all other generators' rows (exact
    search). Returns ``table``: one ``item.outputs.generator_vote`` per neighbour group (votes, share
    of all neighbours, mean similarity, and how many of the generator's rows have their top-1
    neighbour there).
    """
    from item import outputs

    _check_k(k)
    if on not in INDEX_ON:
        raise InputError(f"unknown --on {on!r}; choose {', '.join(INDEX_ON)}")
    column = INDEX_ON[on]
    with StoreReader(store) as reader:
        meta = reader.metadata([schema.LABEL, schema.GENERATOR])
        mine = reader.select(generator=generator)
        if mine.size == 0:
            names = ", ".join(sorted(set(meta[schema.GENERATOR][reader.select()].astype(str).tolist())))
            raise InputError(f"no rows of generator {generator!r}; generators: {names or 'none (no ok row)'}")
        generator = generator_name(generator)
        mine_fake = mine[meta[schema.LABEL][mine] == "fake"]
        queries_rows = mine_fake if mine_fake.size else mine
        others = np.setdiff1d(reader.select(), mine)
        if others.size == 0:
            raise StoreError("the store holds no rows of any other generator to compare with")
        labels, gens = meta[schema.LABEL].astype(str), meta[schema.GENERATOR].astype(str)
        per_query = []
        for s in range(0, queries_rows.size, 1024):
            q = reader.read(column, queries_rows[s:s + 1024])
            scores, rows = _exact_search(reader, column, others, q, k)
            per_query += [[{"label": labels[r], "generator": gens[r], "similarity": float(sc)}
                           for sc, r in zip(srow, rrow)] for srow, rrow in zip(scores, rows)]
        random_weights = bool(reader.random_weights)
    return {"generator": generator, "n_queries": int(queries_rows.size), "k": k, "on": on,
            "table": outputs.vote_table(per_query), "random_weights": random_weights}
