"""Evaluation metrics: accuracy, average precision / macro mAP, regression scores, fold summaries.

Macro mAP and classes without positives
---------------------------------------
Average precision is undefined for a class with no positive example in the
evaluated set (there is no recall to speak of).  :func:`mean_average_precision`
leaves such classes out of the macro mean -- their AP is reported as NaN and
the number of classes averaged is returned -- rather than counting them as 0
(which would punish a model for the test set's composition; scikit-learn's
``average_precision_score(..., average="macro")`` does this, with a warning)
or 1.  With every class present, the result equals ``sklearn.metrics.average_precision_score(
y_true, scores, average="macro")``.

:func:`average_precision` itself equals scikit-learn's definition
``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds (tied
scores form one threshold), not an interpolated variant.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = [
    "accuracy",
    "average_precision",
    "mean_average_precision",
    "r2_score",
    "median_absolute_error",
    "mean_std",
    "confusion_matrix",
]


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Fraction of exact matches (0..1)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    if y_true.size == 0:
        raise ValueError("accuracy of an empty set")
    return float(np.mean(y_true == y_pred))


def average_precision(y_true: Sequence[int], scores: Sequence[float]) -> float:
    """Non-interpolated average precision of one class; NaN when ``y_true`` has no positive."""
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true {y.shape} and scores {s.shape} differ in shape")
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    # the last index of every run of tied scores is one threshold
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(y_true: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray, int]:
    """Macro mAP over the classes that have at least one positive.

    ``y_true``: (N, C) 0/1; ``scores``: (N, C).  Returns ``(mAP, per-class AP
    with NaN for classes without positives, number of classes averaged)``.
    """
    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != scores.shape:
        raise ValueError(f"y_true {y_true.shape} and scores {scores.shape} must both be (N, C)")
    ap = np.array([average_precision(y_true[:, c], scores[:, c]) for c in range(y_true.shape[1])])
    valid = ~np.isnan(ap)
    if not valid.any():
        raise ValueError("no class has a positive example: mAP is undefined")
    return float(ap[valid].mean()), ap, int(valid.sum())


def r2_score(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    """Coefficient of determination (1 - SS_res / SS_tot); NaN for a constant target."""
    y, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot == 0:
        return float("nan")
    return 1.0 - float(np.sum((y - p) ** 2)) / ss_tot


def median_absolute_error(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    return float(np.median(np.abs(np.asarray(y_true, dtype=np.float64) - np.asarray(y_pred, dtype=np.float64))))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and (population, ddof=0) standard deviation over folds, ignoring NaN; std 0 for one value."""
    keep = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    v = np.asarray(keep, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std())


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """(C, C) counts; row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm
