"""The peer baseline: how the published COVID-19 X-ray projects score a folder.

Deep-COVID and the torchvision classification reference read images with PIL, transform
them with torchvision, batch them with a ``DataLoader`` and run the model in PyTorch eager
FP32 -- batch 20 in Deep-COVID. dcx's throughput claims are ratios against exactly that
loop, run on the same files with the same weights (a dcx checkpoint), so the ratio measures
the engine and nothing else.

The transform is the peer-style rendering of dcx's input contract (gray, longer side to the
model size with antialiasing, zero padding to a square), so the peer's scores stay close to
the engine's: a large disagreement means the weights were not the same.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2 as T

from dcx.train.card import ModelCard, load_checkpoint
from dcx.train.models import create_model

#: Deep-COVID's batch size.
PEER_BATCH_SIZE = 20


def peer_transform(size: int) -> T.Compose:
    """torchvision transforms: longer side to ``size`` (antialiased), centred zero padding, [0, 1]."""
    return T.Compose([
        T.Resize(size=None, max_size=size, antialias=True),
        T.CenterCrop(size),  # pads with zeros, centred, when the image is smaller
        T.ToImage(),
        T.ToDtype(torch.float32, scale=True),
    ])


class PeerDataset(Dataset):
    """Files in, (tensor, index) out; the PIL loader of torchvision's ImageFolder, in gray."""

    def __init__(self, files: list[str], size: int):
        self.files = files
        self.transform = peer_transform(size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        with Image.open(self.files[i]) as im:
            return self.transform(im.convert("L")), i


@dataclass
class PeerRun:
    """One timed pass of the peer loop: checkpoint loading, then worker start-up to last batch."""

    files: list[str]
    card: ModelCard
    probs: np.ndarray  # (N, K) softmax, in file order
    load_s: float
    loop_s: float
    batch_size: int
    workers: int
    torch_threads: int

    @property
    def seconds(self) -> float:
        return self.load_s + self.loop_s

    @property
    def images_per_s(self) -> float:
        return len(self.files) / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict:
        return {"images": len(self.files), "seconds": self.seconds, "load_s": self.load_s, "loop_s": self.loop_s,
                "images_per_s": self.images_per_s, "batch_size": self.batch_size, "workers": self.workers,
                "torch_threads": self.torch_threads, "classes": list(self.card.classes),
                "positive": self.card.positive, "files": self.files, "probs": self.probs.tolist()}


def load_reference(checkpoint: str | os.PathLike) -> tuple[ModelCard, torch.nn.Module]:
    """The dcx checkpoint as an eval-mode FP32 PyTorch model."""
    card, state_dict, _ = load_checkpoint(checkpoint)
    model = create_model(card.arch, len(card.classes), weights="none")
    model.load_state_dict(state_dict)
    return card, model.eval()


def run_peer(checkpoint: str | os.PathLike, files: list[str], *, batch_size: int = PEER_BATCH_SIZE,
             workers: int | None = None) -> PeerRun:
    """Load the checkpoint and score ``files`` the peer way, timing both."""
    workers = default_workers() if workers is None else workers
    start = time.perf_counter()
    card, model = load_reference(checkpoint)
    loaded = time.perf_counter()
    loader = DataLoader(PeerDataset(files, card.input_size), batch_size=batch_size, shuffle=False,
                        num_workers=workers)
    probs = np.zeros((len(files), len(card.classes)), dtype=np.float32)
    with torch.inference_mode():
        for images, index in loader:
            probs[index.numpy()] = torch.softmax(model(images), dim=1).numpy()
    done = time.perf_counter()
    return PeerRun(list(files), card, probs, loaded - start, done - loaded, batch_size, workers,
                   torch.get_num_threads())


def default_workers() -> int:
    """One loader process per core, as the torchvision reference scales ``--workers``."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
