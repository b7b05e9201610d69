"""The peer baseline: how the published COVID-19 X-ray projects score a folder.

Deep-COVID and the torchvision classification reference read images with PIL, transform
them with torchvision, batch them with a ``DataLoader`` and run the model in PyTorch eager
FP32 -- batch 20 in Deep-COVID. dcx's throughput claims are ratios against exactly that
loop, run on the same files with the same weights (a dcx checkpoint), so the ratio measures
the engine and nothing else.

The transform is the peer-style rendering of dcx's input contract (PIL gray, longer side to
the model size with torchvision's antialiased resize, centred zero padding), so the peer's
scores stay close to the engine's (inputs differ by 8-bit rounding only): a large
disagreement means the weights were not the same.
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
from torchvision.transforms.v2 import functional as TF

from dcx.core.card import ModelCard
from dcx.core.checkpoint import load_model
from dcx.core.files import usable_cores
from dcx.core.preprocess import letterbox_geometry

#: Deep-COVID's batch size.
PEER_BATCH_SIZE = 20


class Letterbox(torch.nn.Module):
    """A torchvision-style transform: resize the longer side to ``size`` (antialiased), then pad
    to a centred square with zeros. The geometry is the core contract's, to the pixel."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, image: Image.Image) -> Image.Image:
        h, w, _, _ = letterbox_geometry(image.height, image.width, self.size)
        return TF.center_crop(TF.resize(image, [h, w], antialias=True), [self.size, self.size])


def peer_transform(size: int) -> T.Compose:
    return T.Compose([Letterbox(size), T.ToImage(), T.ToDtype(torch.float32, scale=True)])


def open_gray(path: str) -> Image.Image:
    """PIL's loader, in gray: ``convert("L")`` (BT.601 luma, as the contract), except for 16-bit
    images, which ``convert`` would clip to white: those keep their top 8 bits."""
    with Image.open(path) as im:
        if im.mode in ("I", "I;16", "I;16B", "I;16L"):
            return Image.fromarray((np.clip(np.asarray(im, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8))
        return im.convert("L")


class PeerDataset(Dataset):
    """Files in, (tensor, index) out, as torchvision's ImageFolder with a gray loader."""

    def __init__(self, files: list[str], size: int):
        self.files = files
        self.transform = peer_transform(size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return self.transform(open_gray(self.files[i])), i


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
    model, card = load_model(checkpoint)
    return card, model


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
    return usable_cores()
