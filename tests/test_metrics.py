"""Metrics against scikit-learn, threshold choice on validation rows, per-generator tables."""

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, balanced_accuracy_score, roc_auc_score

from item.classify import metrics
from item.errors import InputError


@pytest.mark.parametrize("seed", range(8))
def test_ap_auroc_equal_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    # Rounded scores: many ties, including ties across classes.
    scores = np.round(rng.random(n) + 0.3 * labels, int(rng.integers(0, 3)))
    assert metrics.average_precision(scores, labels) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert metrics.auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    m = metrics.binary_metrics(scores, labels, 0.5)
    assert m["ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_binary_metrics_counts_and_missing_class():
    scores = np.array([0.1, 0.6, 0.4, 0.9, 0.5])
    labels = np.array([0, 0, 1, 1, 1])
    m = metrics.binary_metrics(scores, labels, 0.5)
    assert (m["n_real"], m["n_fake"]) == (2, 3)
    assert m["real_acc"] == 0.5 and m["fake_acc"] == pytest.approx(2 / 3) and m["acc"] == pytest.approx(3 / 5)
    only_fake = metrics.binary_metrics(scores[2:], labels[2:], 0.5)
    assert math.isnan(only_fake["ap"]) and math.isnan(only_fake["auroc"]) and math.isnan(only_fake["real_acc"])
    assert only_fake["fake_acc"] == pytest.approx(2 / 3)
    with pytest.raises(InputError):
        metrics.binary_metrics(scores, np.array([0, 0, 1, 1, 2]), 0.5)


def test_threshold_maximises_balanced_accuracy():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(4, 200))
        labels = rng.integers(0, 2, n)
        labels[:2] = [0, 1]
        scores = np.round(rng.normal(size=n) + labels, 1)
        t = metrics.threshold_at_best_acc(scores, labels)
        got = balanced_accuracy_score(labels, (scores >= t).astype(int))
        # Brute force over every possible cut.
        cuts = np.r_[np.unique(scores), np.inf]
        best = max(balanced_accuracy_score(labels, (scores >= c).astype(int)) for c in cuts)
        assert got == pytest.approx(best, abs=1e-12)


def test_threshold_midpoint_and_tie_rule():
    # Perfectly separable: the whole gap (0.2, 0.8) is optimal; the cut sits at the midpoint.
    assert metrics.threshold_at_best_acc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == pytest.approx(0.5)
    # Three equally good cuts (1|2, 3|4 and 5|6 all give balanced accuracy 2/3): the median one.
    assert metrics.threshold_at_best_acc([1, 2, 3, 4, 5, 6], [0, 1, 0, 1, 0, 1]) == pytest.approx(3.5)
    # Two equally good cuts (1|2 and 3|4): the lower median.
    assert metrics.threshold_at_best_acc([1, 2, 3, 4], [0, 1, 0, 1]) == pytest.approx(1.5)
    # Deterministic: the same call gives the same answer, whatever the row order.
    s = np.array([0.3, 0.3, 0.7, 0.1, 0.9, 0.5])
    y = np.array([0, 1, 1, 0, 1, 0])
    perm = np.random.default_rng(0).permutation(6)
    assert metrics.threshold_at_best_acc(s, y) == metrics.threshold_at_best_acc(s[perm], y[perm])
    with pytest.raises(InputError, match="both classes"):
        metrics.threshold_at_best_acc([0.1, 0.2], [1, 1])


def test_threshold_uses_only_validation_rows():
    """The API takes validation rows only: shuffling the TEST labels cannot move the threshold."""
    rng = np.random.default_rng(4)
    val_labels = rng.integers(0, 2, 300)
    val_scores = rng.normal(size=300) + val_labels
    test_labels = rng.integers(0, 2, 300)
    test_scores = rng.normal(size=300) + test_labels
    t = metrics.threshold_at_best_acc(val_scores, val_labels)
    before = metrics.binary_metrics(test_scores, test_labels, t)
    shuffled = rng.permutation(test_labels)
    assert metrics.threshold_at_best_acc(val_scores, val_labels) == t
    after = metrics.binary_metrics(test_scores, shuffled, t)
    assert after["auroc"] < before["auroc"]  # the shuffle did change the test set, not the threshold


def test_per_generator_paired_vs_pooled():
    # 'ganA' has its own reals (UniversalFakeDetect layout); 'diffB' has none, so it is scored
    # against every real row in the set (GenImage layout).
    gens = np.array(["ganA", "ganA", "ganA", "ganA", "real", "real", "diffB", "diffB"])
    labels = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.9, 0.8, 0.7, 0.3, 0.6, 0.95])
    rows = metrics.per_generator_table(scores, labels, gens, 0.5)
    assert [r["generator"] for r in rows] == ["diffB", "ganA", "mean"]
    by = {r["generator"]: r for r in rows}
    assert by["ganA"]["reals"] == "own" and (by["ganA"]["n_real"], by["ganA"]["n_fake"]) == (2, 2)
    assert by["ganA"]["real_acc"] == 1.0 and by["ganA"]["auroc"] == 1.0
    assert by["diffB"]["reals"] == "pooled" and (by["diffB"]["n_real"], by["diffB"]["n_fake"]) == (4, 2)
    pooled = np.array([0, 1, 4, 5, 6, 7])
    assert by["diffB"]["auroc"] == pytest.approx(roc_auc_score(labels[pooled], scores[pooled]))
    assert by["diffB"]["real_acc"] == 0.75
    assert by["mean"]["reals"] == "mixed"
    assert by["mean"]["auroc"] == pytest.approx((by["ganA"]["auroc"] + by["diffB"]["auroc"]) / 2)
    assert by["mean"]["acc"] == pytest.approx((by["ganA"]["acc"] + by["diffB"]["acc"]) / 2)
    assert (by["mean"]["n_real"], by["mean"]["n_fake"]) == (4, 4)
    # An explicit pool overrides the automatic choice.
    rows2 = metrics.per_generator_table(scores, labels, gens, 0.5, real_pool={"diffB": np.array([4, 5])})
    d = rows2[0]
    assert d["generator"] == "diffB" and d["reals"] == "own" and d["n_real"] == 2 and d["real_acc"] == 0.5
    with pytest.raises(InputError, match="not real"):
        metrics.per_generator_table(scores, labels, gens, 0.5, real_pool={"diffB": np.array([2])})
    assert metrics.per_generator_table(scores[:2], labels[:2], gens[:2], 0.5) == []


def test_curves_end_points():
    fpr, tpr = metrics.roc_points([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    recall, precision = metrics.pr_points([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert recall[-1] == 1.0 and np.all(np.diff(recall) >= 0)
