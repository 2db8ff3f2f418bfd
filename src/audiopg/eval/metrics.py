"""Evaluation metrics: accuracy, average precision / macro mAP, R², the score of a task, fold summaries.

Macro mAP leaves out classes without a positive example (docs/evaluation.md, "Metrics").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from audiopg.eval.datasets.base import MULTI, REGRESSION

__all__ = [
    "accuracy",
    "average_precision",
    "mean_average_precision",
    "r2_score",
    "median_absolute_error",
    "mean_std",
    "confusion_matrix",
    "task_score",
    "FoldResult",
    "ModelResult",
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
    """Non-interpolated average precision of one class; NaN when ``y_true`` has no positive.

    scikit-learn's definition ``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct score
    thresholds (tied scores form one threshold).
    """
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
    A class without positives has no AP; counting it as 0 (scikit-learn's macro
    average, with a warning) would punish a model for the test set's make-up.
    With every class present this equals ``average_precision_score(y_true,
    scores, average="macro")``.
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


def task_score(task_type: str, y_true: np.ndarray, output: np.ndarray) -> tuple[float, dict, np.ndarray | None]:
    """(primary score, extra metrics, predictions kept for the report) of one evaluated set.

    ``output``: class scores (N, C) for a multi-label task (macro mAP), predicted
    classes (N,) for a single-label task (accuracy), predicted values (N,) for a
    regression (R², with the median absolute error).
    """
    if task_type == MULTI:
        m, _, n_eval = mean_average_precision(y_true, output)
        return m, {"classes_evaluated": n_eval}, None
    if task_type == REGRESSION:
        return r2_score(y_true, output), {"median_abs_error": median_absolute_error(y_true, output)}, output
    return accuracy(y_true, output), {}, output


# ----------------------------------------------------------------------------- fold summaries
@dataclass
class FoldResult:
    """One outer split: the score (accuracy, mAP or R²), extra metrics and the chosen regularization."""

    split: str
    n_train: int
    n_test: int
    score: float
    param: float  # chosen C (classification) or alpha (regression); NaN for fine-tuning
    n_val: int = 0
    extra: dict = field(default_factory=dict)
    y_true: np.ndarray | None = None
    y_pred: np.ndarray | None = None

    def to_dict(self) -> dict:
        return {"split": self.split, "n_train": self.n_train, "n_val": self.n_val, "n_test": self.n_test,
                "score": self.score, "param": self.param, **self.extra}


@dataclass
class ModelResult:
    """Every split of one model: mean and std over splits, summed confusion matrix."""

    name: str
    description: str
    metric: str
    folds: list[FoldResult]
    notes: list[str] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return mean_std([f.score for f in self.folds])[0]

    @property
    def std(self) -> float:
        return mean_std([f.score for f in self.folds])[1]

    def confusion(self, num_classes: int) -> np.ndarray | None:
        if not self.folds or any(f.y_pred is None or f.y_true is None or f.y_true.ndim != 1 for f in self.folds):
            return None
        return confusion_matrix(np.concatenate([f.y_true for f in self.folds]),
                                np.concatenate([f.y_pred for f in self.folds]), num_classes)

    def to_dict(self) -> dict:
        d = {"description": self.description, "metric": self.metric, "mean": self.mean, "std": self.std,
             "folds": [f.to_dict() for f in self.folds], "notes": list(self.notes)}
        extra_keys = sorted({k for f in self.folds for k in f.extra if isinstance(f.extra[k], (int, float))})
        for k in extra_keys:
            m, s = mean_std([f.extra.get(k) for f in self.folds])
            d[f"{k}_mean"], d[f"{k}_std"] = m, s
        return d
