"""Can a benchmark's labels be read off its files? The trivial-cue audit of a store.

Detectors can learn file format, JPEG quality and size instead of generation (Dual Data Alignment,
arXiv 2505.14359). ``audit_store`` describes each class and generator by those cues and fits a
logistic regression on them alone:

    cues(image) = [one-hot format, JPEG quality / 100, log2 width, log2 height, log2 aspect,
                   EXIF present, log2 file size, bits per pixel]          (n_images, n_cues) float64

trained on the store's train split, its threshold fixed on the val split (balanced accuracy, as
for ITEM's heads), and evaluated on the audited split per generator with the store's (or the
caller's) real pairing. A test accuracy near 0.5 means the cues say nothing; near 1.0 means the
benchmark can be solved without looking at the pixels.

Where the cues come from: the store's columns (width, height, format always; JPEG quality, EXIF and
file size in stores written by featurize since schema 3), otherwise the files themselves when their
paths still exist; a cue that neither gives is reported as unavailable and left out of the head.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from item.errors import InputError
from item.imagefile import UNKNOWN, file_cues


@dataclass
class Cues:
    """Cues of n rows: strings and numbers as numpy arrays; ``source`` says where each cue came from."""

    format: np.ndarray  # (n,) str, upper case
    jpeg_quality: np.ndarray  # (n,) int, UNKNOWN when not a JPEG or not known
    width: np.ndarray  # (n,) int
    height: np.ndarray  # (n,) int
    exif: np.ndarray  # (n,) float: 1 / 0, NaN when not known
    file_size: np.ndarray  # (n,) float bytes, NaN when not known
    source: dict = field(default_factory=dict)  # cue -> 'store' | 'files' | 'unavailable' | 'store+files'


def store_cues(reader, rows: np.ndarray) -> Cues:
    """The cues of store ``rows`` (int64, sorted): from the store's columns, the rest from the files."""
    from item.store import schema

    meta = reader.metadata([schema.PATH, schema.WIDTH, schema.HEIGHT, schema.FORMAT, *schema.AUDIT_COLUMNS], rows=rows)
    n = rows.size
    fmt = np.array([str(f).upper() for f in meta[schema.FORMAT]], dtype=object)
    cues = Cues(format=fmt, jpeg_quality=np.full(n, UNKNOWN, dtype=np.int64),
                width=meta[schema.WIDTH].astype(np.int64), height=meta[schema.HEIGHT].astype(np.int64),
                exif=np.full(n, np.nan), file_size=np.full(n, np.nan))
    # Recorded at featurize time since schema 3; UNKNOWN in rows of older shards (schema.COLUMN_DEFAULT).
    size = meta[schema.FILE_SIZE].astype(np.float64)
    known = size >= 0
    cues.file_size[known] = size[known]
    cues.jpeg_quality[known] = meta[schema.JPEG_QUALITY].astype(np.int64)[known]
    cues.exif[known] = meta[schema.EXIF].astype(np.int64)[known]
    from_files = 0
    for i in np.flatnonzero(~known):
        path = str(meta[schema.PATH][i])
        if not os.path.isfile(path):
            continue
        try:
            c = file_cues(path)
        except InputError:
            continue
        cues.jpeg_quality[i], cues.exif[i], cues.file_size[i] = c["jpeg_quality"], float(c["exif"]), c["file_size"]
        from_files += 1
    n_known = int(known.sum())
    for name in ("jpeg_quality", "exif", "file_size"):
        if n_known == n:
            cues.source[name] = "store"
        elif n_known + from_files == 0:
            cues.source[name] = "unavailable (not recorded in the store; the files are gone)"
        else:
            where = ("store+files" if n_known else "files")
            missing = n - n_known - from_files
            cues.source[name] = where + (f" ({missing} of {n} rows unavailable: files gone)" if missing else "")
    for name in ("format", "width", "height", "aspect"):
        cues.source[name] = "store"
    return cues


