"""The three evaluation plots: ROC, precision-recall, confusion matrix.

Figures are built with matplotlib's object API (``Figure`` rendered by the Agg canvas), never
``pyplot``: no display, no global state, safe in servers, tests and worker processes.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from dcx.core import metrics
from .evaluate import format_metric


def _figure(size=(5.0, 4.6)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig, path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=120, metadata={"Software": None})
    return path


def plot_roc(path: str | os.PathLike, is_positive, p_positive, *, threshold: float, positive: str) -> Path:
    """ROC curve of the positive class with its AUC, the chance line and the operating point."""
    fpr, tpr, _ = metrics.roc_curve(is_positive, p_positive)
    auc = metrics.roc_auc(is_positive, p_positive)
    point = metrics.operating_point(is_positive, p_positive, threshold)
    fig, ax = _figure()
    ax.plot(fpr, tpr, lw=2, label=f"{positive} vs rest, AUC {format_metric(auc)}")
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey", label="chance")
    if not math.isnan(point["sensitivity"]) and not math.isnan(point["specificity"]):
        ax.plot(1 - point["specificity"], point["sensitivity"], "o", color="crimson",
                label=f"threshold {threshold:.3g}: sens {point['sensitivity']:.3f}, spec {point['specificity']:.3f}")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="1 - specificity (false positive rate)",
           ylabel="sensitivity (true positive rate)", title=f"ROC: {positive} (n = {len(p_positive)})")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_pr(path: str | os.PathLike, is_positive, p_positive, *, threshold: float, positive: str) -> Path:
    """Precision-recall curve with average precision, the prevalence baseline and the operating point."""
    precision, recall, _ = metrics.precision_recall_curve(is_positive, p_positive)
    ap = metrics.average_precision(is_positive, p_positive)
    prevalence = float(np.mean(np.asarray(is_positive, dtype=bool))) if len(p_positive) else math.nan
    point = metrics.operating_point(is_positive, p_positive, threshold)
    fig, ax = _figure()
    ax.plot(np.r_[0.0, recall], np.r_[precision[:1], precision], drawstyle="steps-pre", lw=2,
            label=f"{positive} vs rest, AP {format_metric(ap)}")
    ax.axhline(prevalence, ls="--", lw=1, color="grey", label=f"prevalence {format_metric(prevalence)}")
    if not math.isnan(point["ppv"]) and not math.isnan(point["sensitivity"]):
        ax.plot(point["sensitivity"], point["ppv"], "o", color="crimson",
                label=f"threshold {threshold:.3g}: recall {point['sensitivity']:.3f}, precision {point['ppv']:.3f}")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="recall (sensitivity)", ylabel="precision (PPV)",
           title=f"Precision-recall: {positive} (n = {len(p_positive)})")
    ax.legend(loc="lower left", fontsize="small")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_confusion(path: str | os.PathLike, counts, classes: list[str]) -> Path:
    """Counts per (true, arg-max predicted) class; colour is the row fraction, so small classes show."""
    counts = np.asarray(counts)
    rows = counts.sum(axis=1, keepdims=True)
    fraction = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    k = len(classes)
    fig, ax = _figure(size=(1.6 + 1.1 * k, 1.3 + 1.0 * k))
    image = ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{counts[i, j]}\n{fraction[i, j]:.0%}", ha="center", va="center", fontsize="small",
                    color="white" if fraction[i, j] > 0.6 else "black")
    ax.set_xticks(range(k), classes, rotation=30, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set(xlabel="predicted (arg-max)", ylabel="true", title=f"Confusion matrix (n = {int(counts.sum())})")
    fig.colorbar(image, ax=ax, label="fraction of true class", shrink=0.8)
    return _save(fig, path)
