"""Evaluate a checkpoint on labelled images: predictions -> one metrics dict -> files.

:func:`summarize` is the single place that turns (labels, probabilities, model card) into the
numbers dcx reports, so ``dcx-eval`` and anything else that scores a labelled set agree.
Decisions follow the engine's result rows: ``predicted`` is the arg-max class (the confusion
matrix and per-class precision/recall/F1), and the screening flag is
``p_positive >= card.threshold`` (sensitivity, specificity and the threshold sweep).
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcx.core import metrics
from dcx.core.card import ModelCard
from dcx.core.checkpoint import build_model
from dcx.core.devices import torch_device
from dcx.core.errors import DcxError

from .config import default_workers
from .loading import ImageDataset, collate_skipping
from .trainer import predict

#: The Deep-COVID paper's sweep; :func:`summarize` adds the card's own threshold.
SWEEP_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def summarize(y_true_labels, probs, card: ModelCard) -> dict:
    """Metrics of softmax ``probs`` (N, K; columns in ``card.classes`` order) against class names.

    Returns a JSON-ready dict: the positive class's AUC, average precision and operating point at
    the card's threshold (with 95% Wilson CIs), the threshold sweep, the arg-max confusion matrix,
    per-class precision/recall/F1 and one-vs-rest AUCs. NaN (undefined, e.g. no positives) is
    kept as float NaN here; :func:`dcx.core.files.write_json` writes it as ``null``.
    """
    labels = [str(label) for label in y_true_labels]
    probs = np.asarray(probs, dtype=np.float64)
    k = len(card.classes)
    if probs.ndim != 2 or probs.shape != (len(labels), k):
        raise DcxError(f"need probabilities of shape ({len(labels)}, {k}) for classes {card.classes}, got {probs.shape}")
    unknown = sorted(set(labels) - set(card.classes))
    if unknown:
        raise DcxError(f"label(s) {', '.join(unknown)} are not classes of this model ({', '.join(card.classes)})")
    if not labels:
        raise DcxError("no predictions to evaluate")
    index = {c: i for i, c in enumerate(card.classes)}
    y = np.array([index[label] for label in labels])
    is_positive, p_positive = y == card.positive_index, probs[:, card.positive_index]
    predicted = probs.argmax(axis=1)
    matrix = np.zeros((k, k), dtype=int)
    np.add.at(matrix, (y, predicted), 1)

    return {
        "n": len(labels),
        "classes": list(card.classes),
        "class_counts": {c: int(matrix[i].sum()) for i, c in enumerate(card.classes)},
        "positive": card.positive,
        "threshold": float(card.threshold),
        "threshold_policy": card.threshold_policy,
        "auc": metrics.roc_auc(is_positive, p_positive),
        "average_precision": metrics.average_precision(is_positive, p_positive),
        "operating_point": metrics.operating_point(is_positive, p_positive, card.threshold),
        "threshold_sweep": metrics.threshold_sweep(
            is_positive, p_positive, sorted({*SWEEP_THRESHOLDS, float(card.threshold)})),
        "accuracy": float(np.trace(matrix) / matrix.sum()),
        "confusion_matrix": {"rows": "true class", "columns": "predicted class (arg-max)",
                             "classes": list(card.classes), "counts": matrix.tolist()},
        "per_class": _per_class(matrix, card.classes, y, probs),
        "macro_f1": _nanmean([_f1(matrix, i) for i in range(k)]),
    }


def _per_class(matrix: np.ndarray, classes: list[str], y: np.ndarray, probs: np.ndarray) -> dict:
    out = {}
    for i, c in enumerate(classes):
        tp, predicted, actual = matrix[i, i], matrix[:, i].sum(), matrix[i].sum()
        out[c] = {"precision": _ratio(tp, predicted), "recall": _ratio(tp, actual), "f1": _f1(matrix, i),
                  "support": int(actual), "auc_one_vs_rest": metrics.roc_auc(y == i, probs[:, i])}
    return out


def _f1(matrix: np.ndarray, i: int) -> float:
    tp, predicted, actual = matrix[i, i], matrix[:, i].sum(), matrix[i].sum()
    return _ratio(2 * tp, predicted + actual)


def _ratio(a, b) -> float:
    return float(a / b) if b else math.nan


def _nanmean(values) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else math.nan


# --------------------------------------------------------------------------- inference


@dataclass
class Predictions:
    """Per-input outcome of :func:`predict_samples`: probabilities for the readable ones."""

    samples: list  # list[dcx.train.data.Sample], input order
    probs: np.ndarray  # (n_readable, K)
    readable: np.ndarray  # bool per sample
    reasons: dict[int, str]  # sample index -> why it could not be read


def predict_samples(card: ModelCard, state_dict: dict, samples: list, *, batch_size: int = 32,
                    workers: int | None = None) -> Predictions:
    """Run the card's model (eval mode, no grad, batches) over ``samples`` with the contract's
    preprocessing; unreadable images are recorded, not fatal."""
    import torch
    from torch.utils.data import DataLoader

    model = build_model(card, state_dict)
    device = torch_device("auto")
    model.to(device)
    workers = default_workers() if workers is None else workers
    loader = DataLoader(ImageDataset(samples, card.classes, card.preprocess()), batch_size=batch_size,
                        shuffle=False, num_workers=min(workers, max(1, len(samples) // batch_size)),
                        collate_fn=collate_skipping, pin_memory=device.type == "cuda")
    with torch.inference_mode():
        probs, _, _, bad = predict(model, loader, device, None)
    reasons = {item.index: item.reason for item in bad}
    readable = np.array([i not in reasons for i in range(len(samples))], dtype=bool)
    return Predictions(samples, probs.reshape(-1, len(card.classes)), readable, reasons)


# --------------------------------------------------------------------------- files


def write_predictions(path: str | os.PathLike, result: Predictions, card: ModelCard) -> Path:
    """One row per input, readable or not, in the engine's column vocabulary."""
    path = Path(path)
    columns = ["path", "label", *(f"p_{c}" for c in card.classes), "predicted", "p_positive", "flagged",
               "status", "reason"]
    rows = iter(result.probs)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for i, sample in enumerate(result.samples):
            if result.readable[i]:
                p = next(rows)
                writer.writerow([str(sample.path), sample.label, *(f"{v:.6g}" for v in p),
                                 card.classes[int(p.argmax())], f"{p[card.positive_index]:.6g}",
                                 int(p[card.positive_index] >= card.threshold), "ok", ""])
            else:
                writer.writerow([str(sample.path), sample.label, *([""] * len(card.classes)), "", "", "",
                                 "unreadable", result.reasons[i]])
    return path


