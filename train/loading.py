"""Reading training data for PyTorch: datasets, the epoch sampler, and unreadable images.

Unreadable images are *reported by name and skipped*, never a crash: :class:`ImageDataset`
turns a decode failure into an :class:`Unreadable` record, :func:`collate_skipping` drops it
from the batch and hands it to the trainer, which logs the file once and lists it in the model
card. This works inside DataLoader worker processes and costs nothing up front (a pre-scan
would decode a large archive twice).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from dcx.core.errors import DcxError
from dcx.core.reader import read_unit_gray

from .data import Sample


class Unreadable(NamedTuple):
    """A sample that failed to load: its dataset index and why (picklable across workers)."""

    index: int
    reason: str


class ImageDataset(torch.utils.data.Dataset):
    """(image tensor (1, S, S), class index) per sample, read by the reference reader.

    A label outside ``classes`` gets index -1 (evaluation data may hold classes the model lacks).
    """

    def __init__(self, samples: list[Sample], classes: list[str],
                 transform: Callable[[object], torch.Tensor]):
        self.samples = samples
        self.class_index = {c: i for i, c in enumerate(classes)}
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]):
        """``key``: an index, or (index, augmentation seed) from :class:`EpochSampler`."""
        i, seed = key if isinstance(key, tuple) else (key, None)
        sample = self.samples[i]
        try:
            image = read_unit_gray(sample.path)
            if seed is None:
                image = self.transform(image)
            else:
                with torch.random.fork_rng(devices=[]):  # the caller's RNG stream stays untouched
                    torch.manual_seed(seed)
                    image = self.transform(image)
        except (DcxError, OSError) as exc:
            return Unreadable(i, exc.message if isinstance(exc, DcxError) else f"{sample.path}: {exc}")
        return image, self.class_index.get(sample.label, -1)


class EpochSampler(torch.utils.data.Sampler):
    """Training order and augmentation as pure functions of (seed, epoch, index).

    Yields (index, augmentation seed): the same run draws the same crops whatever the number
    of loader workers, and a resumed epoch can skip the batches already done.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.skip = n, seed, 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        epoch_seed = self.seed * 100_003 + self.epoch
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(epoch_seed))
        return iter([(i, epoch_seed * 1_000_003 + i) for i in order[self.skip:].tolist()])

    def __len__(self) -> int:
        return self.n - self.skip


def collate_skipping(batch: list) -> tuple[torch.Tensor, torch.Tensor, list[Unreadable]]:
    """Stack the readable items; return the unreadable ones beside them for reporting."""
    bad = [item for item in batch if isinstance(item, Unreadable)]
    good = [item for item in batch if not isinstance(item, Unreadable)]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), bad
    images, targets = zip(*good)
    return torch.stack(images), torch.tensor(targets, dtype=torch.long), bad
