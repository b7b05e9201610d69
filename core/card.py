"""The model card, the checkpoint file that carries it, and the one way a checkpoint becomes a model.

A checkpoint is ``{"format": FORMAT, "card": <JSON-able dict>, "state_dict": ..., "resume": ...}``
saved with :func:`torch.save` and loaded with ``weights_only=True``: no pickled code runs.
The card travels with every artefact made from the checkpoint (ONNX metadata, sidecars,
result rows), so a model is never separated from its classes, threshold and input contract.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import torch

from .errors import DcxError
from .files import atomic_path
from .models import DcxNet, create_model
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess

FORMAT = "dcx-checkpoint/1"


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
    #: How the out-of-distribution score was fitted and its threshold (dcx.train.ood); empty
    #: for models without one.
    ood: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.positive not in self.classes:
            raise DcxError(f"positive class {self.positive!r} is not one of {self.classes}")
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise DcxError(f"model card mean/std must be three values each (std > 0), got {self.mean} / {self.std}")
        self.preprocess()  # refuses a resize policy or interpolation dcx does not implement

    @property
    def positive_index(self) -> int:
        return self.classes.index(self.positive)

    @property
    def model_id(self) -> str:
        """Short stable identity of the model, used to key results and state."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    def preprocess(self) -> Preprocess:
        return Preprocess(self.input_size, self.resize, self.interpolation, self.pad_value)

    @property
    def ood_threshold(self) -> float | None:
        """Scores above this are out of distribution; None when the model has no OOD score."""
        return float(self.ood["threshold"]) if self.ood.get("threshold") is not None else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if not self.ood:
            del d["ood"]  # cards from before the OOD score keep their model_id
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


def build_model(card: ModelCard, state_dict: dict, source: str | os.PathLike = "checkpoint") -> DcxNet:
    """The card's architecture with ``state_dict`` loaded, normalising with the card's mean/std, in
    eval mode on the CPU; a one-line error when the weights do not fit the card."""
    model = create_model(card.arch, len(card.classes), mean=card.mean, std=card.std)
    normalisation = {k: v.clone() for k, v in model.state_dict().items() if k in ("mean", "std")}
    if "ood.centres" in state_dict and "ood.whitening" in state_dict:
        model.attach_ood(state_dict["ood.centres"], state_dict["ood.whitening"])
    try:
        model.load_state_dict(state_dict)
    except Exception as exc:  # mismatched keys or shapes: a card that lies about its weights
        raise DcxError(f"{os.fspath(source)}: its weights do not fit a {card.arch} with {len(card.classes)} classes "
                       f"({str(exc).splitlines()[0][:160]})") from exc
    if any(not torch.allclose(model.state_dict()[k], v) for k, v in normalisation.items()):
        raise DcxError(f"{os.fspath(source)}: the weights were trained with another mean/std than its card records")
    return model.eval()


def load_model(path: str | os.PathLike) -> tuple[DcxNet, ModelCard]:
    """A dcx checkpoint as its eval-mode FP32 model (CPU) and card: what export, the PyTorch
    backend, evaluation and the benchmarks' reference all run."""
    card, state_dict, _ = load_checkpoint(path)
    return build_model(card, state_dict, path), card
