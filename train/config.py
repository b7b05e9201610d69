"""The settings that define a training run, as plain data: dcx-train's and dcx-fit-ood's command
lines show their defaults without importing PyTorch, and last.pt stores them so --resume
continues the same run."""
from __future__ import annotations

from dataclasses import dataclass

from dcx.core.files import usable_cores

#: Share of validation images the out-of-distribution threshold marks unusual (dcx.train.ood).
DEFAULT_REJECTION_RATE = 0.02


@dataclass
class TrainConfig:
    """Everything that defines a run; stored in last.pt so --resume continues the same run."""

    data: str
    out: str
    arch: str = "densenet121"
    epochs: int = 20
    batch_size: int = 16
    lr: float | None = None  # None: 1e-4 to fine-tune pretrained weights, 1e-3 from scratch
    img_size: int = 224
    weights: str = "imagenet"
    freeze_backbone: bool = False
    positive: str = "covid"
    threshold_policy: str = "sensitivity"
    target_sensitivity: float = 0.98
    #: Share of validation images the OOD threshold marks out of distribution (dcx.train.ood).
    ood_rejection_rate: float = DEFAULT_REJECTION_RATE
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    workers: int | None = None  # machine-specific: not taken from a resumed run
    device: str = "auto"        # likewise


def default_workers() -> int:
    """Image loader processes: one per core, at most 4."""
    return min(4, usable_cores())
