"""Verification, part of every export: does the artefact still say what the PyTorch model says?

Two checks, both against the FP32 PyTorch model as reference:

- **parity** on sample images: max |delta p| over all class probabilities and argmax
  agreement. An FP32 graph must match within :data:`FP32_PROB_TOLERANCE` or the export fails.
- **accuracy** over the validation split (or ``--eval DATA``), for FP16/INT8 artefacts and
  TensorRT plans: sensitivity and specificity at the card's threshold, ROC AUC, and the share
  of images whose screening decision is unchanged. A delta beyond :data:`ACCURACY_TOLERANCE`
  (1 percentage point) is a warning with the numbers, an error under ``--strict``.

The artefact runs through the engine's own backends (:func:`dcx.engine.backends.open_backend`),
so what is verified is what the engine serves.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np
import torch

from dcx.core import metrics
from dcx.core.card import ModelCard
from dcx.core.errors import DcxError
from dcx.core.models import DcxNet

FP32_PROB_TOLERANCE = 1e-4
ACCURACY_TOLERANCE = 0.01

Runner = Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]]


def pytorch_runner(model: DcxNet, card: ModelCard) -> Runner:
    """The reference: the FP32 model in eval mode, on the CPU."""
    model.eval()

    def run(images: torch.Tensor):
        with torch.inference_mode():
            probs, cam = model.scores_and_cam(images, card.positive_index)
        return probs.numpy(), cam.numpy()

    return run


def sample_images(card: ModelCard, n: int = 8, *, seed: int = 0) -> torch.Tensor:
    """Seeded unit-gray stand-ins when no real image is at hand (a smooth field plus noise)."""
    g = torch.Generator().manual_seed(seed)
    size = card.input_size
    ramp = torch.linspace(0, 1, size).view(1, 1, 1, size)
    return (0.5 * ramp + 0.5 * torch.rand(n, 1, size, size, generator=g)).clamp(0, 1)


def parity(reference: Runner, candidate: Runner, images: torch.Tensor) -> dict:
    """max |delta p| and argmax agreement of ``candidate`` vs ``reference`` on ``images``."""
    ref, _ = reference(images)
    got, _ = candidate(images)
    return {"n": int(len(images)), "max_abs_dprob": float(np.max(np.abs(ref - got))),
            "argmax_agreement": float(np.mean(ref.argmax(1) == got.argmax(1)))}


def check_fp32_parity(report: dict, label: str) -> None:
    """An FP32 artefact is the same function as the model: outside tolerance is a failed export."""
    if not report["max_abs_dprob"] <= FP32_PROB_TOLERANCE:
        raise DcxError(f"{label} does not match PyTorch: max |delta p| {report['max_abs_dprob']:.2e} > "
                       f"{FP32_PROB_TOLERANCE:.0e} (argmax agreement {report['argmax_agreement']:.1%} "
                       f"on {report['n']} images)")


def accuracy(reference: Runner, candidate: Runner, card: ModelCard,
             batches: Iterable[tuple[torch.Tensor, list]]) -> dict:
    """Screening metrics of candidate vs reference over labelled batches (images, samples)."""
    ref_p, got_p, labels = [], [], []
    for images, samples in batches:
        ref_p.append(reference(images)[0])
        got_p.append(candidate(images)[0])
        labels += [s.label == card.positive for s in samples]
    if not labels:
        raise DcxError("no evaluation image could be read")
    ref, got, y = np.concatenate(ref_p), np.concatenate(got_p), np.asarray(labels)
    k, t = card.positive_index, card.threshold
    summary = {name: _screening(y, p[:, k], t) for name, p in (("reference", ref), ("artefact", got))}
    report = {"n": int(len(y)), "positives": int(y.sum()), "threshold": t, **summary}
    for key in ("sensitivity", "specificity", "auc"):
        report[f"delta_{key}"] = _delta(summary["artefact"][key], summary["reference"][key])
    report["decision_agreement"] = float(np.mean((ref[:, k] >= t) == (got[:, k] >= t)))
    report["argmax_agreement"] = float(np.mean(ref.argmax(1) == got.argmax(1)))
    report["max_abs_dprob"] = float(np.max(np.abs(ref - got)))
    return report


def _screening(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    op = metrics.operating_point(y, p, threshold)
    both_classes = 0 < y.sum() < len(y)
    return {"sensitivity": _finite(op["sensitivity"]), "specificity": _finite(op["specificity"]),
            "auc": _finite(metrics.roc_auc(y, p)) if both_classes else None}


def _finite(x: float) -> float | None:
    """NaN (no positives, say) becomes None: JSON has no NaN, and 'not measurable' is the truth."""
    return None if x is None or math.isnan(x) else float(x)


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def accuracy_problems(report: dict) -> list[str]:
    """Human sentences for every delta beyond :data:`ACCURACY_TOLERANCE` (empty when fine)."""
    problems = []
    for key in ("sensitivity", "specificity", "auc"):
        delta = report[f"delta_{key}"]
        if delta is not None and abs(delta) > ACCURACY_TOLERANCE:
            problems.append(f"{key} {report['artefact'][key]:.4f} vs PyTorch {report['reference'][key]:.4f} "
                            f"({100 * delta:+.2f} points)")
    return problems


def describe(report: dict) -> str:
    """One line for the terminal."""
    parts = [f"n={report['n']}"]
    for key in ("sensitivity", "specificity", "auc"):
        delta = report[f"delta_{key}"]
        parts.append(f"delta {key} " + ("n/a" if delta is None else f"{100 * delta:+.2f} pts"))
    parts.append(f"decisions agree {report['decision_agreement']:.1%}")
    parts.append(f"max |delta p| {report['max_abs_dprob']:.2e}")
    return ", ".join(parts)