def sweep_markdown(summary: dict) -> str:
    """The threshold sweep as a Markdown table, like the Deep-COVID paper's."""
    lines = [f"# Threshold sweep: {summary['positive']} vs rest (n = {summary['n']}, AUC {format_metric(summary['auc'])})",
             "",
             f"Flagged positive when p({summary['positive']}) >= threshold. 95% Wilson intervals in brackets; "
             f"the model card's threshold ({summary['threshold_policy']}) is marked *.",
             "",
             "| threshold | sensitivity | specificity | TP | FN | TN | FP |",
             "|---:|---|---|---:|---:|---:|---:|"]
    for row in summary["threshold_sweep"]:
        mark = " *" if row["threshold"] == summary["threshold"] else ""
        lines.append(f"| {row['threshold']:.4g}{mark} | {format_metric(row['sensitivity'])} {format_ci(row['sensitivity_ci95'])} | "
                     f"{format_metric(row['specificity'])} {format_ci(row['specificity_ci95'])} | "
                     f"{row['tp']} | {row['fn']} | {row['tn']} | {row['fp']} |")
    return "\n".join(lines) + "\n"


def format_metric(x: float | None) -> str:
    """Three decimals, or ``n/a`` for an undefined (NaN/None) metric."""
    return "n/a" if x is None or math.isnan(x) else f"{x:.3f}"


def format_ci(ci) -> str:
    """``[low, high]`` of a 95% interval, or empty when undefined."""
    low, high = ci
    return "" if low is None or math.isnan(low) else f"[{low:.3f}, {high:.3f}]"
