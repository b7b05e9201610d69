"""Verification, part of every export: does the artefact still say what the PyTorch model says?

Two checks, both against the FP32 PyTorch model as reference:

- **parity** on sample images: max |delta p| over all class probabilities and argmax
  agreement. An FP32 graph must match within :data:`FP32_PROB_TOLERANCE` or the export fails.
- **accuracy** over the validation split (or ``--eval DATA``), for FP16/INT8 artefacts and
  TensorRT plans: sensitivity and specificity at the card's threshold, ROC AUC, and the share
  of images whose screening decision is unchanged. Sensitivity or specificity moved beyond
  :data:`ACCURACY_TOLERANCE` (1 percentage point), or decisions agreeing on fewer than
  :data:`MIN_DECISION_AGREEMENT` of the images, fails the export unless ``--accept-accuracy-loss``.
  With an out-of-distribution score, its scores may move by at most :data:`MAX_OOD_REL_DELTA` on
  average: an image marked OOD gets no screening flag, so a shifted score changes screening
  decisions (a quantized OOD matrix product moved a real-data resnet18's validation scores by 169%;
  the shipped INT8 defaults move them 6-7%). Its flag agreement is reported,
  not gated: the OOD threshold is a quantile of these very validation scores, so on a small split
  one image sits on it and flips with any rounding.

The artefact runs through the engine's own backends (:func:`dcx.engine.backends.open_backend`),
so what is verified is what the engine serves; the comparison itself is :mod:`dcx.core.compare`.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch

from dcx.core import compare
from dcx.core.card import ModelCard
from dcx.core.errors import DcxError
from dcx.core.models import DcxNet

FP32_PROB_TOLERANCE = 1e-4
ACCURACY_TOLERANCE = 0.01
MIN_DECISION_AGREEMENT = 0.99
#: The screening metrics whose delta is held to :data:`ACCURACY_TOLERANCE` (AUC is reported only).
GATED = ("sensitivity", "specificity")
#: The largest mean relative change of the out-of-distribution score an fp16/int8 artefact may show.
MAX_OOD_REL_DELTA = 0.25

#: images -> (probs, cam, ood score or None), as :meth:`dcx.engine.backends.base.Backend.infer`.
Runner = Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray, np.ndarray | None]]


def pytorch_runner(model: DcxNet, card: ModelCard) -> Runner:
    """The reference: the FP32 model in eval mode, on the CPU."""
    model.eval()

    def run(images: torch.Tensor):
        with torch.inference_mode():
            outputs = [t.numpy() for t in model.graph_outputs(images, card.positive_index)]
        return outputs[0], outputs[1], outputs[2] if len(outputs) > 2 else None

    return run


def sample_images(card: ModelCard, n: int = 8, *, seed: int = 0) -> torch.Tensor:
    """Seeded unit-gray stand-ins when no real image is at hand (a smooth field plus noise)."""
    g = torch.Generator().manual_seed(seed)
    size = card.input_size
    ramp = torch.linspace(0, 1, size).view(1, 1, 1, size)
    return (0.5 * ramp + 0.5 * torch.rand(n, 1, size, size, generator=g)).clamp(0, 1)


def parity(reference: Runner, candidate: Runner, images: torch.Tensor) -> dict:
    """max |delta p| over every class probability, and argmax agreement, of ``candidate`` vs
    ``reference``; with an OOD score, its largest relative difference too."""
    ref, _, ref_ood = reference(images)
    got, _, got_ood = candidate(images)
    report = {"n": int(len(images)), **compare.delta_p(ref.ravel(), got.ravel()),
              "argmax_agreement": float(np.mean(ref.argmax(1) == got.argmax(1)))}
    if ref_ood is not None and got_ood is not None:
        report["max_rel_delta_ood"] = float(np.max(np.abs(got_ood - ref_ood) / np.maximum(np.abs(ref_ood), 1e-6)))
    return report


def check_fp32_parity(report: dict, label: str) -> None:
    """An FP32 artefact is the same function as the model: outside tolerance is a failed export."""
    if not report["max_abs_delta_p"] <= FP32_PROB_TOLERANCE:
        raise DcxError(f"{label} does not match PyTorch: max |delta p| {report['max_abs_delta_p']:.2e} > "
                       f"{FP32_PROB_TOLERANCE:.0e} (argmax agreement {report['argmax_agreement']:.1%} "
                       f"on {report['n']} images)")


def accuracy(reference: Runner, candidate: Runner, card: ModelCard,
             batches: Iterable[tuple[torch.Tensor, list]]) -> dict:
    """Screening metrics of candidate vs reference over labelled batches (images, samples)."""
    ref_p, got_p, ref_ood, got_ood, labels = [], [], [], [], []
    for images, samples in batches:
        ref_out, got_out = reference(images), candidate(images)
        ref_p.append(ref_out[0])
        got_p.append(got_out[0])
        if ref_out[2] is not None and got_out[2] is not None:
            ref_ood.append(ref_out[2])
            got_ood.append(got_out[2])
        labels += [s.label == card.positive for s in samples]
    if not labels:
        raise DcxError("no evaluation image could be read")
    ref, got, y = np.concatenate(ref_p), np.concatenate(got_p), np.asarray(labels)
    k, t = card.positive_index, card.threshold
    sides = {"reference": compare.screening(y, ref[:, k], t), "candidate": compare.screening(y, got[:, k], t)}
    report = {"n": int(len(y)), "positives": int(y.sum()), "threshold": t, **sides,
              "deltas": compare.deltas(sides["reference"], sides["candidate"]),
              "agreement": compare.agreement(ref[:, k], t, got[:, k], t),
              "margins": compare.margins(ref[:, k], got[:, k], t),
              "argmax_agreement": float(np.mean(ref.argmax(1) == got.argmax(1)))}
    if ref_ood and card.ood_threshold is not None:
        r, g, ood_t = np.concatenate(ref_ood), np.concatenate(got_ood), card.ood_threshold
        report["ood_agreement"] = {**compare.agreement(r, ood_t, g, ood_t),
                                   "mean_rel_delta": float(np.mean(np.abs(g - r) / np.maximum(np.abs(r), 1e-6)))}
    return report


def accuracy_problems(report: dict) -> list[str]:
    """Human phrases for every gate of :mod:`dcx.core.compare` the candidate fails (empty when fine):
    a measurable sensitivity/specificity delta beyond :data:`ACCURACY_TOLERANCE`, decision
    agreement under :data:`MIN_DECISION_AGREEMENT`; where those fail, one more phrase says how
    near the threshold the changed decisions had scored (:func:`dcx.core.compare.margins`)."""
    measurable = tuple(key for key in GATED if report["deltas"][key] is not None)
    failed = {g["name"] for g in compare.gates(report["deltas"], report["agreement"], tolerance=ACCURACY_TOLERANCE,
                                               min_agreement=MIN_DECISION_AGREEMENT, metrics_gated=measurable)
              if not g["passed"]}
    problems = [f"{key} {report['candidate'][key]:.4f} vs {report['reference'][key]:.4f} "
                f"({100 * report['deltas'][key]:+.2f} points, limit {100 * ACCURACY_TOLERANCE:g})"
                for key in measurable if f"|delta {key}|" in failed]
    if "flag agreement" in failed:
        agree = report["agreement"]
        problems.append(f"decisions agree on {agree['flag_agreement']:.1%} of {agree['files']} images "
                        f"(at least {MIN_DECISION_AGREEMENT:.0%} needed)")
    if problems and report["margins"]["changed"]:
        problems.append(_margin_phrase(report["margins"], report["agreement"]["max_abs_delta_p"]))
    ood = report.get("ood_agreement")
    if ood is not None and not ood["mean_rel_delta"] <= MAX_OOD_REL_DELTA:
        problems.append(f"out-of-distribution scores moved {ood['mean_rel_delta']:.0%} on average (at most "
                        f"{MAX_OOD_REL_DELTA:.0%}; {ood['flag_agreement']:.1%} of {ood['files']} OOD flags agree)")
    return problems


def _margin_phrase(margins: dict, largest: float) -> str:
    """Why decisions moved: with few images, the one the threshold was placed beside moves first."""
    changed = margins["changed"]
    which = "the changed decision had" if len(changed) == 1 else f"the {len(changed)} changed decisions had"
    return (f"{which} scored {'' if len(changed) == 1 else 'at most '}{max(changed):.4f} from the threshold, and "
            f"{margins['within_largest_delta']} of {margins['files']} images score within the largest change "
            f"({largest:.4f}) of it")


def describe(report: dict) -> str:
    """One line for the terminal."""
    parts = [f"n={report['n']}"]
    for key in (*GATED, "auc"):
        delta = report["deltas"][key]
        parts.append(f"delta {key} " + ("n/a" if delta is None else f"{100 * delta:+.2f} pts"))
    parts.append(f"decisions agree {report['agreement']['flag_agreement']:.1%}")
    parts.append(f"max |delta p| {report['agreement']['max_abs_delta_p']:.2e}")
    if "ood_agreement" in report:
        ood = report["ood_agreement"]
        parts.append(f"OOD scores moved {ood['mean_rel_delta']:.1%} on average, OOD flags agree {ood['flag_agreement']:.1%}")
    return ", ".join(parts)
