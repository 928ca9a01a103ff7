"""Classification and regression metrics of SPEC §5, in numpy (no scikit-learn at run time).

Class labels are integer indices ``0 .. n_classes - 1``; scores are per-class
probabilities ``(n_samples, n_classes)``. Each function follows scikit-learn's definition
of the same name (tests compare them on fixed inputs); an undefined value (e.g. AUROC
when ``y_true`` holds one class only) is ``nan`` instead of an exception.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts ``(n_classes, n_classes)``: row = true class, column = predicted class."""
    y_true, y_pred = _labels(y_true, n_classes, "y_true"), _labels(y_pred, n_classes, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in length")
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes**2).reshape(
        n_classes, n_classes
    )


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in ``y_true``."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present]))


def cohen_kappa(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Agreement beyond chance: ``(p_o - p_e) / (1 - p_e)``."""
    cm = confusion_matrix(y_true, y_pred, n_classes).astype(np.float64)
    n = cm.sum()
    p_o = np.trace(cm) / n
    p_e = float(cm.sum(axis=1) @ cm.sum(axis=0)) / n**2
    return float((p_o - p_e) / (1 - p_e)) if p_e < 1 else float("nan")


def weighted_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Per-class F1 averaged with the true class frequencies as weights.

    A class never predicted has precision 0 (scikit-learn's ``zero_division`` default).
    """
    cm = confusion_matrix(y_true, y_pred, n_classes).astype(np.float64)
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    denom = support + predicted  # F1 = 2 tp / (2 tp + fp + fn) = 2 tp / (support + predicted)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1 @ support / support.sum())


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Tie groups: boundaries where the sorted value changes.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_x)) + 1]
    ends = np.r_[starts[1:], len(x)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def binary_auroc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for the positive class ``y_true == 1``.

    Mann-Whitney form: the probability that a random positive outscores a random
    negative, ties counted half; ``nan`` when one of the two classes is absent.
    """
    y_true = np.asarray(y_true).astype(bool)
    n_pos, n_neg = int(y_true.sum()), int((~y_true).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = _ranks(np.asarray(score, dtype=np.float64))[y_true].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_auprc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Average precision: ``sum_n (R_n - R_{n-1}) P_n`` over the distinct thresholds.

    ``nan`` when there is no positive sample.
    """
    y_true = np.asarray(y_true).astype(bool)
    if not y_true.any():
        return float("nan")
    score = np.asarray(score, dtype=np.float64)
    order = np.argsort(-score, kind="mergesort")
    hits, sorted_score = y_true[order], score[order]
    # One operating point per distinct score: the last index of each tie group.
    last = np.r_[np.flatnonzero(np.diff(sorted_score)), len(score) - 1]
    tp = np.cumsum(hits)[last]
    precision = tp / (last + 1)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def auroc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """AUROC: binary on ``proba[:, 1]``; multi-class one-vs-rest, macro average."""
    return _one_vs_rest(binary_auroc, y_true, proba)


def auprc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Average precision: binary on ``proba[:, 1]``; multi-class one-vs-rest, macro."""
    return _one_vs_rest(binary_auprc, y_true, proba)


def _one_vs_rest(binary, y_true: np.ndarray, proba: np.ndarray) -> float:
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[1] < 2:
        raise ValueError(
            f"proba has shape {proba.shape}; give class probabilities (n_samples, n_classes>=2)"
        )
    y_true = _labels(y_true, proba.shape[1], "y_true")
    if proba.shape[1] == 2:
        return binary(y_true == 1, proba[:, 1])
    per_class = [binary(y_true == k, proba[:, k]) for k in range(proba.shape[1])]
    return float(np.mean(per_class))


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Balanced accuracy, Cohen's kappa, weighted F1, AUROC and AUPRC; argmax decisions.

    Parameters
    ----------
    y_true : ndarray, shape (n_samples,), int class indices
    proba : ndarray, shape (n_samples, n_classes), class probabilities

    Returns
    -------
    dict with keys ``balanced_accuracy``, ``cohen_kappa``, ``weighted_f1``, ``auroc``,
    ``auprc``, ``accuracy``.
    """
    proba = np.asarray(proba, dtype=np.float64)
    n_classes = proba.shape[1]
    y_true = _labels(y_true, n_classes, "y_true")
    y_pred = proba.argmax(axis=1)
    return {
        "balanced_accuracy": balanced_accuracy(y_true, y_pred, n_classes),
        "cohen_kappa": cohen_kappa(y_true, y_pred, n_classes),
        "weighted_f1": weighted_f1(y_true, y_pred, n_classes),
        "auroc": auroc(y_true, proba),
        "auprc": auprc(y_true, proba),
        "accuracy": float(np.mean(y_true == y_pred)),
    }


def pearson_r(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Pearson correlation of flattened targets and predictions (``nan`` if one is constant)."""
    a, b = _pair(y_true, y_pred)
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / denom) if denom > 0 else float("nan")


def r2_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot`` (uniform over targets)."""
    a, b = (np.asarray(v, dtype=np.float64) for v in (y_true, y_pred))
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    ss_res = ((a - b) ** 2).sum(axis=0)
    ss_tot = ((a - a.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_target = np.where(ss_tot > 0, 1 - ss_res / ss_tot, np.nan)
    return float(np.mean(per_target))


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Root mean squared error over all samples and targets."""
    a, b = _pair(y_true, y_pred)
    return float(np.sqrt(np.mean((a - b) ** 2)))


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Pearson r, R² and RMSE of ``y_pred`` against ``y_true`` (same shape)."""
    return {
        "pearson_r": pearson_r(y_true, y_pred),
        "r2": r2_score(y_true, y_pred),
        "rmse": rmse(y_true, y_pred),
    }


def _pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = (np.asarray(v, dtype=np.float64) for v in (y_true, y_pred))
    if a.shape != b.shape:
        raise ValueError(f"y_true {a.shape} and y_pred {b.shape} must have the same shape")
    return a.ravel(), b.ravel()


def _labels(y: np.ndarray, n_classes: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D array of integer class indices, got {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(
            f"{name} holds class index {int(y.min() if y.min() < 0 else y.max())} outside "
            f"[0, {n_classes}); map labels to indices 0..n_classes-1"
        )
    return y.astype(np.int64)
