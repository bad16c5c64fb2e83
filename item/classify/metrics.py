"""Detection metrics in numpy: threshold choice, accuracy, AP, AUROC, per-generator tables.

Conventions: ``labels`` are 0 (real) and 1 (fake); ``scores`` are P(fake) or any score where larger
means "more fake"; an image is called fake when ``score >= threshold``.
AP and AUROC are tie-aware and match scikit-learn's ``average_precision_score`` and
``roc_auc_score`` (tests compare them on data with ties).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from item.errors import InputError

METRIC_KEYS = ("n_real", "n_fake", "acc", "real_acc", "fake_acc", "ap", "auroc")
#: Per-generator columns beside METRIC_KEYS: the same accuracies at the field's fixed threshold 0.5
#: (UnivFD / ForenSynths report them so), and the best accuracy over all thresholds chosen on the
#: scored rows themselves: an oracle that saw the test labels, never a headline number.
FIXED_THRESHOLD = 0.5
AT_05_KEYS = ("acc_05", "real_acc_05", "fake_acc_05")
ORACLE_KEY = "oracle_acc"


def _as_arrays(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if scores.shape != labels.shape:
        raise InputError(f"scores ({scores.size}) and labels ({labels.size}) differ in length")
    if not np.isfinite(scores).all():
        raise InputError("scores hold NaN or infinite values")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise InputError("labels must be 0 (real) or 1 (fake); drop unlabelled rows first")
    return scores, labels.astype(np.int8)


def _descending_cuts(scores, labels):
    """Cumulative (tp, fp) at each distinct score, from the highest score down."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tps = np.cumsum(y)[last_of_run].astype(np.float64)
    fps = (last_of_run + 1) - tps
    return tps, fps, s[last_of_run]