def cue_matrix(cues: Cues, formats: list[str], fill: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
    """(n, n_features) float64 design matrix of the cues and its column names. ``formats``: the one-hot
    categories (from the training rows). NaN entries are filled with ``fill`` (per column) or left NaN."""
    w = np.maximum(cues.width, 1).astype(np.float64)
    h = np.maximum(cues.height, 1).astype(np.float64)
    jpeg = cues.jpeg_quality >= 0
    cols = [(f"format={f}", (cues.format == f).astype(np.float64)) for f in formats]
    cols += [("jpeg_quality", np.where(jpeg, cues.jpeg_quality, 0).astype(np.float64) / 100.0),
             ("log2_width", np.log2(w)), ("log2_height", np.log2(h)), ("log2_aspect", np.log2(w / h)),
             ("exif", cues.exif.astype(np.float64)),
             ("log2_file_size", np.log2(np.maximum(cues.file_size, 1.0))),
             ("bits_per_pixel", cues.file_size * 8.0 / (w * h))]
    X = np.stack([c for _, c in cols], axis=1)
    if fill is not None:
        bad = np.isnan(X)
        X[bad] = np.take(fill, np.nonzero(bad)[1])
    return X, [n for n, _ in cols]


#: Which cue each design-matrix column comes from (one-hot format columns: 'format').
_COLUMN_CUE = {"jpeg_quality": "jpeg_quality", "log2_width": "width", "log2_height": "height",
               "log2_aspect": "aspect", "exif": "exif", "log2_file_size": "file_size", "bits_per_pixel": "file_size"}


def _design(cue_sets: list[Cues], formats: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(keep (n_columns,) bool, fill (n_columns,) float64, names): a column is left out when its cue is unavailable
    in any of ``cue_sets`` (the first is the training set); missing entries of the others take the training median."""
    X, names = cue_matrix(cue_sets[0], formats)
    gone = {c for cs in cue_sets for c, src in cs.source.items() if src.startswith("unavailable")}
    keep = np.array([_COLUMN_CUE.get(n, "format") not in gone for n in names]) & ~np.all(np.isnan(X), axis=0)
    fill = np.zeros(len(names))
    for j in np.flatnonzero(keep):
        col = X[:, j][~np.isnan(X[:, j])]
        fill[j] = float(np.median(col)) if col.size else 0.0
    return keep, fill, names


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 50) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method, classes weighted equally.

    X: (n, d) float64 standardised, y: (n,) 0/1. Returns (w (d,), b)."""
    n, d = X.shape
    pos = max(int(y.sum()), 1)
    neg = max(n - int(y.sum()), 1)
    sw = np.where(y == 1, n / (2 * pos), n / (2 * neg))
    A = np.c_[X, np.ones(n)]
    theta = np.zeros(d + 1)
    reg = np.r_[np.full(d, l2 * n), 0.0]
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(A @ theta, -30, 30)))
        grad = A.T @ (sw * (p - y)) + reg * theta
        H = (A * (sw * p * (1 - p))[:, None]).T @ A + np.diag(reg + 1e-9)
        step = np.linalg.solve(H, grad)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    return theta[:d], float(theta[d])


def _predict(X, w, b) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(X @ w + b, -30, 30)))


def _labels(reader, rows) -> np.ndarray:
    from item.store import schema

    return (reader.metadata([schema.LABEL], rows=rows)[schema.LABEL].astype(str) == "fake").astype(np.int64)


def _describe(cues: Cues, mask: np.ndarray) -> dict:
    """Per-group summary: formats with their shares, median JPEG quality, size, aspect, EXIF and file size."""
    n = int(mask.sum())
    if n == 0:
        return {"n": 0}
    fmts, counts = np.unique(cues.format[mask].astype(str), return_counts=True)
    q = cues.jpeg_quality[mask]
    q = q[q >= 0]
    exif = cues.exif[mask]
    size = cues.file_size[mask]
    w, h = cues.width[mask], cues.height[mask]

    def med(a):
        a = a[~np.isnan(a)] if a.dtype.kind == "f" else a
        return float(np.median(a)) if a.size else None

    return {"n": n, "formats": {str(f): int(c) for f, c in zip(fmts, counts)},
            "jpeg_quality_median": med(q.astype(np.float64)) if q.size else None,
            "jpeg_qualities": {int(k): int(v) for k, v in zip(*np.unique(q, return_counts=True))} if q.size else {},
            "width_median": med(w.astype(np.float64)), "height_median": med(h.astype(np.float64)),
            "aspect_median": med(w.astype(np.float64) / np.maximum(h, 1)),
            "exif_share": float(np.nanmean(exif)) if np.isfinite(exif).any() else None,
            "file_size_median": med(size)}


def _present(reals: dict, gens: np.ndarray, y: np.ndarray) -> dict:
    """The pairs of ``reals`` whose fakes and reals are both in the audited rows (a benchmark run with some
    sets missing audits the rest)."""
    import fnmatch

    fake_gens = set(gens[y == 1].tolist())
    real_gens = set(gens[y == 0].tolist())
    return {k: v for k, v in reals.items()
            if v in real_gens and any(fnmatch.fnmatchcase(g, k) for g in fake_gens)}


def verdict(test_acc: float) -> str:
    """One line: how far the file cues alone go."""
    if not np.isfinite(test_acc):
        return "trivial-cue audit: no test accuracy (the audited split lacks one of the classes)"
    if test_acc >= 0.9:
        return f"labels are predictable from file format and size alone: test accuracy {test_acc:.2f}"
    if test_acc >= 0.7:
        return f"file format and size partly predict the labels: test accuracy {test_acc:.2f}"
    return f"file format and size do not predict the labels: test accuracy {test_acc:.2f}"


