"""rtmoe.metrics against scikit-learn on fixed inputs (sklearn is a dev dependency)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from rtmoe import metrics


def _case(n_classes: int, seed: int, n: int = 60, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes)) + 1.5 * np.eye(n_classes)[y]
    if ties:  # coarse scores: many exact ties for the rank-based metrics
        logits = np.round(logits)
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, proba


CASES = [(2, 0, False), (2, 1, True), (3, 2, False), (5, 3, True), (4, 4, False)]


@pytest.mark.parametrize(("n_classes", "seed", "ties"), CASES)
def test_label_metrics_match_sklearn(n_classes, seed, ties):
    y, proba = _case(n_classes, seed, ties=ties)
    pred = proba.argmax(axis=1)
    got = metrics.classification_metrics(y, proba)
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert got["cohen_kappa"] == pytest.approx(skm.cohen_kappa_score(y, pred))
    assert got["weighted_f1"] == pytest.approx(
        skm.f1_score(y, pred, average="weighted", zero_division=0)
    )
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    np.testing.assert_array_equal(
        metrics.confusion_matrix(y, pred, n_classes),
        skm.confusion_matrix(y, pred, labels=range(n_classes)),
    )


@pytest.mark.parametrize(("n_classes", "seed", "ties"), CASES)
def test_score_metrics_match_sklearn(n_classes, seed, ties):
    y, proba = _case(n_classes, seed, ties=ties)
    if n_classes == 2:
        ref_auroc = skm.roc_auc_score(y, proba[:, 1])
        ref_auprc = skm.average_precision_score(y, proba[:, 1])
    else:
        ref_auroc = skm.roc_auc_score(y, proba, multi_class="ovr", average="macro")
        ref_auprc = skm.average_precision_score(np.eye(n_classes)[y], proba, average="macro")
    assert metrics.auroc(y, proba) == pytest.approx(ref_auroc, abs=1e-12)
    assert metrics.auprc(y, proba) == pytest.approx(ref_auprc, abs=1e-12)


def test_class_never_predicted_and_absent_class():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 0, 1, 0, 1])  # class 2 never predicted
    assert metrics.weighted_f1(y, pred, 3) == pytest.approx(
        skm.f1_score(y, pred, average="weighted", zero_division=0)
    )
    # Class 3 of 4 never occurs in y: balanced accuracy averages the present classes.
    assert metrics.balanced_accuracy(y, pred, 4) == pytest.approx(
        skm.balanced_accuracy_score(y, pred)
    )
    assert math.isnan(metrics.binary_auroc(np.zeros(4, int), np.arange(4.0)))
    assert math.isnan(metrics.binary_auprc(np.zeros(4, int), np.arange(4.0)))


def test_known_values():
    y = np.array([0, 0, 1, 1])
    # Perfect separation, then a single swapped pair (AUROC 3/4).
    assert metrics.binary_auroc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert metrics.binary_auroc(y, np.array([0.1, 0.8, 0.2, 0.9])) == 0.75
    assert metrics.cohen_kappa(y, y, 2) == 1.0
    assert metrics.balanced_accuracy(y, 1 - y, 2) == 0.0


def test_regression_metrics_match_sklearn_and_scipy():
    from scipy import stats

    rng = np.random.default_rng(5)
    y = rng.normal(size=50)
    pred = 0.7 * y + 0.3 * rng.normal(size=50)
    got = metrics.regression_metrics(y, pred)
    assert got["pearson_r"] == pytest.approx(stats.pearsonr(y, pred)[0])
    assert got["r2"] == pytest.approx(skm.r2_score(y, pred))
    assert got["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(y, pred)))
    y2, pred2 = rng.normal(size=(30, 2)), rng.normal(size=(30, 2))
    assert metrics.r2_score(y2, pred2) == pytest.approx(skm.r2_score(y2, pred2))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="y_true holds class index 3"):
        metrics.confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="integer class indices"):
        metrics.balanced_accuracy(np.array(["a", "b"]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="same shape"):
        metrics.rmse(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="class probabilities"):
        metrics.auroc(np.array([0, 1]), np.array([0.2, 0.8]))


def test_four_class_hand_computed():
    """An unbalanced 4-class case worked out by hand (no reference library needed)."""
    y = np.array([0, 0, 0, 0, 1, 1, 2, 3])
    pred = np.array([0, 0, 0, 1, 1, 0, 2, 2])  # class 3 never predicted
    proba = np.full((8, 4), 0.1)
    proba[np.arange(8), pred] = 0.7  # column k: 0.7 where k was predicted, else a tie at 0.1
    got = metrics.classification_metrics(y, proba)
    assert got["accuracy"] == pytest.approx(5 / 8)
    assert got["balanced_accuracy"] == pytest.approx((3 / 4 + 1 / 2 + 1 + 0) / 4)
    # p_o = 5/8; p_e = (4*4 + 2*2 + 1*2 + 1*0) / 64 = 22/64; kappa = (p_o - p_e) / (1 - p_e).
    assert got["cohen_kappa"] == pytest.approx(3 / 7)
    # One-vs-rest AUROC per class (ties half): 12/16, 8/12, 6.5/7, 3.5/7; macro mean.
    assert got["auroc"] == pytest.approx((12 / 16 + 8 / 12 + 6.5 / 7 + 3.5 / 7) / 4)