def average_precision(scores, labels) -> float:
    """AP = sum over distinct thresholds of (R_n - R_{n-1}) * P_n (scikit-learn's definition).

    scores: (n,) float; labels: (n,) 0/1. NaN when there is no fake or no real.
    """
    scores, labels = _as_arrays(scores, labels)
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        return math.nan
    tps, fps, _ = _descending_cuts(scores, labels)
    precision = tps / (tps + fps)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x with ties given their average rank."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], xs.size]
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auroc(scores, labels) -> float:
    """Area under the ROC curve via average ranks (Mann-Whitney U); ties count one half.

    scores: (n,) float; labels: (n,) 0/1. NaN when there is no fake or no real.
    """
    scores, labels = _as_arrays(scores, labels)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    rank_sum = _average_ranks(scores)[labels == 1].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_points(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve (fpr, tpr), each (k+1,) float64 starting at (0, 0); for plots."""
    scores, labels = _as_arrays(scores, labels)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0])
    tps, fps, _ = _descending_cuts(scores, labels)
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos]


def pr_points(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Precision-recall curve (recall, precision), each (k+1,) float64, recall ascending; for plots."""
    scores, labels = _as_arrays(scores, labels)
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        return np.array([0.0, 1.0]), np.array([1.0, 1.0])
    tps, fps, _ = _descending_cuts(scores, labels)
    return np.r_[0.0, tps / n_pos], np.r_[1.0, tps / (tps + fps)]


def threshold_at_best_acc(scores, labels) -> float:
    """The threshold that maximises balanced accuracy on VALIDATION rows. Never pass test rows here.

    scores: (n_val,) float, labels: (n_val,) 0/1 with both classes present. Returns a Python float t;
    rows with ``score >= t`` are called fake.

    Candidate cuts lie between consecutive distinct scores (at their midpoint), plus "everything
    fake" (t = lowest score) and "nothing fake" (t just above the highest score). When several cuts
    reach the same best balanced accuracy, the median one in score order is taken (the lower
    median for an even count), so the choice is deterministic and sits inside the best plateau
    rather than at its edge.
    """
    scores, labels = _as_arrays(scores, labels)
    n_fake = int(labels.sum())
    n_real = labels.size - n_fake
    if n_fake == 0 or n_real == 0:
        raise InputError("threshold_at_best_acc needs validation rows of both classes (real and fake)")
    values, inverse = np.unique(scores, return_inverse=True)
    fake_per_value = np.bincount(inverse, weights=labels, minlength=values.size)
    real_per_value = np.bincount(inverse, weights=1 - labels, minlength=values.size)
    # Cut j (0..k) calls values[j:] fake: reals below the cut are right, fakes at/above it are right.
    real_right = np.r_[0.0, np.cumsum(real_per_value)]
    fake_right = n_fake - np.r_[0.0, np.cumsum(fake_per_value)]
    balanced = 0.5 * (real_right / n_real + fake_right / n_fake)
    best = np.flatnonzero(balanced >= balanced.max() - 1e-12)
    j = int(best[(best.size - 1) // 2])
    if j == 0:
        return float(values[0])
    if j == values.size:
        return float(np.nextafter(values[-1], np.inf))
    lo, hi = values[j - 1], values[j]
    mid = lo + (hi - lo) / 2.0
    return float(mid if lo < mid <= hi else hi)


def binary_metrics(scores, labels, threshold) -> dict:
    """Metrics of one scored set at a fixed threshold.

    scores: (n,) float, labels: (n,) 0/1. Returns {n_real, n_fake (int), acc, real_acc, fake_acc,
    ap, auroc (float)}: acc over all rows, real_acc / fake_acc the accuracy on each class (NaN when
    that class is absent), ap / auroc NaN when one class is missing.
    """
    scores, labels = _as_arrays(scores, labels)
    pred = scores >= float(threshold)
    fake = labels == 1
    n_fake = int(fake.sum())
    n_real = int(labels.size - n_fake)
    return {
        "n_real": n_real,
        "n_fake": n_fake,
        "acc": float(np.mean(pred == fake)) if labels.size else math.nan,
        "real_acc": float(np.mean(~pred[~fake])) if n_real else math.nan,
        "fake_acc": float(np.mean(pred[fake])) if n_fake else math.nan,
        "ap": average_precision(scores, labels),
        "auroc": auroc(scores, labels),
    }


def oracle_accuracy(scores, labels) -> float:
    """The best plain accuracy over every threshold, chosen on these very rows (it uses their labels).

    scores: (n,) float, labels: (n,) 0/1. Some papers report it; it is only ever shown in a column
    marked "oracle (test labels)". NaN for an empty set.
    """
    scores, labels = _as_arrays(scores, labels)
    if labels.size == 0:
        return math.nan
    values, inverse = np.unique(scores, return_inverse=True)
    fake_per_value = np.bincount(inverse, weights=labels, minlength=values.size)
    real_per_value = np.bincount(inverse, weights=1 - labels, minlength=values.size)
    # Cut j calls values[j:] fake: reals below it and fakes at/above it are right.
    right = np.r_[0.0, np.cumsum(real_per_value)] + (labels.sum() - np.r_[0.0, np.cumsum(fake_per_value)])
    return float(right.max() / labels.size)


def _real_indices(selector, n: int, labels: np.ndarray, name: str) -> np.ndarray:
    selector = np.asarray(selector)
    if selector.dtype == np.bool_:
        if selector.shape != (n,):
            raise InputError(f"real_pool[{name!r}] mask has shape {selector.shape}, expected ({n},)")
        idx = np.flatnonzero(selector)
    else:
        idx = selector.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise InputError(f"real_pool[{name!r}] holds row indices outside 0..{n - 1}")
    if (labels[idx] != 0).any():
        raise InputError(f"real_pool[{name!r}] selects rows that are not real")
    return idx


def per_generator_table(scores, labels, generators, threshold, real_pool=None, real_kinds=None) -> list[dict]:
    """One row of metrics per generator, then a final ``'mean'`` row.

    scores: (n,) float, labels: (n,) 0/1, generators: (n,) str (a real row's generator names the
    generator it is paired with, or anything else, e.g. '' or 'real', when it is not paired).
    Generators are those that label at least one fake row, in sorted order. Each generator's fakes
    are scored against:
      - ``real_pool[generator]`` when given: a bool mask (n,) or row indices of real rows chosen by the
        caller ('reals': 'own');
      - else its own reals (rows labelled 0 with the same generator), UniversalFakeDetect style
        ('reals': 'own');
      - else every real row in the scored set, GenImage style ('reals': 'pooled').
    ``real_kinds[generator]`` names what a caller-chosen pool is (e.g. 'laion'); default 'own'.
    Each row: {'generator', 'reals', n_real, n_fake, acc, real_acc, fake_acc, ap, auroc} at ``threshold``,
    then acc_05, real_acc_05, fake_acc_05 (the same at 0.5) and oracle_acc (best threshold on these rows).
    The 'mean' row averages acc .. oracle_acc over generators (ignoring NaN); its n_fake is the total of
    fakes and its n_real the number of distinct real rows used; its 'reals' is 'own', 'pooled' or
    'mixed'. With no fake row at all, returns [].
    """
    scores, labels = _as_arrays(scores, labels)
    generators = np.asarray(generators).astype(str).reshape(-1)
    if generators.shape != scores.shape:
        raise InputError(f"generators ({generators.size}) and scores ({scores.size}) differ in length")
    real_pool = dict(real_pool or {})
    n = scores.size
    is_real = labels == 0
    names = sorted(set(generators[labels == 1].tolist()))
    unknown = set(real_pool) - set(names)
    if unknown:
        raise InputError(f"real_pool names generators with no fake rows: {', '.join(sorted(unknown))}")
    all_reals = np.flatnonzero(is_real)
    rows, used = [], np.zeros(n, dtype=bool)
    for name in names:
        fakes = np.flatnonzero((labels == 1) & (generators == name))
        if name in real_pool:
            reals, kind = _real_indices(real_pool[name], n, labels, name), (real_kinds or {}).get(name, "own")
        else:
            reals = np.flatnonzero(is_real & (generators == name))
            kind = "own"
            if reals.size == 0:
                reals, kind = all_reals, "pooled"
        used[reals] = True
        idx = np.r_[reals, fakes]
        row = {"generator": name, "reals": kind, **binary_metrics(scores[idx], labels[idx], threshold)}
        at_05 = binary_metrics(scores[idx], labels[idx], FIXED_THRESHOLD)
        row.update({f"{k}_05": at_05[k] for k in ("acc", "real_acc", "fake_acc")})
        row[ORACLE_KEY] = oracle_accuracy(scores[idx], labels[idx])
        rows.append(row)
    if not rows:
        return []
    kinds = {r["reals"] for r in rows}
    mean = {"generator": "mean", "reals": kinds.pop() if len(kinds) == 1 else "mixed"}
    mean["n_real"] = int(used.sum())
    mean["n_fake"] = int(sum(r["n_fake"] for r in rows))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column -> NaN, on purpose
        for key in ("acc", "real_acc", "fake_acc", "ap", "auroc") + AT_05_KEYS + (ORACLE_KEY,):
            mean[key] = float(np.nanmean([r[key] for r in rows]))
    rows.append(mean)
    return rows
