"""Train a head on a store; evaluate heads per generator. Test labels never choose anything."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from item import __version__
from item.classify.features import store_features
from item.classify.heads import HeadConfig, load_head, make_head, save_head, stratified_holdout
from item.classify.joined import backbone_record
from item.classify.metrics import binary_metrics, per_generator_table, threshold_at_best_acc
from item.errors import HeadError, IncompatibleError, InputError
from item.misalignment import RECIPES, feature_size
from item.store import StoreReader
from item.store import schema

#: ``--train-split`` / ``--split`` value meaning every labelled row ("" is accepted too).
ALL_SPLITS = "all"
#: ``caption_source`` of a caption given by the user; any other value names the captioner that wrote it.
CAPTION_GIVEN = "given"

# What a head must share with any store it scores (and with the models that featurize for it).
# The store's identity keys are part of it: a head made on fp16 CUDA features, or on GELU-built CLIP ones, is
# not applied to others unless --allow-mixed says so for the harmless ones (schema.ALLOW_MIXED_KEYS).
# Heads saved before the identity keys existed record none of them and are checked on the rest.
HEAD_COMPAT_KEYS = ("clip_model", "clip_pretrained", "embed_dim", "preprocess_hash", "captioner", "grounder",
                    "random_weights", "max_objects") + schema.IDENTITY_KEYS


def identity_diff(want: dict, have: dict, keys, allow_mixed: bool = False,
                  mixable_keys=None) -> tuple[list[str], bool]:
    """(keys of ``keys`` that ``want`` records and ``have`` differs in, whether --allow-mixed would allow them all).

    With ``allow_mixed`` the mixable keys are left out: ``mixable_keys``, by default schema.mixable_keys of
    the two identities (device class and precision only where no captioner or grounder ran)."""
    allowed = schema.mixable_keys(want, have) if mixable_keys is None else tuple(mixable_keys)
    diff = [k for k in keys if k in want and want.get(k) != have.get(k)]
    mixable = bool(diff) and all(k in allowed for k in diff)
    if allow_mixed:
        diff = [k for k in diff if k not in allowed]
    return diff, mixable


@dataclass(frozen=True)
class TrainConfig:
    recipe: str = "hierarchical"
    head: HeadConfig = field(default_factory=HeadConfig)
    train_split: str = "train"
    val_split: str | None = "val"
    val_fraction: float = 0.2  # used when the store has no rows in val_split
    train_generators: tuple[str, ...] = ()  # empty: all; else only these generators' fakes and paired reals
    seed: int = 0
    max_memory: int = 0  # bytes the feature rows may take in memory; more streams them (0: half the RAM)


def no_rows_message(reader: StoreReader, split: str, option: str) -> str:
    """Why a split selects nothing, and what to do about it (one line)."""
    meta = reader.metadata([schema.SPLIT, schema.LABEL, schema.STATUS])
    ok = meta[schema.STATUS] == schema.STATUS_OK
    splits = sorted(set(meta[schema.SPLIT][ok].astype(str).tolist()) - {""})
    labelled = int(np.isin(meta[schema.LABEL][ok].astype(str), ["real", "fake"]).sum())
    if labelled == 0:
        return (f"no row of {reader.root} has a label (real or fake): give labels with "
                f"`item store annotate {reader.root} MANIFEST` (a manifest with path and label columns)")
    if not splits:
        return (f"no labelled rows in split {split!r}: the store has no splits; assign them with "
                f"`item store split {reader.root}`, or use {option} all for every labelled row")
    return (f"no labelled rows in split {split!r}; splits in the store: {', '.join(splits)} "
            f"({option} all: every labelled row)")


def unsplit_warning(reader: StoreReader, cfg: TrainConfig) -> str | None:
    """A warning when labelled ok rows have no split while training picks rows by split (they are left out)."""
    if cfg.train_split == "all":
        return None  # every labelled row outside validation is used
    meta = reader.metadata([schema.SPLIT, schema.LABEL, schema.STATUS])
    ok = meta[schema.STATUS] == schema.STATUS_OK
    labelled = ok & np.isin(meta[schema.LABEL].astype(str), ["real", "fake"])
    n = int((labelled & (meta[schema.SPLIT].astype(str) == "")).sum())
    if n == 0 or n == int(labelled.sum()):
        return None  # none missing, or no splits at all (refused elsewhere with its own message)
    return (f"{n} labelled rows have no split (added after `item store split`?) and were not used; assign "
            f"them with `item store split {reader.root} --new-only`")


def caption_sources(reader: StoreReader, rows: np.ndarray) -> dict:
    """{label: {'given': n, 'model': n}} over ``rows``: who wrote the captions a head learns from."""
    meta = reader.metadata([schema.LABEL, schema.CAPTION_SOURCE])
    out: dict = {}
    for lab, src in zip(meta[schema.LABEL][rows].astype(str), meta[schema.CAPTION_SOURCE][rows].astype(str)):
        d = out.setdefault(lab, {"given": 0, "model": 0})
        d["given" if src == CAPTION_GIVEN else "model"] += 1
    return out


def caption_source_warning(sources: dict) -> str | None:
    """A warning when the share of given captions differs by label (a head can learn the source)."""
    share = {lab: d["given"] / max(d["given"] + d["model"], 1) for lab, d in sources.items()
             if lab in ("real", "fake")}
    if len(share) < 2 or abs(share["real"] - share["fake"]) <= 0.1:
        return None
    return ("captions of the training rows come from different sources by label (given by the user: real "
            f"{share['real']:.0%}, fake {share['fake']:.0%}; the rest by the captioner): the head can learn who "
            "wrote the caption instead of misalignment, and its scores can look better than they are")


def _labels(meta_labels: np.ndarray) -> np.ndarray:
    return (np.asarray(meta_labels).astype(str) == "fake").astype(np.int64)


def select_training_rows(reader: StoreReader, cfg: TrainConfig,
                         among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """(train rows, validation rows, how validation was chosen). ``among``: the rows that may be chosen
    (a join's first-store rows, see item.classify.joined); None: every ok row."""
    if not 0.0 < cfg.val_fraction < 1.0:
        raise InputError(f"--val-fraction must be between 0 and 1 (exclusive), got {cfg.val_fraction}")
    if cfg.val_split and cfg.val_split == cfg.train_split:
        # The threshold would be chosen on the very rows the head was fitted to.
        raise InputError(f"--val-split {cfg.val_split!r} is also the training split; give another split, or "
                         "--val-split '' to hold out --val-fraction of the training rows")
    meta = reader.metadata([schema.LABEL, schema.GENERATOR])
    labelled = reader.select(label=["real", "fake"])
    if among is not None:
        labelled = np.intersect1d(labelled, among)
    every = cfg.train_split in (None, "", ALL_SPLITS)
    train = labelled if every else np.intersect1d(labelled, reader.select(split=cfg.train_split))
    # With --train-generators, a held-out generator contributes nothing: neither its fakes nor the reals
    # paired with it (UniversalFakeDetect keeps each generator's reals in its own folder). Reals whose
    # generator has no fake row (a shared pool of camera images) always train.
    fake_gens = set(meta[schema.GENERATOR][labelled][meta[schema.LABEL][labelled] == "fake"])
    held_out = sorted(fake_gens - set(cfg.train_generators))

    def chosen(rows):
        return ~np.isin(meta[schema.GENERATOR][rows], held_out)

    if cfg.train_generators:
        keep = chosen(train)
        unknown = set(cfg.train_generators) - set(meta[schema.GENERATOR][labelled])
        if unknown:
            raise InputError(f"--train-generators: no rows of {', '.join(sorted(unknown))} in the store; "
                             f"generators: {', '.join(sorted(set(meta[schema.GENERATOR][labelled])))}")
        train = train[keep]
    if train.size == 0:
        raise InputError(no_rows_message(reader, cfg.train_split, "--train-split"))
    val = np.array([], np.int64)
    if cfg.val_split:
        val = np.intersect1d(labelled, reader.select(split=cfg.val_split))
        if cfg.train_generators and val.size:
            val = val[chosen(val)]
    how = f"split {cfg.val_split!r}"
    if val.size:
        # Never fit on the rows that choose the threshold (e.g. --train-split '' takes every labelled row).
        train = np.setdiff1d(train, val)
        if train.size == 0:
            raise InputError(f"every training row is in the validation split {cfg.val_split!r}")
    if val.size == 0:
        # Augmented copies (item.featurize.inputs.augment) follow their original: the hold-out is drawn from
        # original rows, and a copy of a held-out image neither trains nor validates.
        copies = _augmented_rows(reader, train)
        base = np.setdiff1d(train, copies)
        y = _labels(meta[schema.LABEL][base])
        tr, va = stratified_holdout(y, cfg.seed, cfg.val_fraction)
        train, val = base[tr], base[va]
        if copies.size:
            from item.featurize.inputs.augment import base_id

            ids = reader.metadata([schema.ID])[schema.ID]
            held = {str(i) for i in ids[val]}
            train = np.union1d(train, copies[[base_id(i) not in held for i in ids[copies]]])
        how = f"{cfg.val_fraction:.0%} of the training rows (stratified, seed {cfg.seed})"
    else:
        val = np.setdiff1d(val, _augmented_rows(reader, val))
    y_train = _labels(meta[schema.LABEL][train])
    if len(set(y_train.tolist())) < 2:
        raise InputError("the training rows need both real and fake images")
    return train, val, how


def _augmented_rows(reader: StoreReader, rows: np.ndarray) -> np.ndarray:
    """Rows among ``rows`` that are training-time augmented copies (their perturbation is not the store's)."""
    if rows.size == 0:
        return rows
    pert = reader.metadata([schema.PERTURBATION])[schema.PERTURBATION]
    return rows[pert[rows].astype(str) != str(reader.compat.get("perturbation", ""))]


def store_paths(store) -> list[Path]:
    """A store argument as a list of paths: one path, or several (a head over several backbones)."""
    if isinstance(store, (list, tuple)):
        if not store:
            raise InputError("give at least one store")
        return [Path(s) for s in store]
    return [Path(store)]


def fit_head(store, cfg: TrainConfig):
    """Fit a head on the store's training rows and fix its threshold on validation rows.

    ``store``: one store, or a list of stores of the same images (one per backbone): their rows are
    joined by image id and each store's ``cfg.recipe`` features concatenated in the order given
    (item.classify.joined). Returns (fitted head, its JSON metadata); nothing is written (``save_head``
    does that). The metadata of a head over several stores has ``stores`` (each store's path,
    fingerprint, backbone, identity and feature columns) and ``join`` (the counts joined and dropped).
    """
    from item.classify.joined import open_join

    if cfg.recipe not in RECIPES:
        raise InputError(f"unknown recipe {cfg.recipe!r}. Available: {', '.join(RECIPES)}")
    make_head(cfg.head)._cfg()  # an unknown head kind or a bad hyperparameter fails before any data is read
    paths = store_paths(store)
    with open_join(paths) as join:
        return fit_on_join(join, cfg)


def fit_on_join(join, cfg: TrainConfig, use=None):
    """``fit_head`` on an open join (item.classify.joined.Join) with the features of the stores in ``use``
    (indices; default all). One store in ``use`` gives a head of the single-store kind, trained and
    thresholded on the join's rows (``item eval --each``: a backbone alone on the fused head's rows)."""
    from item.classify import digest
    from item.store.overlay import overlay_version

    use = list(range(len(join))) if use is None else list(use)
    reader = join.first
    among = None if len(join) == 1 else join.rows[0]
    train, val, how = select_training_rows(reader, cfg, among)
    meta = reader.metadata([schema.LABEL, schema.ID])
    y = _labels(meta[schema.LABEL][train])
    yv = _labels(meta[schema.LABEL][val])
    head_cfg = HeadConfig(**{**asdict(cfg.head), "random_state": cfg.seed, "hidden": tuple(cfg.head.hidden)})
    head = make_head(head_cfg)
    has_both = len(set(yv.tolist())) == 2
    streamed = _fit_streamed_if_large(join, use, cfg, head, train, y, val, yv, has_both)
    if streamed is None:
        X = join.features(cfg.recipe, train, use)
        Xv = join.features(cfg.recipe, val, use)
        head.fit(X, y, X_val=Xv if has_both else None, y_val=yv if has_both else None)
        val_scores = head.predict_proba(Xv)[:, 1] if val.size else np.array([])
    else:
        val_scores = streamed
    threshold = threshold_at_best_acc(val_scores, yv) if has_both else 0.5
    sources = caption_sources(join.readers[use[0]], join.to_rows(use[0], np.r_[train, val]))
    info = {
        "recipe": cfg.recipe,
        "threshold": float(threshold),
        "threshold_from": how if has_both else "default 0.5 (validation rows lack one class)",
        "validation": binary_metrics(val_scores, yv, threshold) if val.size else {},
        "n_train": int(train.size), "n_val": int(val.size),
        "train_split": cfg.train_split, "val_split": cfg.val_split,
        "train_generators": list(cfg.train_generators) or "all",
        "train_config": {k: v for k, v in asdict(cfg).items() if k != "head"},
        "streamed": streamed is not None,
        "training": {k.rstrip("_"): getattr(head, k) for k in ("precision_", "device_", "batch_size_",
                     "planned_epochs_", "n_epochs_", "best_epoch_", "n_iter_") if hasattr(head, k)},
    }
    parts = []
    offset = 0
    for j, width in zip(use, join.widths(cfg.recipe, use)):
        r = join.readers[j]
        parts.append({"store": str(Path(join.paths[j]).resolve()), "store_fingerprint": r.fingerprint,
                      "backbone": backbone_record(r.compat), "compat": {k: r.compat.get(k) for k in HEAD_COMPAT_KEYS},
                      "models": r.models, "overlay": overlay_version(r.overlay),
                      "feature_columns": [offset, offset + width]})
        offset += width
    if len(use) == 1:  # the single-store head's keys, as before heads over several stores existed
        part = parts[0]
        info.update({"compat": part["compat"], "models": part["models"], "store_fingerprint": part["store_fingerprint"],
                     "store": part["store"], "overlay": part["overlay"]})
        if len(join) > 1:
            info["joined_with"] = [str(Path(p).resolve()) for k, p in enumerate(join.paths) if k != use[0]]
    else:
        info.update({"stores": parts, "store": " ".join(p["store"] for p in parts)})
    if len(join) > 1:
        info["join"] = join.summary()
    info.update({
        "caption_sources": sources,
        "caption_source_warning": caption_source_warning(sources),
        "unsplit_warning": unsplit_warning(reader, cfg),
        # Which images fitted and calibrated this head, by content: eval finds them in any store.
        "seen_ids": {"train": digest.build(meta[schema.ID][train]), "val": digest.build(meta[schema.ID][val])},
        "random_weights": any(join.readers[j].random_weights for j in use),
        "item_version": __version__,
    })
    return head, info


def train_head(store, out, cfg: TrainConfig, *, overwrite: bool = True) -> dict:
    """Fit a head (``fit_head``; ``store`` one store or a list) and save it to ``out`` (replacing a head
    there unless ``overwrite`` is False). Returns the head's JSON metadata."""
    head, info = fit_head(store, cfg)
    save_head(head, out, info, overwrite=overwrite)
    return load_head(out)[1]


def _fit_streamed_if_large(join, use, cfg: TrainConfig, head, train, y, val, yv, has_both):
    """Fit ``head`` streaming its features when the rows exceed ``cfg.max_memory`` (see classify.streaming).

    Returns the validation scores (n_val,) when it streamed, None when the rows fit in memory.
    """
    from item.classify.heads import MLPHead
    from item.classify.streaming import (JoinedRows, default_memory_budget, fit_logistic_streaming,
                                         fit_mlp_streaming, in_memory_bytes, predict_streaming)

    budget = cfg.max_memory or default_memory_budget()
    n_features = join.feature_width(cfg.recipe, use)
    need = in_memory_bytes(train.size + val.size, n_features)
    if need <= budget:
        return None
    chunk_rows = max(1, budget // (4 * n_features * 4))  # a chunk, its standardised copy and slack: a quarter
    fit_train, fit_val, y_fit, yv_fit = train, val, y, yv
    if not has_both:  # as MLPHead.fit does without validation rows: hold out part of the training rows
        tr, va = stratified_holdout(y, head._cfg().random_state)
        fit_train, fit_val, y_fit, yv_fit = train[tr], train[va], y[tr], y[va]
    fit = fit_mlp_streaming if isinstance(head, MLPHead) else fit_logistic_streaming

    def rows(r):
        return JoinedRows(join, cfg.recipe, r, chunk_rows, use)

    fit(head, rows(fit_train), y_fit, rows(fit_val), yv_fit)
    return predict_streaming(head, rows(val)) if val.size else np.array([])


def head_parts(info: dict) -> list[dict]:
    """The stores a head reads, in the order of its feature columns: one dict each with 'compat',
    'models', 'store', 'store_fingerprint', 'backbone' (see joined.backbone_record) and 'feature_columns'
    ([start, stop) of its columns). A single-store head (its keys at the top level of head.json) gives one."""
    if info.get("stores"):
        return list(info["stores"])
    compat = info.get("compat") or {}
    return [{"compat": compat, "models": info.get("models") or {}, "store": info.get("store"),
             "store_fingerprint": info.get("store_fingerprint"), "backbone": backbone_record(compat),
             "feature_columns": [0, int(info.get("feature_size", 0))]}]


def fit_problem(want: dict, recipe: str, n_features: int, compat: dict, where: str,
                 allow_mixed: bool = False, tolerated: tuple = ()) -> Exception | None:
    """Why features of a store with ``compat`` cannot feed a head (part) trained on ``want`` with
    ``n_features`` columns of ``recipe``; None when they can. ``tolerated``: keys allowed to differ."""
    keys, mixable = identity_diff(want, compat, HEAD_COMPAT_KEYS, allow_mixed)
    keys = [k for k in keys if k not in tolerated]
    diff = [f"{k}: head {want.get(k)!r}, {where} {compat.get(k)!r}" for k in keys]
    if diff:
        why = schema.why_not_mixable(keys, want, compat)
        return IncompatibleError(f"the head was trained on other models or settings than {where}: " + "; ".join(diff)
                                 + ("; pass --allow-mixed to apply it anyway" if mixable else "")
                                 + (f" ({why})" if why else ""))
    from item.classify.features import feature_width

    fs = feature_width(compat, recipe) if "misalignment_dim" in compat else \
        feature_size(recipe, int(compat["embed_dim"]))
    if fs != int(n_features):
        return HeadError(f"recipe {recipe} gives {fs} features here, the head expects {n_features}")
    return None


def check_head_fits(head_info: dict, compat: dict, where: str, allow_mixed: bool = False,
                    tolerated: tuple = ()) -> None:
    """Refuse a head trained on embeddings of other models / preprocessing / identity than ``compat`` describes.

    ``allow_mixed`` lets differences in schema.mixable_keys pass (library versions; device class and precision
    only where no captioner or grounder ran); ``tolerated``: keys the caller lets differ because the user chose
    them and the output says so (``predict --precision``). A head over several stores is refused: it scores only
    the stores of its backbones together (``assign_stores``).
    """
    parts = head_parts(head_info)
    if len(parts) > 1:
        labels = ", ".join(p["backbone"]["label"] for p in parts)
        raise IncompatibleError(f"the head was trained on {len(parts)} stores, one per backbone ({labels}); "
                                f"{where} is one: give all {len(parts)} (e.g. `item eval STORE_1 ... "
                                f"STORE_{len(parts)} --head HEAD`)")
    problem = fit_problem(head_info.get("compat", {}), head_info["recipe"], int(head_info["feature_size"]), compat,
                           where, allow_mixed, tolerated)
    if problem is not None:
        raise problem


def assign_stores(heads: list, compats: list[dict], names: list[str], allow_mixed: bool = False) -> list[list[int]]:
    """For each head (name, head.json dict), the index in ``compats`` of the store that feeds each of its
    parts (``head_parts``), matched by identity and feature width: the store at the part's own position
    when the counts agree and it fits, else the first one that fits. A part no store fits, and a store no
    head reads, are refused naming them (one line)."""
    used: set[int] = set()
    out = []
    for name, info in heads:
        parts = head_parts(info)
        if len(parts) == 1 and len(compats) == 1:
            check_head_fits(info, compats[0], f"store {names[0]}", allow_mixed)  # the single-store message
            out.append([0])
            used.add(0)
            continue
        n_features = [p["feature_columns"][1] - p["feature_columns"][0] for p in parts]
        picks: list[int] = []
        for i, part in enumerate(parts):
            problems = {j: fit_problem(part["compat"], info["recipe"], n_features[i], compats[j],
                                       f"store {names[j]}", allow_mixed)
                        for j in range(len(compats)) if j not in picks}
            fits = [j for j, p in problems.items() if p is None]
            if not fits:
                from item.classify.joined import backbone_label

                given = "; ".join(f"{names[j]} is {backbone_label(compats[j])}" for j in range(len(compats)))
                trained = f", trained on {part['store']}" if part.get("store") else ""
                near = problems.get(i)
                raise IncompatibleError(
                    f"head {name} needs a store of backbone {part['backbone']['label']} "
                    f"({part['compat'].get('embed_dim')}-d{trained}); none of the stores given fits it ({given})"
                    + (f"; {names[i]}: {near}" if near is not None and len(parts) == len(compats) else ""))
            picks.append(i if (len(parts) == len(compats) and i in fits) else fits[0])
        out.append(picks)
        used.update(picks)
    extra = [j for j in range(len(compats)) if j not in used]
    if extra:
        from item.classify.joined import backbone_label

        j = extra[0]
        read = "; ".join(f"{name}: {', '.join(p['backbone']['label'] for p in head_parts(info))}"
                         for name, info in heads)
        raise InputError(f"store {names[j]} ({backbone_label(compats[j])}) is read by none of the heads ({read}): "
                         "leave it out, or give the head trained on it")
    return out


def recorded_train_config(info: dict) -> TrainConfig:
    """The TrainConfig a head was trained with, from its head.json (``train_config`` and ``config``)."""
    tc = dict(info.get("train_config") or {})
    hc = dict(info.get("config") or {})
    if not tc or not hc:
        raise HeadError("the head records no training configuration (saved by an older ITEM); train it again")
    hc["hidden"] = tuple(int(h) for h in hc.get("hidden", ()))
    hc.pop("random_state", None)
    tc["train_generators"] = tuple(tc.get("train_generators") or ())
    known = set(TrainConfig.__dataclass_fields__) - {"head"}
    return TrainConfig(head=HeadConfig(**hc), **{k: v for k, v in tc.items() if k in known})


def backbone_heads(name: str, info: dict) -> tuple[list, list[str]]:
    """([(name, fitted head, its metadata)] one per store of the head over several stores ``info``,
    warnings): each backbone's features alone, trained with the head's own recipe, kind, hyperparameters
    and seed on the stores it was trained on, on the same joined train and validation rows, its
    threshold fixed on those validation rows as ``item train`` fixes it. Never a test label."""
    import dataclasses

    from item.classify.joined import open_join
    from item.store.overlay import overlay_version

    parts = head_parts(info)
    cfg = recorded_train_config(info)
    paths = []
    for p in parts:
        path = Path(str(p.get("store") or ""))
        if not p.get("store") or not path.exists():
            raise InputError(f"--each trains each backbone of {name} on the stores it was trained on; "
                             f"{p.get('store') or 'a store'} ({p['backbone']['label']}) is not there")
        paths.append(path)
    warnings = []
    out = []
    with open_join(paths) as join:
        for p, r in zip(parts, join.readers):
            if r.fingerprint != p.get("store_fingerprint"):
                raise InputError(f"--each: {r.root} has changed since {name} was trained on it (fingerprint "
                                 f"{str(p.get('store_fingerprint'))[:12]}, now {r.fingerprint[:12]}); train the head "
                                 "again to compare its backbones")
            if p.get("overlay") and overlay_version(r.overlay)["digest"] != p["overlay"].get("digest"):
                warnings.append(f"{name}: {r.root} was annotated since the head was trained; each backbone alone "
                                "trains on its labels and splits as they are now")
        for j, p in enumerate(parts):
            head, sub = fit_on_join(join, cfg, use=[j])
            sub = {"kind": head.kind, "config": dataclasses.asdict(head._cfg()),
                   "feature_size": int(head.n_features_in_), **sub, "backbone_of": name}
            out.append((f"{name}[{p['backbone']['label']}]", head, sub))
    return out, warnings


def score_rows(store, head_dir, rows=None, allow_mixed: bool = False):
    """(scores P(fake) (n,), rows) for the store's rows (default: every labelled ok row)."""
    head, info = load_head(head_dir)
    with StoreReader(store) as reader:
        check_head_fits(info, reader.compat, f"store {store}", allow_mixed)
        if rows is None:
            rows = reader.select(label=["real", "fake"])
        X = store_features(reader, info["recipe"], rows)
    return head.predict_proba(X)[:, 1].astype(np.float64), np.asarray(rows), info


def evaluate(store, heads: list, split: str | None = "test", allow_mixed: bool = False,
             reals: dict | None = None, each: bool = False) -> dict:
    """Per-generator tables for each head on the store's ``split`` rows (None, '' or 'all': every labelled row).

    store: one store, or a list of stores of the same images (one per backbone; rows joined by image id,
    see item.classify.joined): each head reads the stores of its backbones (``assign_stores``), every head
    on the same joined rows. each: after each head over several stores, one head per backbone alone
    (``backbone_heads``), so the fused head and its backbones sit side by side.
    reals: {fake generator (or fnmatch pattern): generator of the reals it is scored against}, see
    ``item.classify.pairing``; generators not named keep the automatic own / pooled choice.
    Returns {head name: {'table': rows, 'scores', 'labels', 'generators', 'threshold', 'info',
    'real_pool', 'warnings', 'join' (the counts joined and dropped; None for one store), 'stores_read' (the
    indices of the stores the head read, in its feature order)}}. Each head's own
    threshold (fixed on validation data at training time) is used as is. Rows that are training-time
    augmented copies (their perturbation differs from the store's) are never evaluated.
    """
    from contextlib import ExitStack

    from item.classify.joined import check_distinct, join_readers
    from item.classify.pairing import real_pools

    split = None if split in (None, "", ALL_SPLITS) else split
    paths = store_paths(store)
    check_distinct(paths)
    with ExitStack() as stack:
        readers = [stack.enter_context(StoreReader(p)) for p in paths]
        loaded, own_warnings, picks = [], {}, None
        if len(paths) > 1:  # which head reads which store first: a wrong store is named as such, not as a bad join
            picks = _load_and_assign(heads, each, readers, paths, allow_mixed, loaded, own_warnings)
        join = join_readers(paths, readers)
        reader = join.first
        rows = reader.select(label=["real", "fake"], split=split) if split else reader.select(label=["real", "fake"])
        if rows.size:
            pert = reader.metadata([schema.PERTURBATION])[schema.PERTURBATION]
            rows = rows[pert[rows].astype(str) == str(reader.compat.get("perturbation", ""))]
        if rows.size == 0:
            raise InputError(no_rows_message(reader, split, "--split"))
        if len(join) > 1:
            rows = rows[np.isin(rows, join.rows[0])]
            if rows.size == 0:
                raise InputError(f"no image of split {split or 'all'!r} is in every store")
        meta = reader.metadata([schema.LABEL, schema.GENERATOR, schema.SPLIT, schema.ID])
        labels = _labels(meta[schema.LABEL][rows])
        gens = meta[schema.GENERATOR][rows].astype(str)
        splits = meta[schema.SPLIT][rows].astype(str)
        ids = meta[schema.ID][rows].astype(str)
        fingerprint = reader.fingerprint
        overlay_rows = reader.overlay.get("rows") or {}
        store_warnings = _relabelled_fake_warnings(ids, labels, gens, overlay_rows)
        pool, kinds = real_pools(labels, gens, reals or {})
        if picks is None:
            picks = _load_and_assign(heads, each, readers, paths, allow_mixed, loaded, own_warnings)
        summary = join.summary() if len(join) > 1 else None
        out = {}
        for (name, head, info), use in zip(loaded, picks):
            X = join.features(info["recipe"], rows, use)
            scores = head.predict_proba(X)[:, 1].astype(np.float64)
            table = per_generator_table(scores, labels, gens, info["threshold"], real_pool=pool, real_kinds=kinds)
            warnings = [f"{name}: {info['caption_source_warning']}"] if info.get("caption_source_warning") else []
            warnings += _seen_rows_warnings(name, info, paths[0], fingerprint, splits, ids)
            warnings += store_warnings + own_warnings.get(name, [])
            out[name] = {"table": table, "scores": scores, "labels": labels, "generators": gens,
                         "threshold": info["threshold"], "info": info, "rows": rows, "real_pool": pool,
                         "warnings": warnings, "join": summary, "stores_read": list(use)}
    return out


def _load_and_assign(heads, each, readers, paths, allow_mixed, loaded: list, own_warnings: dict) -> list[list[int]]:
    """Load ``heads`` into ``loaded`` as (name, head, info), each followed by its backbones alone with
    ``each`` (their warnings into ``own_warnings``); returns ``assign_stores``' picks."""
    compats, names = [r.compat for r in readers], [str(p) for p in paths]
    given = [(name, *load_head(head_dir)) for name, head_dir in zip(_head_names(heads), heads)]
    if each:  # the stores are checked before minutes of training on the fly
        assign_stores([(n, i) for n, _, i in given], compats, names, allow_mixed)
    for name, head, info in given:
        loaded.append((name, head, info))
        if each and len(head_parts(info)) > 1:
            subs, own_warnings[name] = backbone_heads(name, info)
            loaded += subs
    if each and len(loaded) == len(heads):
        own_warnings[loaded[0][0]] = ["--each: no head reads several stores, so there is no backbone to show alone"]
    return assign_stores([(n, i) for n, _, i in loaded], compats, names, allow_mixed)


def _relabelled_fake_warnings(ids, labels, gens, overlay_rows: dict) -> list[str]:
    """Fakes whose label was annotated (overlay) but whose generator was not, under a generator that
    reals carry: they keep the real source they were featurized with (``camera``)."""
    if not overlay_rows:
        return []
    real_gens = {str(g) for g, lab in zip(gens, labels) if lab == 0}
    by_gen: dict[str, int] = {}
    for i, lab, g in zip(ids, labels, gens):
        entry = overlay_rows.get(str(i)) or {}
        if lab == 1 and "label" in entry and "generator" not in entry and str(g) in real_gens:
            by_gen[str(g)] = by_gen.get(str(g), 0) + 1
    return [f"{n} fake row(s) of generator {g!r} were relabelled fake without a generator: {g!r} is the generator "
            "they had as reals (a camera or real source); its row pairs them with reals. Set their generator "
            "with `item store annotate` (a manifest with path,label,generator)"
            for g, n in sorted(by_gen.items())]


def _seen_rows_warnings(name: str, info: dict, store, fingerprint: str, splits: np.ndarray,
                        ids: np.ndarray | None = None) -> list[str]:
    """Say so when the evaluated rows include rows the head was fitted or thresholded on."""
    seen_ids = info.get("seen_ids")
    if seen_ids and ids is not None:
        from item.classify import digest

        trained = digest.contains(seen_ids["train"], ids)
        calibrated = digest.contains(seen_ids["val"], ids) & ~trained
        n = int(trained.sum() + calibrated.sum())
        if n == 0:
            return []
        rate = seen_ids["train"].get("false_positive_rate", digest.DEFAULT_FP_RATE)
        return [f"{name}: {n} of the {ids.size} evaluated images were used to train ({int(trained.sum())}) or "
                f"calibrate ({int(calibrated.sum())}) this head; their numbers are optimistic (matched by "
                f"content id, false-positive rate {rate:.1%} per image)"]
    # Heads saved before they kept an id digest: judge by store and split names.
    same_store = info.get("store_fingerprint") == fingerprint or info.get("store") == str(Path(store).resolve())
    if not same_store:
        return []
    if not info.get("train_split") or info.get("train_split") == ALL_SPLITS:
        seen, n_seen = {"(every split)"}, splits.size  # trained on every labelled row
    else:
        seen = {info["train_split"]}
        if info.get("val_split") and str(info.get("threshold_from", "")).startswith("split"):
            seen.add(info["val_split"])
        n_seen = int(np.isin(splits, list(seen)).sum())
    if n_seen == 0:
        return []
    return [f"{name}: {n_seen} of the {splits.size} evaluated rows are in split(s) "
            f"{', '.join(repr(s) for s in sorted(seen))} that this head was trained or thresholded on; "
            "their numbers are optimistic"]


def _head_names(heads: list) -> list[str]:
    names = [Path(h).name or str(h) for h in heads]
    if len(set(names)) < len(names):
        names = [str(h) for h in heads]
    return names
