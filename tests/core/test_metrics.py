"""Screening metrics against values computed independently (brute force, textbook figures)."""
import itertools

import numpy as np
import pytest

from dcx.core import metrics


def _brute_auc(y, p):
    pos, neg = p[y == 1], p[y == 0]
    wins = sum((a > b) + 0.5 * (a == b) for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_matches_the_mann_whitney_count_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.round(rng.random(200) * 0.5 + 0.3 * y, 2)  # rounding makes ties
    assert metrics.roc_auc(y, p) == pytest.approx(_brute_auc(y, p), abs=1e-12)


def test_auc_is_nan_with_one_class_only():
    assert np.isnan(metrics.roc_auc(np.ones(4), np.linspace(0, 1, 4)))


def test_wilson_interval_textbook_value():
    low, high = metrics.wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)


def test_threshold_for_sensitivity_is_the_highest_reaching_the_target():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    p = rng.random(300) * 0.6 + 0.4 * y
    t = metrics.threshold_for_sensitivity(y, p, 0.98)
    assert metrics.operating_point(y, p, t)["sensitivity"] >= 0.98
    higher_positive_scores = np.sort(p[(y == 1) & (p > t)])
    assert metrics.operating_point(y, p, higher_positive_scores[0] + 1e-12)["sensitivity"] < 0.98
    assert not np.any(p == t), "the threshold sits between scores, never on one"


def test_operating_point_uses_p_at_least_threshold():
    point = metrics.operating_point(np.array([1, 1, 0, 0]), np.array([0.5, 0.2, 0.5, 0.1]), 0.5)
    assert (point["tp"], point["fn"], point["fp"], point["tn"]) == (1, 1, 1, 1)


def test_average_precision_by_hand():
    y, p = np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1])
    # ranks: 1 (P, precision 1), 2 (N), 3 (P, precision 2/3): AP = (1 + 2/3) / 2
    assert metrics.average_precision(y, p) == pytest.approx((1 + 2 / 3) / 2)


def test_youden_threshold_separates_separable_scores():
    y, p = np.array([0, 0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.6, 0.9])
    t = metrics.threshold_youden(y, p)
    assert 0.3 < t <= 0.6
    point = metrics.operating_point(y, p, t)
    assert point["sensitivity"] == 1.0 and point["specificity"] == 1.0
