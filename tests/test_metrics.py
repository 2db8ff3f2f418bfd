"""Metrics against scikit-learn on known inputs."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from audiopg.eval.metrics import (
    accuracy,
    average_precision,
    confusion_matrix,
    mean_average_precision,
    mean_std,
    median_absolute_error,
    r2_score,
)


def test_average_precision_hand_computed():
    # ranking: pos, neg, pos, neg -> precision at the positives 1 and 2/3 -> AP = (1 + 2/3) / 2
    y = [1, 0, 1, 0]
    s = [0.9, 0.8, 0.7, 0.1]
    assert average_precision(y, s) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([0, 1], [0.9, 0.1]) == pytest.approx(0.5)
    assert average_precision([1, 1], [0.3, 0.2]) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(8))
def test_average_precision_matches_sklearn_including_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    y = rng.integers(0, 2, n)
    y[0] = 1
    s = rng.integers(0, 4, n).astype(float) if seed % 2 else rng.random(n)  # odd seeds: many ties
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_macro_map_equals_sklearn_when_every_class_has_positives():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (80, 6))
    y[0] = 1
    s = rng.random((80, 6)) + 0.5 * y
    m, ap, n = mean_average_precision(y, s)
    assert n == 6 and not np.isnan(ap).any()
    assert m == pytest.approx(average_precision_score(y, s, average="macro"), abs=1e-12)
    np.testing.assert_allclose(ap, average_precision_score(y, s, average=None), atol=1e-12)


def test_macro_map_leaves_out_classes_without_positives():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (50, 5))
    y[0] = 1
    y[:, 2] = 0  # class 2 has no positive in the evaluated set
    s = rng.random((50, 5))
    m, ap, n = mean_average_precision(y, s)
    assert n == 4 and math.isnan(ap[2])
    keep = [0, 1, 3, 4]
    assert m == pytest.approx(average_precision_score(y[:, keep], s[:, keep], average="macro"), abs=1e-12)
    # scikit-learn would count the empty class as AP 0 (and warn); we do not
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = average_precision_score(y, s, average="macro")
    assert sk == pytest.approx(m * 4 / 5)
    with pytest.raises(ValueError, match="undefined"):
        mean_average_precision(np.zeros((3, 2)), np.ones((3, 2)))


def test_perfect_and_inverted_rankings():
    y = np.eye(4, dtype=int)
    assert mean_average_precision(y, y.astype(float))[0] == 1.0
    assert mean_average_precision(y, 1.0 - y)[0] == pytest.approx(0.25)


def test_accuracy_r2_medae_mean_std_confusion():
    assert accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    with pytest.raises(ValueError):
        accuracy([0, 1], [0])
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert r2_score(y, y) == 1.0
    assert r2_score(y, np.full(4, y.mean())) == 0.0
    assert median_absolute_error(y, y + [0, 1, 2, 10]) == 1.5
    m, s = mean_std([0.5, 0.7, float("nan")])
    assert m == pytest.approx(0.6) and s == pytest.approx(0.1)
    cm = confusion_matrix([0, 0, 1, 2], [0, 1, 1, 2], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
