"""Score distributions and how far they move: fixed-bin histograms of ``p_positive``, PSI, KS.

One histogram layout everywhere: ``BINS`` equal bins over [0, 1] (a score of exactly 1.0
falls in the last). Training stores the validation split's histogram in the model card
(``metrics.validation.score_histogram``), every run summary stores the histogram of the
scores it produced, so any two can be compared without the scores themselves.

Statistics (both on the stored histograms):

- **PSI**, population stability index, on ``PSI_BINS`` coarse bins (tenths of probability):
  ``sum((a - e) * ln(a / e))`` over bin shares, with empty bins floored at ``PSI_FLOOR``. The
  usual reading: below 0.1 stable, 0.1 to 0.2 moderate shift, above ``PSI_WARN`` = 0.2 a
  shift to act on. Small samples make PSI large by chance alone: between two samples of one
  distribution, of sizes n and m, PSI is about ``(1/n + 1/m) * chi2(PSI_BINS - 1)``, so
  :func:`psi_by_chance` gives its 99th percentile, and a shift counts only above both.
- **KS**, the largest gap between the two cumulative distributions, read at the ``BINS`` bin
  edges (so at most one bin's mass below the exact two-sample KS statistic).
"""
from __future__ import annotations

import math

import numpy as np

BINS = 100
PSI_BINS = 10
PSI_FLOOR = 1e-4
PSI_WARN = 0.2
#: 99th percentile of chi-square with PSI_BINS - 1 = 9 degrees of freedom.
CHI2_99_9DF = 21.666


def score_histogram(scores) -> list[int]:
    """Counts of ``scores`` (probabilities; None and NaN left out) in ``BINS`` equal bins over [0, 1]."""
    p = np.asarray([s for s in scores if s is not None], dtype=np.float64)
    p = p[np.isfinite(p)]
    index = np.clip((p * BINS).astype(np.int64), 0, BINS - 1)
    return np.bincount(index, minlength=BINS).tolist()


def add_score(counts: list[int], score) -> None:
    """Count one score into a histogram in place (the engine counts row by row)."""
    if score is not None and math.isfinite(score):
        counts[min(BINS - 1, max(0, int(score * BINS)))] += 1


def psi(expected: list[int], actual: list[int]) -> float:
    """Population stability index of ``actual`` against ``expected`` (nan when either is empty)."""
    e, a = _coarse(expected), _coarse(actual)
    if e is None or a is None:
        return math.nan
    e, a = np.maximum(e, PSI_FLOOR), np.maximum(a, PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_by_chance(n_expected: int, n_actual: int) -> float:
    """The PSI that two samples of the same distribution exceed only 1% of the time (approximately)."""
    if n_expected <= 0 or n_actual <= 0:
        return math.inf
    return CHI2_99_9DF * (1 / n_expected + 1 / n_actual)


def drifted(expected: list[int], actual: list[int]) -> bool:
    """PSI above ``PSI_WARN`` and above what the sample sizes explain by chance."""
    value = psi(expected, actual)
    return math.isfinite(value) and value > max(PSI_WARN, psi_by_chance(sum(expected), sum(actual)))


def ks(expected: list[int], actual: list[int]) -> float:
    """Largest gap between the cumulative shares of two histograms (nan when either is empty)."""
    e, a = _shares(expected), _shares(actual)
    if e is None or a is None:
        return math.nan
    return float(np.max(np.abs(np.cumsum(e) - np.cumsum(a))))


def _shares(counts) -> np.ndarray | None:
    c = np.asarray(counts, dtype=np.float64)
    if c.shape != (BINS,):
        raise ValueError(f"a score histogram has {BINS} bins, got {c.shape}")
    total = c.sum()
    return c / total if total > 0 else None


def _coarse(counts) -> np.ndarray | None:
    shares = _shares(counts)
    return None if shares is None else shares.reshape(PSI_BINS, BINS // PSI_BINS).sum(axis=1)
