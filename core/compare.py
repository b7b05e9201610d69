"""Reference vs candidate: does the candidate make the screening decisions the reference makes?

One vocabulary for every comparison dcx makes (export verification, ``dcx-bench parity``, the
dcx-vs-peer check of ``dcx-bench throughput``). Both sides are positive-class probabilities
per image, NaN where that side could not score the image, each with its own threshold
(``p >= threshold`` is flagged, as everywhere in dcx):

- :func:`delta_p`: max and mean |delta p| over the images both sides scored;
- :func:`agreement`: the share of images flagged alike (an image only one side scored counts
  as a disagreement), plus :func:`delta_p`;
- :func:`margins`: how near the threshold the changed decisions lay, and how many images lie
  as near as the largest score change (why a small validation set's gate fails, not a gate);
- :func:`screening`: sensitivity, specificity, accuracy, AUC of one side at its threshold;
- :func:`deltas`: candidate minus reference for those metrics (None where not measurable);
- :func:`gates`: the limits a comparison must meet, each with its value and verdict.
"""
from __future__ import annotations

import math

import numpy as np

from . import metrics

#: Metrics compared by :func:`deltas`.
SCREENING_METRICS = ("sensitivity", "specificity", "auc", "accuracy")


def delta_p(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Max and mean |candidate - reference| where both are numbers (NaN when none is)."""
    reference, candidate = np.asarray(reference, dtype=float), np.asarray(candidate, dtype=float)
    both = ~np.isnan(reference) & ~np.isnan(candidate)
    d = np.abs(reference[both] - candidate[both])
    return {"max_abs_delta_p": float(d.max()) if d.size else math.nan,
            "mean_abs_delta_p": float(d.mean()) if d.size else math.nan}


def agreement(reference: np.ndarray, reference_threshold: float, candidate: np.ndarray,
              candidate_threshold: float) -> dict:
    """Same flag on the same image, over every image either side scored."""
    reference, candidate = np.asarray(reference, dtype=float), np.asarray(candidate, dtype=float)
    either = ~np.isnan(reference) | ~np.isnan(candidate)
    same = ((reference >= reference_threshold) == (candidate >= candidate_threshold))
    same &= ~np.isnan(reference) & ~np.isnan(candidate)
    n = int(either.sum())
    return {"files": n, "flag_agreement": float(same[either].mean()) if n else math.nan,
            "disagreements": int(n - same[either].sum()), **delta_p(reference, candidate)}


def margins(reference: np.ndarray, candidate: np.ndarray, threshold: float) -> dict:
    """Distance of the reference's score from ``threshold`` for each decision the candidate
    changed, and the images whose reference score lies no farther from it than the largest
    |delta p|: the decisions any change of that size could flip. A threshold fitted on the same
    images sits next to one of them by construction."""
    reference, candidate = np.asarray(reference, dtype=float), np.asarray(candidate, dtype=float)
    both = ~np.isnan(reference) & ~np.isnan(candidate)
    gap = np.abs(reference[both] - threshold)
    changed = (reference[both] >= threshold) != (candidate[both] >= threshold)
    largest = delta_p(reference, candidate)["max_abs_delta_p"]  # NaN when nothing to compare: none within
    return {"changed": sorted(float(g) for g in gap[changed]), "within_largest_delta": int((gap <= largest).sum()),
            "files": int(both.sum())}


def screening(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    """One side's screening metrics at its threshold; NaN where not measurable (no positives)."""
    op = metrics.operating_point(y, p, threshold)
    both_classes = 0 < np.sum(y) < len(y)
    return {"threshold": threshold, "sensitivity": op["sensitivity"], "sensitivity_ci95": op["sensitivity_ci95"],
            "specificity": op["specificity"], "specificity_ci95": op["specificity_ci95"],
            "accuracy": op["accuracy"], "auc": metrics.roc_auc(y, p) if both_classes else math.nan,
            "confusion": {k: op[k] for k in ("tp", "fn", "tn", "fp")}}


def deltas(reference: dict, candidate: dict) -> dict:
    """candidate - reference for each of :data:`SCREENING_METRICS`; None where either is NaN."""
    out = {}
    for key in SCREENING_METRICS:
        a, b = candidate[key], reference[key]
        out[key] = None if a is None or b is None or math.isnan(a) or math.isnan(b) else float(a - b)
    return out


#: Slack for float rounding at a gate's limit: differences of proportions carry it (2 of 200 is
#: 0.51 - 0.50 = 0.010000000000000009, which a 1-point limit must pass), and no count of images
#: moves a proportion by this little.
ROUNDING = 1e-9


def gates(delta: dict, agree: dict, *, tolerance: float, min_agreement: float | None = None,
          max_delta_p: float | None = None, metrics_gated: tuple[str, ...] = ("sensitivity", "specificity")) -> list[dict]:
    """Each limit with its value and whether it passed; an unmeasurable value (NaN/None) never passes."""
    out = [{"name": f"|delta {key}|", "value": _abs(delta[key]), "limit": tolerance, "at_most": True}
           for key in metrics_gated]
    if min_agreement is not None:
        out.append({"name": "flag agreement", "value": agree["flag_agreement"], "limit": min_agreement,
                    "at_most": False})
    if max_delta_p is not None:
        out.append({"name": "max |delta p|", "value": agree["max_abs_delta_p"], "limit": max_delta_p,
                    "at_most": True})
    for gate in out:
        value, limit = gate["value"], gate["limit"]
        measurable = not math.isnan(value)
        at_most = gate.pop("at_most")
        gate["passed"] = measurable and (value <= limit + ROUNDING if at_most else value >= limit - ROUNDING)
    return out


def _abs(value: float | None) -> float:
    return math.nan if value is None else abs(value)