def audit_store(store, split: str | None = "test", *, train_store=None, train_split: str = "train", val_split: str = "val",
                reals: dict | None = None) -> dict:
    """Audit ``store``'s ``split`` for trivial cues. See the module docstring.

    split: None audits every row (the head is then cross-validated unless ``train_store`` is given).
    train_store: where the train / val splits are (default: ``store``; `item reproduce` keeps them in a
    store of its own). Without a train split the head is fitted by 5-fold cross-validation on the audited
    split itself, and the result says so. reals: {generator: real generator} pairing for the per-generator rows.
    Returns a JSON-ready dict: per_class, per_generator (cue summaries), trivial_cue {test_acc, test_auroc,
    threshold, trained_on, features, per_generator [...]}, sources (where each cue came from), verdict.
    """
    from item.classify.metrics import binary_metrics, per_generator_table, threshold_at_best_acc
    from item.classify.pairing import real_pools
    from item.store import StoreReader, schema

    with StoreReader(store) as r:
        rows = r.select(split=split, label=["real", "fake"])  # rows labelled 'unknown' say nothing here
        if rows.size == 0:
            splits = sorted(set(r.metadata([schema.SPLIT])[schema.SPLIT].astype(str).tolist()))
            raise InputError(f"{store}: no labelled rows in split {split!r}; splits: {', '.join(splits) or '-'}")
        y = _labels(r, rows)
        gens = r.metadata([schema.GENERATOR], rows=rows)[schema.GENERATOR].astype(str)
        cues = store_cues(r, rows)
        random_weights = bool(r.random_weights)
    train_cues = val_cues = None
    with StoreReader(train_store or store) as r:
        if split is None and train_store is None:
            tr = va = np.array([], dtype=np.int64)  # every row is audited: none left to train on
        else:
            tr = r.select(split=train_split, label=["real", "fake"])
            va = r.select(split=val_split, label=["real", "fake"])
        if tr.size:
            y_tr, train_cues = _labels(r, tr), store_cues(r, tr)
            if va.size:
                y_va, val_cues = _labels(r, va), store_cues(r, va)
    out = {"store": str(store), "split": split, "random_weights": random_weights, "n_images": int(rows.size),
           "per_class": {lab: _describe(cues, y == k) for lab, k in (("real", 0), ("fake", 1))},
           "per_generator": {g: {lab: _describe(cues, (gens == g) & (y == k)) for lab, k in (("real", 0), ("fake", 1))}
                             for g in sorted(set(gens.tolist()))},
           "sources": dict(cues.source)}
    if len(set(y.tolist())) < 2:
        raise InputError(f"{store}: split {split!r} needs real and fake rows for the audit")
    if train_cues is not None and len(set(y_tr.tolist())) == 2:
        formats = sorted(set(train_cues.format.astype(str).tolist()))
        sets = [train_cues, cues] + ([val_cues] if val_cues is not None else [])
        keep, fill, names = _design(sets, formats)
        X_tr = cue_matrix(train_cues, formats, fill)[0][:, keep]
        X_te = cue_matrix(cues, formats, fill)[0][:, keep]
        mu, sd = X_tr.mean(axis=0), X_tr.std(axis=0)
        sd[sd == 0] = 1.0
        w, b = fit_logistic((X_tr - mu) / sd, y_tr)
        s_te = _predict((X_te - mu) / sd, w, b)
        if val_cues is not None and len(set(y_va.tolist())) == 2:
            s_va = _predict((cue_matrix(val_cues, formats, fill)[0][:, keep] - mu) / sd, w, b)
            threshold, threshold_from = threshold_at_best_acc(s_va, y_va), val_split
        else:
            threshold = threshold_at_best_acc(_predict((X_tr - mu) / sd, w, b), y_tr)
            threshold_from = f"{train_split} (no {val_split} split with both classes)"
        trained_on = f"split {train_split!r}" + (f" of {train_store}" if train_store else "")
        features = [n for n, k in zip(names, keep) if k]
    else:
        # No training split: 5-fold cross-validation on the audited rows (each fold scored by a head that never saw it).
        formats = sorted(set(cues.format.astype(str).tolist()))
        keep, fill, names = _design([cues], formats)
        X = cue_matrix(cues, formats, fill)[0][:, keep]
        s_te = np.empty(rows.size)
        fold = np.random.default_rng(0).permutation(rows.size) % 5
        for k in range(5):
            tr_m, te_m = fold != k, fold == k
            if len(set(y[tr_m].tolist())) < 2 or not te_m.any():
                s_te[te_m] = 0.5
                continue
            mu, sd = X[tr_m].mean(axis=0), X[tr_m].std(axis=0)
            sd[sd == 0] = 1.0
            w, b = fit_logistic((X[tr_m] - mu) / sd, y[tr_m])
            s_te[te_m] = _predict((X[te_m] - mu) / sd, w, b)
        threshold, threshold_from = 0.5, "fixed 0.5 (no training split)"
        trained_on = f"5-fold cross-validation on split {split!r} (the store has no {train_split!r} split)"
        features = [n for n, k in zip(names, keep) if k]
    m = binary_metrics(s_te, y, threshold)
    pools, chosen = real_pools(y, gens, _present(reals or {}, gens, y))
    per_gen = per_generator_table(s_te, y, gens, threshold, real_pool=pools, real_kinds=chosen)
    out["trivial_cue"] = {"test_acc": m["acc"], "test_auroc": m["auroc"], "real_acc": m["real_acc"],
                          "fake_acc": m["fake_acc"], "threshold": float(threshold), "threshold_from": threshold_from,
                          "trained_on": trained_on, "features": features,
                          "per_generator": [{k: row[k] for k in ("generator", "reals", "n_real", "n_fake", "acc",
                                                                 "auroc")} for row in per_gen]}
    out["verdict"] = verdict(m["acc"])
    return out


