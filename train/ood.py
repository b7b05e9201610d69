"""Fit the out-of-distribution score of a trained model (:class:`dcx.core.models.OodScore`).

A screening model answers every image, including images it was never trained for (a CT
slice, a photograph, a lateral film, an inverted film). The OOD score asks the model's own
features whether an image looks like its training data:

- features: the pooled last convolutional map (``DcxNet.pooled_features``), the input of
  the 1x1 head, of the *training* split read with the evaluation preprocessing (no
  augmentation);
- model: one Gaussian per class with a shared covariance (Lee et al., 2018); the score is the
  squared Mahalanobis distance to the nearest class mean, divided by the feature count;
- the covariance is shrunk towards a scaled identity with the Ledoit-Wolf estimate, because
  a small training set has fewer images than feature dimensions (512 to 2048);
- threshold: the validation split's (1 - rejection rate) quantile, so that share of
  in-distribution validation images is marked out of distribution, by construction.

The result is written into the checkpoint (buffers of ``model.ood``) and its card
(``card.ood``: method, layer, image counts, rejection rate, threshold), so every exported
graph computes the same score (the ``ood`` output).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from dcx.core.errors import DcxError
from dcx.core.models import DcxNet

from .config import DEFAULT_REJECTION_RATE
from .data import Sample
from .loading import ImageDataset, collate_skipping
from .presets import EvalPreset

METHOD = "mahalanobis, class-conditional gaussians, shared covariance (ledoit-wolf shrinkage)"
FEATURE_LAYER = "spatial mean of DcxNet.features (input of the 1x1 head)"


@torch.no_grad()
def pooled_features(model: DcxNet, loader: DataLoader, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, C) float64, class indices (N,)) of every readable image of ``loader``."""
    model.eval()
    features, labels = [], []
    for images, y, _ in loader:
        if len(y):
            features.append(model.pooled_features(images.to(device)).double().cpu())
            labels.append(y)
    if not features:
        return np.zeros((0, 0)), np.zeros(0, dtype=np.int64)
    return torch.cat(features).numpy(), torch.cat(labels).numpy()


def shared_gaussians(features: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Class means (K, C) and the Ledoit-Wolf-shrunk covariance (C, C) of the within-class residuals.

    A class without images takes the mean of all images, so the score stays defined."""
    overall = features.mean(axis=0)
    means = np.stack([features[labels == k].mean(axis=0) if (labels == k).any() else overall
                      for k in range(num_classes)])
    residuals = features - means[labels]
    n, c = residuals.shape
    sample = residuals.T @ residuals / n
    scale = np.trace(sample) / c
    target_gap = ((sample - scale * np.eye(c)) ** 2).sum() / c
    spread = ((residuals ** 2).sum(axis=1) ** 2).sum() - n * (sample ** 2).sum()
    shrink = 1.0 if target_gap <= 0 else min(spread / (n * n * c), target_gap) / target_gap
    return means, shrink * scale * np.eye(c) + (1 - shrink) * sample


def whitened(means: np.ndarray, covariance: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The buffers of :class:`OodScore`: ``whitening`` W (W W^T = covariance^-1 / C), ``centres`` = means @ W."""
    precision = np.linalg.inv(covariance)
    precision = (precision + precision.T) / 2
    w = np.linalg.cholesky(precision / len(precision))
    return torch.from_numpy(means @ w).float(), torch.from_numpy(w).float()


def fit_ood(model: DcxNet, train: list[Sample], val: list[Sample], classes: list[str], *, size: int,
            device: torch.device, batch_size: int = 32, workers: int = 0,
            rejection_rate: float = DEFAULT_REJECTION_RATE) -> dict:
    """Attach a fitted :class:`OodScore` to ``model`` and return the card's ``ood`` record."""
    if not 0 < rejection_rate < 1:
        raise DcxError(f"--ood-rejection-rate {rejection_rate} must be in (0, 1)")

    def loader(samples):
        return DataLoader(ImageDataset(samples, classes, EvalPreset(size=size)), batch_size=batch_size,
                          num_workers=workers, collate_fn=collate_skipping)

    model.ood = None
    features, labels = pooled_features(model, loader(train), device)
    if len(features) < 2:
        raise DcxError("the OOD score needs at least two readable training images")
    means, covariance = shared_gaussians(features, labels, len(classes))
    model.attach_ood(*whitened(means, covariance))
    val_features, _ = pooled_features(model, loader(val), device)
    if not len(val_features):
        raise DcxError("the OOD threshold needs readable validation images")
    with torch.no_grad():
        scores = model.ood(torch.from_numpy(val_features).float().to(device)).cpu().numpy()
    threshold = float(np.quantile(scores, 1 - rejection_rate, method="higher"))
    return {"method": METHOD, "feature_layer": FEATURE_LAYER, "score": "squared distance / feature count",
            "n_train": int(len(features)), "n_val": int(len(scores)), "rejection_rate": rejection_rate,
            "threshold_policy": f"validation quantile {1 - rejection_rate:g}", "threshold": threshold,
            "val_rejected": float(np.mean(scores > threshold))}
