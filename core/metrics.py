"""Binary screening metrics for the positive class, numpy only.

One convention everywhere: an image is flagged positive when ``p >= threshold``
(the Deep-COVID code mixed ``>=`` and ``>``; dcx does not).
"""
from __future__ import annotations

import math

import numpy as np


def confusion(y_true: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    """Counts of the binary decision ``p >= threshold`` against ``y_true`` (1 = positive)."""
    y = np.asarray(y_true).astype(bool)
    flag = np.asarray(p) >= threshold
    return {"tp": int(np.sum(flag & y)), "fn": int(np.sum(~flag & y)),
            "tn": int(np.sum(~flag & ~y)), "fp": int(np.sum(flag & ~y))}


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion; (nan, nan) when n == 0."""
    if n == 0:
        return (math.nan, math.nan)
    phat = successes / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _ratio(a: int, b: int) -> float:
    return a / b if b else math.nan


def operating_point(y_true: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    """Sensitivity, specificity (with 95% CIs), PPV, NPV and accuracy at ``threshold``."""
    c = confusion(y_true, p, threshold)
    pos, neg = c["tp"] + c["fn"], c["tn"] + c["fp"]
    return {
        "threshold": float(threshold),
        **c,
        "sensitivity": _ratio(c["tp"], pos),
        "sensitivity_ci95": wilson_interval(c["tp"], pos),
        "specificity": _ratio(c["tn"], neg),
        "specificity_ci95": wilson_interval(c["tn"], neg),
        "ppv": _ratio(c["tp"], c["tp"] + c["fp"]),
        "npv": _ratio(c["tn"], c["tn"] + c["fn"]),
        "accuracy": _ratio(c["tp"] + c["tn"], pos + neg),
    }


def roc_curve(y_true: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), thresholds descending, starting at (0, 0) with +inf."""
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(p, dtype=np.float64)
    order = np.argsort(-p, kind="mergesort")
    p, y = p[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(p))[0], len(p) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    npos, nneg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return (np.r_[0.0, fps / nneg], np.r_[0.0, tps / npos], np.r_[np.inf, p[distinct]])


def roc_auc(y_true: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half); nan with one class only."""
    y = np.asarray(y_true).astype(bool)
    if y.all() or not y.any():
        return math.nan
    fpr, tpr, _ = roc_curve(y, p)
    return float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))


def precision_recall_curve(y_true: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) over descending distinct thresholds."""
    y = np.asarray(y_true).astype(bool)
    fpr, tpr, thr = roc_curve(y, p)
    tp = tpr[1:] * max(int(y.sum()), 1)
    fp = fpr[1:] * max(int((~y).sum()), 1)
    precision = tp / np.maximum(tp + fp, 1e-12)
    return precision, tpr[1:], thr[1:]


def average_precision(y_true: np.ndarray, p: np.ndarray) -> float:
    """Area under the precision-recall curve (step-wise, as scikit-learn's average_precision)."""
    precision, recall, _ = precision_recall_curve(y_true, p)
    if len(recall) == 0 or not np.asarray(y_true).astype(bool).any():
        return math.nan
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def threshold_for_sensitivity(y_true: np.ndarray, p: np.ndarray, target: float) -> float:
    """The highest operating point whose sensitivity (``p >= t``) is at least ``target``
    (threshold placed between that score and the next lower one, see ``_with_margin``)."""
    pos = np.sort(np.asarray(p, dtype=np.float64)[np.asarray(y_true).astype(bool)])[::-1]
    if len(pos) == 0:
        raise ValueError("no positive samples to choose a threshold from")
    k = max(1, math.ceil(target * len(pos) - 1e-9))
    return _with_margin(float(pos[min(k, len(pos)) - 1]), p)


def threshold_youden(y_true: np.ndarray, p: np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity - 1."""
    fpr, tpr, thr = roc_curve(y_true, p)
    best = int(np.argmax(tpr[1:] - fpr[1:])) + 1
    return _with_margin(float(thr[best]), p)


def _with_margin(t: float, p: np.ndarray) -> float:
    """Move a threshold that equals a score midway down to the next lower score.

    The decisions on ``p`` stay the same, but the boundary image no longer sits exactly on the
    threshold, where any re-computation (another backend, FP16, INT8) flips it at random.
    """
    below = np.asarray(p, dtype=np.float64)
    below = below[below < t]
    return float((t + (below.max() if below.size else 0.0)) / 2)


def threshold_sweep(y_true: np.ndarray, p: np.ndarray, thresholds=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)) -> list[dict]:
    """Sensitivity/specificity at a list of thresholds, as the Deep-COVID paper's table."""
    return [operating_point(y_true, p, t) for t in thresholds]
