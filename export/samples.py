"""Which images an export reads, and reading them exactly as training and evaluation did.

Two sets matter:

- **calibration** (INT8): a stratified sample of the *training* split. ``dcx-train`` records
  its split manifests in ``card.training["splits_dir"]`` (``train.csv``, ``val.csv``, ...).
  ``--calib DATA`` names the images explicitly; when DATA overlaps the recorded training split
  (the usual case: DATA is the archive the model was trained on), only that overlap is used,
  so validation and test images never shape the quantization that is then verified on them.
- **evaluation** (FP16/INT8 verification): ``--eval DATA``, else the recorded validation split.

Images go through the core reader and :meth:`ModelCard.preprocess` via the training dataset
class, so calibration sees the same tensors as training; unreadable files are named and skipped.
"""
from __future__ import annotations

import random
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from dcx.core.card import ModelCard
from dcx.core.progress import Progress
from dcx.train.data import Sample, read_samples
from dcx.train.loading import ImageDataset, collate_skipping
from dcx.core.errors import DcxError

BATCH_SIZE = 32


def recorded_split(card: ModelCard, split: str) -> tuple[list[Sample], Path] | None:
    """The samples of a split that ``dcx-train`` recorded for this model, or None."""
    splits_dir = card.training.get("splits_dir")
    if not splits_dir:
        return None
    manifest = Path(splits_dir) / f"{split}.csv"
    if not manifest.is_file():
        return None
    return read_samples(manifest), manifest


def stratified_sample(samples: list[Sample], n: int, *, seed: int = 0) -> list[Sample]:
    """``n`` samples with each label in proportion (largest remainder), and at least one of
    every label, so a rare class is never left out of calibration. Deterministic for a seed,
    so two exports of one checkpoint calibrate on the same images.
    """
    if n >= len(samples):
        return sorted(samples, key=lambda s: str(s.path))
    by_label: dict[str, list[Sample]] = defaultdict(list)
    for s in sorted(samples, key=lambda s: str(s.path)):
        by_label[s.label].append(s)
    quota = {label: n * len(members) / len(samples) for label, members in by_label.items()}
    take = {label: max(1, int(q)) for label, q in quota.items()}
    for label in sorted(quota, key=lambda lb: (int(quota[lb]) - quota[lb], lb)):  # largest remainder first
        if sum(take.values()) >= n:
            break
        take[label] += 1
    chosen = []
    for label, members in sorted(by_label.items()):
        chosen += random.Random(f"{seed}:{label}").sample(members, min(take[label], len(members)))
    return sorted(chosen, key=lambda s: str(s.path))


def calibration_samples(card: ModelCard, calib: Path | None, n: int, *, seed: int = 0) -> tuple[list[Sample], str]:
    """(stratified calibration sample, one line saying where it came from)."""
    if n < 1:
        raise DcxError(f"--calib-samples must be at least 1, got {n}")
    recorded = recorded_split(card, "train")
    if calib is None:
        if recorded is None:
            raise DcxError("INT8 calibration needs training images: pass --calib DATA (the archive the "
                           "model was trained on); this checkpoint records no training split")
        pool, origin = recorded[0], f"training split {recorded[1]}"
    else:
        pool = read_samples(calib)
        origin = f"{calib}"
        tagged = [s for s in pool if s.split == "train"]
        if tagged:
            pool, origin = tagged, f"{calib} (rows with split=train)"
        elif recorded is not None:
            train_paths = {s.path.resolve() for s in recorded[0]}
            inside = [s for s in pool if s.path.resolve() in train_paths]
            if inside:
                pool, origin = inside, f"{calib} (the {len(inside)} images of its recorded training split)"
    return stratified_sample(pool, n, seed=seed), origin


def evaluation_samples(card: ModelCard, eval_data: Path | None) -> tuple[list[Sample], str] | None:
    """(samples, origin) to verify FP16/INT8 artefacts on, or None when there are none."""
    if eval_data is not None:
        samples, origin = read_samples(eval_data), str(eval_data)
    else:
        recorded = recorded_split(card, "val")
        if recorded is None:
            return None
        samples, origin = recorded[0], f"validation split {recorded[1]}"
    foreign = sorted({s.label for s in samples} - set(card.classes))
    if foreign:
        raise DcxError(f"evaluation data {origin} has labels {', '.join(foreign)} that the model does not "
                       f"know (its classes: {', '.join(card.classes)})")
    return samples, origin


@dataclass
class Batches:
    """Preprocessed batches of ``samples``; after iteration, ``used`` and ``skipped`` say which.
    With a ``progress`` label, a progress line counts the images on stderr as they are consumed."""

    samples: list[Sample]
    card: ModelCard
    batch_size: int = BATCH_SIZE
    progress: str | None = None
    used: list[Sample] = field(default_factory=list)
    skipped: list[tuple[Sample, str]] = field(default_factory=list)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[Sample]]]:
        """Yields (images (n, 1, S, S), their samples); each unreadable file is named once on stderr."""
        self.used, self.skipped = [], []
        classes = sorted({*self.card.classes, *(s.label for s in self.samples)})
        dataset = ImageDataset(self.samples, classes, self.card.preprocess())
        loader = torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, shuffle=False,
                                             collate_fn=collate_skipping)
        line = Progress(self.progress, total=len(dataset), unit="images") if self.progress else None
        for start, (images, _targets, bad) in zip(range(0, len(dataset), self.batch_size), loader):
            bad_index = {b.index for b in bad}
            for b in bad:
                self.skipped.append((self.samples[b.index], b.reason))
                print(f"skipped (cannot read): {b.reason}", file=sys.stderr)
            kept = [s for i, s in enumerate(self.samples[start:start + self.batch_size], start) if i not in bad_index]
            self.used += kept
            if kept:
                yield images, kept
            if line:
                line.update(min(start + self.batch_size, len(dataset)))
        if line:
            line.close()
