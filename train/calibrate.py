"""Recalibrate a model's operating threshold on a site's own labelled sample.

A model's threshold was chosen on its validation split; another hospital's scanners,
population and prevalence move the scores, so the same threshold can miss the target
sensitivity there. :func:`calibrate` chooses the threshold on the site's sample with the
same rules as training (:func:`dcx.train.metrics.threshold_for_sensitivity` or Youden's
index) and reports sensitivity and specificity there with 95% Wilson score intervals, next to
what the card's own threshold gives on the same images.

The intervals are in-sample: the threshold was chosen on the images they describe, so they
lean optimistic, the more so the smaller the sample. The lower bound of the sensitivity
interval is the figure to hold against a target.
"""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np

from dcx.core import metrics
from dcx.core.card import ModelCard, dcx_version
from dcx.core.errors import DcxError
from dcx.core.site import SiteThreshold

INTERVAL = "95% Wilson score interval"


def calibrate(card: ModelCard, labels: list[str], p_positive, *, target_sensitivity: float | None = None,
              youden: bool = False, source: dict | None = None) -> SiteThreshold:
    """The site threshold for ``card``'s model from labelled scores (``labels`` are class names).

    Exactly one rule: ``target_sensitivity`` in (0, 1] or ``youden``. ``source`` (the data's
    path, fingerprint, unreadable count) is recorded in the calibration record as given.
    """
    if (target_sensitivity is None) == (not youden):
        raise DcxError("choose one rule: a target sensitivity or Youden's index")
    y = np.asarray([label == card.positive for label in labels], dtype=bool)
    p = np.asarray(p_positive, dtype=np.float64)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        missing = card.positive if positives == 0 else f"non-{card.positive}"
        raise DcxError(f"the site sample has no {missing} image ({len(y)} readable in all); "
                       "a threshold needs both")
    if youden:
        threshold, policy = metrics.threshold_youden(y, p), "youden on the site sample"
    else:
        if not 0 < target_sensitivity <= 1:
            raise DcxError(f"--target-sensitivity {target_sensitivity} must be in (0, 1]")
        threshold = metrics.threshold_for_sensitivity(y, p, target_sensitivity)
        policy = f"sensitivity >= {target_sensitivity:g} on the site sample"
    record = {
        "n": len(y), "positives": positives, "negatives": negatives, "positive_class": card.positive,
        "interval": INTERVAL + " (in-sample: the threshold was chosen on these images)",
        "auc": metrics.roc_auc(y, p),
        "site_threshold": metrics.operating_point(y, p, threshold),
        "card_threshold": {**metrics.operating_point(y, p, card.threshold), "policy": card.threshold_policy},
        "source": source or {},
        "created": datetime.now(tz=timezone.utc).isoformat(timespec="seconds"),
        "dcx_version": dcx_version(),
    }
    return SiteThreshold(card.model_id, float(threshold), policy, record)
