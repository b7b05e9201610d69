"""The model card and the checkpoint file that carries it.

A checkpoint is ``{"format": FORMAT, "card": <JSON-able dict>, "state_dict": ..., "resume": ...}``
saved with :func:`torch.save` and loaded with ``weights_only=True``: no pickled code runs.
The card travels with every artefact made from the checkpoint (ONNX metadata, sidecars,
result rows), so a model is never separated from its classes, threshold and input contract.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import torch

from .errors import DcxError
from .files import atomic_path
from .preprocess import Preprocess

FORMAT = "dcx-checkpoint/1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def dcx_version() -> str:
    try:
        return metadata.version("dcx")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass
class ModelCard:
    """Everything needed to use a trained model correctly, JSON-serialisable."""

    arch: str
    classes: list[str]
    positive: str
    threshold: float = 0.5
    threshold_policy: str = "default 0.5"
    input_size: int = 224
    channels: int = 1
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resize: str = "letterbox"
    interpolation: str = "bilinear-antialias"
    pad_value: float = 0.0
    dcx_version: str = field(default_factory=dcx_version)
    data_fingerprint: str = ""
    metrics: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.positive not in self.classes:
            raise DcxError(f"positive class {self.positive!r} is not one of {self.classes}")
        self.mean, self.std = tuple(self.mean), tuple(self.std)

    @property
    def positive_index(self) -> int:
        return self.classes.index(self.positive)

    @property
    def model_id(self) -> str:
        """Short stable identity of the model, used to key results and state."""
        import hashlib

        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    def preprocess(self) -> Preprocess:
        return Preprocess(self.input_size, self.resize, self.interpolation, self.pad_value)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelCard":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        missing = {"arch", "classes", "positive"} - known.keys()
        if missing:
            raise DcxError(f"model card lacks {', '.join(sorted(missing))}")
        return cls(**known)


def save_checkpoint(path: str | os.PathLike, state_dict: dict, card: ModelCard, resume: dict | None = None) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves half a checkpoint."""
    path = Path(path)
    payload = {"format": FORMAT, "card": card.to_dict(), "state_dict": state_dict}
    if resume is not None:
        payload["resume"] = resume
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | os.PathLike) -> tuple[ModelCard, dict, dict | None]:
    """(card, state_dict, resume-state or None); clear errors for missing, corrupt or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise DcxError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DcxError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DcxError(f"{path} is not a dcx checkpoint (no '{FORMAT}' model card); "
                       "plain torchvision weights go to dcx-train --weights PATH")
    return ModelCard.from_dict(payload["card"]), payload["state_dict"], payload.get("resume")
