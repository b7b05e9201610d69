"""The export gates on the out-of-distribution score: an image marked OOD gets no screening flag,
so OOD flags that move are screening decisions that move."""
from __future__ import annotations

import numpy as np
import torch

from dcx.core.card import ModelCard
from dcx.export import verify
from dcx.train.data import Sample

CARD = ModelCard(arch="resnet18", classes=["covid", "normal"], positive="covid", input_size=8, threshold=0.5,
                 ood={"threshold": 1.0})
N = 200


def _batches():
    rng = np.random.default_rng(0)
    labels = ["covid" if i % 2 else "normal" for i in range(N)]
    images = torch.from_numpy(rng.random((N, 1, 8, 8), dtype=np.float32))
    return [(images, [Sample(f"{i}.png", label) for i, label in enumerate(labels)])]


def _runner(ood_gain: float):
    """Probabilities from the mean pixel; OOD scores spread around the threshold, times ``ood_gain``."""
    def run(images):
        p = images.mean(dim=(1, 2, 3)).numpy().astype(np.float32)
        ood = np.linspace(0.2, 1.8, len(images), dtype=np.float32) * ood_gain
        return np.stack([p, 1 - p], 1), np.zeros((len(images), 2, 2), np.float32), ood
    return run


def test_ood_scores_that_move_fail_the_export_gates():
    report = verify.accuracy(_runner(1.0), _runner(1.5), CARD, _batches())
    ood = report["ood_agreement"]
    assert ood["files"] == N and ood["flag_agreement"] < 0.99 and abs(ood["mean_rel_delta"] - 0.5) < 1e-6
    problems = verify.accuracy_problems(report)
    assert len(problems) == 1 and problems[0].startswith("out-of-distribution scores moved 50% on average")
    assert "OOD flags agree" in verify.describe(report)


def test_a_few_ood_flags_at_the_threshold_do_not_fail_it():
    """The OOD threshold is a quantile of the validation scores themselves: an image on it flips
    with any rounding, so flag agreement is reported, the mean score change gated."""
    report = verify.accuracy(_runner(1.0), _runner(1.05), CARD, _batches())
    assert report["ood_agreement"]["flag_agreement"] < 1.0 and verify.accuracy_problems(report) == []


def test_unchanged_ood_scores_pass_and_models_without_them_are_not_judged_on_them():
    report = verify.accuracy(_runner(1.0), _runner(1.0), CARD, _batches())
    assert report["ood_agreement"]["flag_agreement"] == 1.0 and verify.accuracy_problems(report) == []
    without = ModelCard(**{**CARD.to_dict(), "ood": {}})
    assert "ood_agreement" not in verify.accuracy(_runner(1.0), _runner(1.5), without, _batches())


SCORES = np.array([0.05, 0.1, 0.2, 0.3, 0.45, 0.5004, 0.6, 0.7, 0.8, 0.9], dtype=np.float32)  # last 5: covid


def _shifted_runner(shift: float):
    def run(images):
        p = SCORES[:len(images)] + np.float32(shift)
        return np.stack([p, 1 - p], 1), np.zeros((len(images), 2, 2), np.float32), None
    return run


def test_a_refusal_says_how_near_the_threshold_the_changed_decisions_had_scored():
    """With few images the one the threshold was fitted beside flips first: the refusal says so."""
    batch = [(torch.zeros((len(SCORES), 1, 8, 8)), [Sample(f"{i}.png", "covid" if i >= 5 else "normal")
                                                    for i in range(len(SCORES))])]
    card = ModelCard(**{**CARD.to_dict(), "ood": {}})
    problems = verify.accuracy_problems(verify.accuracy(_shifted_runner(0.0), _shifted_runner(-0.002), card, batch))
    assert len(problems) == 3 and problems[0].startswith("sensitivity 0.8000 vs 1.0000")
    assert problems[-1] == ("the changed decision had scored 0.0004 from the threshold, and 1 of 10 images score "
                            "within the largest change (0.0020) of it")
    assert verify.accuracy_problems(verify.accuracy(_shifted_runner(0.0), _shifted_runner(0.0), card, batch)) == []