def html_section(audit: dict) -> str:
    """The audit as trusted HTML for the report: the verdict, the per-class cue table, and plots of format
    shares, JPEG quality and file size by class and generator."""
    import html as _html

    from item.classify.report import html_img, html_table, new_figure

    tc = audit["trivial_cue"]
    parts = [f"<p><b>{_html.escape(audit['verdict'])}</b> (AUROC {tc['test_auroc']:.3f}; logistic regression on "
             f"{_html.escape(', '.join(tc['features']))}; trained on {_html.escape(tc['trained_on'])}, threshold "
             f"from {_html.escape(tc['threshold_from'])})</p>"]
    rows = []
    for gen, by in [("all", audit["per_class"])] + list(audit["per_generator"].items()):
        for lab in ("real", "fake"):
            d = by.get(lab) or {}
            if not d.get("n"):
                continue
            rows.append({"generator": gen, "class": lab, "n": d["n"],
                         "formats": ", ".join(f"{k} {v}" for k, v in d["formats"].items()),
                         "JPEG quality (median)": "—" if d["jpeg_quality_median"] is None else f"{d['jpeg_quality_median']:.0f}",
                         "width x height (median)": f"{d['width_median']:.0f} x {d['height_median']:.0f}",
                         "EXIF": "—" if d["exif_share"] is None else f"{100 * d['exif_share']:.0f}%",
                         "file size (median)": "—" if d["file_size_median"] is None else f"{d['file_size_median'] / 1024:.1f} KiB"})
    parts.append(html_table(rows))
    parts.append(html_table([{"generator": r["generator"], "reals": r["reals"], "n real": r["n_real"],
                              "n fake": r["n_fake"], "trivial-cue acc": f"{100 * r['acc']:.1f}",
                              "trivial-cue AUROC": "—" if r["auroc"] != r["auroc"] else f"{r['auroc']:.3f}"}
                             for r in tc["per_generator"]]))
    groups = [(g, lab, by[lab]) for g, by in audit["per_generator"].items() for lab in ("real", "fake")
              if (by.get(lab) or {}).get("n")]
    if groups:
        fig = new_figure(12.0, 4.0)
        axes = fig.subplots(1, 3)
        names = [f"{g}/{lab}" for g, lab, _ in groups]
        formats = sorted({f for _, _, d in groups for f in d["formats"]})
        bottom = np.zeros(len(groups))
        for f in formats:
            share = np.array([d["formats"].get(f, 0) / d["n"] for _, _, d in groups])
            axes[0].barh(names, share, left=bottom, label=f or "?")
            bottom += share
        axes[0].set_title("file format share")
        axes[0].legend(fontsize=7)
        plotted = False
        for lab, colour in (("real", "tab:blue"), ("fake", "tab:red")):
            q = audit["per_class"][lab].get("jpeg_qualities") or {}
            if q:
                axes[1].bar([int(k) for k in q], list(q.values()), color=colour, alpha=0.6, label=lab)
                plotted = True
        axes[1].set_title("JPEG quality (estimated) by class" + ("" if plotted else ": no JPEG files"))
        if plotted:
            axes[1].legend(fontsize=7)
        sizes = [(d["file_size_median"] or 0) / 1024 for _, _, d in groups]
        axes[2].barh(names, sizes, color=["tab:red" if lab == "fake" else "tab:blue" for _, lab, _ in groups])
        axes[2].set_title("median file size (KiB)")
        for ax in axes:
            ax.tick_params(labelsize=7)
        fig.tight_layout()
        parts.append(html_img(fig, "file cues by class and generator"))
    parts.append("<p class=\"note\">Where the cues came from: " + _html.escape(
        "; ".join(f"{k}: {v}" for k, v in audit["sources"].items())) + "</p>")
    return "".join(parts)
