"""dcx.core.compare: the one reference-vs-candidate vocabulary of export verification and benchmarks."""
from __future__ import annotations

import math

import numpy as np
import pytest

from dcx.core import compare


def test_an_image_only_one_side_scored_is_a_disagreement_and_not_a_delta():
    reference = np.array([0.1, 0.9, np.nan, 0.6])
    candidate = np.array([0.2, 0.8, 0.7, 0.4])
    agree = compare.agreement(reference, 0.5, candidate, 0.5)
    assert agree["files"] == 4 and agree["disagreements"] == 2 and agree["flag_agreement"] == 0.5
    assert agree["max_abs_delta_p"] == pytest.approx(0.2) and agree["mean_abs_delta_p"] == pytest.approx(0.4 / 3)


def test_each_side_flags_at_its_own_threshold():
    p = np.array([0.3, 0.45, 0.7])
    assert compare.agreement(p, 0.4, p, 0.5)["disagreements"] == 1


def test_margins_say_how_near_the_threshold_the_changed_decisions_scored():
    reference = np.array([0.5004, 0.505, 0.30, 0.90, np.nan])
    candidate = np.array([0.4990, 0.515, 0.29, 0.90, 0.70])  # only the first decision changes
    margins = compare.margins(reference, candidate, 0.5)
    assert margins["changed"] == [pytest.approx(0.0004)] and margins["files"] == 4
    assert margins["within_largest_delta"] == 2  # 0.5004 and 0.505 lie within the largest change, 0.01
    assert compare.margins(reference, reference, 0.5)["changed"] == []


def test_deltas_and_gates():
    y = np.array([1, 1, 0, 0])
    reference = compare.screening(y, np.array([0.9, 0.8, 0.2, 0.1]), 0.5)
    candidate = compare.screening(y, np.array([0.9, 0.4, 0.2, 0.1]), 0.5)
    delta = compare.deltas(reference, candidate)
    assert delta["sensitivity"] == pytest.approx(-0.5) and delta["specificity"] == 0.0
    agree = compare.agreement(np.array([0.9, 0.8, 0.2, 0.1]), 0.5, np.array([0.9, 0.4, 0.2, 0.1]), 0.5)
    verdicts = {g["name"]: g["passed"] for g in compare.gates(delta, agree, tolerance=0.01, min_agreement=0.7,
                                                                max_delta_p=0.5)}
    assert verdicts == {"|delta sensitivity|": False, "|delta specificity|": True, "flag agreement": True,
                        "max |delta p|": True}


def test_an_unmeasurable_metric_never_passes_a_gate():
    y = np.array([0, 0, 0])  # no positives: sensitivity is not measurable
    side = compare.screening(y, np.array([0.1, 0.2, 0.3]), 0.5)
    assert math.isnan(side["sensitivity"]) and math.isnan(side["auc"])
    delta = compare.deltas(side, side)
    assert delta["sensitivity"] is None and delta["specificity"] == 0.0
    agree = compare.agreement(np.array([0.1, 0.2, 0.3]), 0.5, np.array([0.1, 0.2, 0.3]), 0.5)
    gate = compare.gates(delta, agree, tolerance=0.01)[0]
    assert gate["name"] == "|delta sensitivity|" and gate["passed"] is False


@pytest.mark.parametrize("flipped, passed", [(2, True), (3, False)])
def test_a_delta_exactly_at_the_limit_passes_despite_float_rounding(flipped, passed):
    """2 of 200 negatives flipped is 1.00 point of specificity (0.51 - 0.50 = 0.010000000000000009
    in floats): a 1-point limit passes it; 3 of 200 (1.5 points) fails."""
    y = np.zeros(200, dtype=int)
    reference = np.r_[np.full(100, 0.9), np.full(100, 0.1)]
    candidate = reference.copy()
    candidate[:flipped] = 0.1
    delta = compare.deltas(compare.screening(y, reference, 0.5), compare.screening(y, candidate, 0.5))
    agree = compare.agreement(reference, 0.5, candidate, 0.5)
    if flipped == 2:
        assert abs(delta["specificity"]) > 0.01  # the rounding is real
    gate = compare.gates(delta, agree, tolerance=0.01, metrics_gated=("specificity",))[0]
    assert gate["passed"] is passed
