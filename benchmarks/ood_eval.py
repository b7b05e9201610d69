"""How well a model's OOD score tells its own kind of image from images it was never trained for.

Held-out in-distribution films (a split manifest: never used to fit the score) are compared
with families of images no one trained on, all generated here from a seed so the measurement
reruns anywhere:

- ``natural``: generated natural-scene stand-ins (smooth shading, overlapping objects, texture);
- ``noise``, ``gradient``, ``text``: synthetic non-radiographs (white noise, linear ramps,
  dark glyph strokes in lines on a bright page);
- ``ct_slice``: an axial CT-like slice -- another body region and modality (round body on
  black, bright bony ring, soft-tissue organs);
- ``flipped``: the in-distribution films upside down; ``rotated``: turned 90 degrees;
- ``inverted``: the films with gray levels inverted (MONOCHROME1 read as MONOCHROME2);
- ``lateral_like``: a stand-in for lateral films -- each film rotated 90 degrees and its central
  half cropped (no real lateral film is at hand here).

Three scores are measured on the same images (higher = more unusual): ``mahalanobis`` (the
model's own ``ood`` output, :class:`dcx.core.models.OodScore`), ``energy`` (-logsumexp of the
logits) and ``feature_norm`` (minus the L2 norm of the pooled features). For each family: the
AUROC of in-distribution vs that family, and the share of the family the card's threshold
marks out of distribution; plus the share of held-out in-distribution films marked.
"""
from __future__ import annotations

import numpy as np
import torch

from dcx.core.checkpoint import load_model
from dcx.core.errors import DcxError
from dcx.core.metrics import roc_auc
from dcx.core.reader import read_unit_gray

SCORES = ("mahalanobis", "energy", "feature_norm")


def _natural(rng, size):
    y, x = np.mgrid[0:size, 0:size] / size
    img = 0.5 + 0.3 * np.sin(2 * np.pi * (rng.uniform(0.5, 2) * x + rng.uniform(0.5, 2) * y + rng.uniform()))
    for _ in range(rng.integers(4, 10)):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
        if rng.uniform() < 0.5:
            mask = (x - cx) ** 2 + (y - cy) ** 2 < r ** 2
        else:
            mask = (abs(x - cx) < r) & (abs(y - cy) < r * rng.uniform(0.3, 1.5))
        img[mask] = rng.uniform(0, 1) + 0.1 * np.sin(40 * rng.uniform() * x[mask])
    return img + rng.normal(0, 0.03, img.shape)


