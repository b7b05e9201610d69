"""The model card: everything needed to use a trained model correctly, as JSON.

The card travels with every artefact made from a checkpoint (the checkpoint itself,
:mod:`dcx.core.checkpoint`; ONNX metadata, sidecars, result rows), so a model is never
separated from its classes, threshold and input contract. Reading one needs no PyTorch.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from importlib import metadata

from .errors import DcxError
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess


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