def _text(rng, size):
    img = np.full((size, size), 0.92)
    line = max(size // 16, 4)
    for top in range(line, size - line, 2 * line):
        left = line
        while left < size - line:
            width = rng.integers(line // 3 + 1, line + 1)
            if rng.uniform() < 0.85:
                img[top : top + line, left : left + width] = np.where(rng.uniform(size=(line, width)) < 0.5, 0.1, 0.92)
            left += width + rng.integers(1, line // 2 + 2)
    return img


def _ct_slice(rng, size):
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    a, b = rng.uniform(0.38, 0.46), rng.uniform(0.28, 0.36)
    body = (x / a) ** 2 + (y / b) ** 2
    img = np.where(body < 1, 0.45, 0.0)
    img[(body > 0.8) & (body < 0.9)] = 0.95  # bony ring
    for _ in range(rng.integers(3, 6)):
        cx, cy, r = rng.uniform(-0.2, 0.2), rng.uniform(-0.15, 0.15), rng.uniform(0.04, 0.12)
        img[(x - cx) ** 2 + (y - cy) ** 2 < r ** 2] = rng.uniform(0.3, 0.7)
    return np.clip(img + rng.normal(0, 0.02, img.shape) * (body < 1), 0, 1)


def _lateral_like(film, rng):
    turned = np.rot90(film)
    h, w = turned.shape
    return turned[h // 4 : h - h // 4, w // 4 : w - w // 4]


GENERATED = {"natural": _natural, "noise": lambda rng, size: rng.uniform(0, 1, (size, size)),
             "gradient": lambda rng, size: np.linspace(0, 1, size)[None, :].repeat(size, 0)
             if rng.uniform() < 0.5 else np.linspace(1, 0, size)[:, None].repeat(size, 1),
             "text": _text, "ct_slice": _ct_slice}
TRANSFORMED = {"flipped": lambda film, rng: film[::-1], "rotated": lambda film, rng: np.rot90(film),
               "inverted": lambda film, rng: 1.0 - film, "lateral_like": _lateral_like}
FAMILIES = tuple(GENERATED) + tuple(TRANSFORMED)


def family_images(films: list[np.ndarray], n: int, seed: int = 0, size: int = 256) -> dict[str, list[np.ndarray]]:
    """``n`` unit-gray images of every generated family, and each transform of ``films``."""
    rng = np.random.default_rng(seed)
    images = {name: [np.clip(make(rng, size), 0, 1).astype(np.float32) for _ in range(n)]
              for name, make in GENERATED.items()}
    images.update({name: [np.ascontiguousarray(make(f, rng), dtype=np.float32) for f in films]
                   for name, make in TRANSFORMED.items()})
    return images


@torch.no_grad()
def scores(model, card, images: list[np.ndarray], batch_size: int = 32) -> dict[str, np.ndarray]:
    """The three OOD scores (higher = more unusual) of unit-gray ``images``."""
    if model.ood is None:
        raise DcxError("this checkpoint has no OOD score; fit one with dcx-fit-ood")
    preprocess = card.preprocess()
    out = {name: [] for name in SCORES}
    for i in range(0, len(images), batch_size):
        x = torch.stack([preprocess(im) for im in images[i : i + batch_size]])
        features = model.feature_map(x)
        pooled = features.mean(dim=(2, 3))
        logits = model.head(features).mean(dim=(2, 3))
        out["mahalanobis"].append(model.ood(pooled))
        out["energy"].append(-torch.logsumexp(logits, dim=1))
        out["feature_norm"].append(-pooled.norm(dim=1))
    return {name: torch.cat(v).numpy() for name, v in out.items()}


def evaluate(checkpoint, in_distribution_paths: list, *, n: int = 60, seed: int = 0) -> dict:
    """AUROC per family and score, and rejection rates at the card's threshold."""
    model, card = load_model(checkpoint)
    threshold = card.ood_threshold
    films = [read_unit_gray(p) for p in in_distribution_paths]
    reference = scores(model, card, films)
    report = {"checkpoint": str(checkpoint), "n_in_distribution": len(films), "ood_threshold": threshold,
              "in_distribution_rejected": float(np.mean(reference["mahalanobis"] > threshold)), "families": {}}
    for name, images in family_images(films, n, seed).items():
        got = scores(model, card, images)
        y = np.r_[np.zeros(len(films)), np.ones(len(images))]
        report["families"][name] = {
            "n": len(images), "rejected": float(np.mean(got["mahalanobis"] > threshold)),
            **{f"auroc_{s}": roc_auc(y, np.r_[reference[s], got[s]]) for s in SCORES}}
    return report


def markdown(report: dict) -> str:
    """The measurement table of benchmarks/README.md."""
    lines = ["| family | n | " + " | ".join(f"AUROC {s}" for s in SCORES) + " | marked OOD |",
             "|---|---|" + "---|" * len(SCORES) + "---|"]
    for name, f in report["families"].items():
        lines.append(f"| {name} | {f['n']} | " + " | ".join(f"{f['auroc_' + s]:.3f}" for s in SCORES)
                     + f" | {f['rejected']:.1%} |")
    lines.append(f"| held-out in-distribution | {report['n_in_distribution']} | | | | "
                 f"{report['in_distribution_rejected']:.1%} |")
    return "\n".join(lines)
