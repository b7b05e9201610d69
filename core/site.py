"""The site file: a hospital's own operating threshold for one model.

``dcx-calibrate`` writes it from the site's labelled sample; ``dcx-infer --site`` reads it and
flags with its threshold instead of the model card's. The file names the model id it was
calibrated for, and a run refuses it for any other model: a threshold is meaningful only for
the scores of the model it was chosen on. Plain JSON, no torch, so the engine can read it::

    {"format": "dcx-site/1", "model_id": "3f2a...", "threshold": 0.41,
     "policy": "sensitivity >= 0.98 on the site sample", "calibration": {...}}
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DcxError
from .files import write_json

FORMAT = "dcx-site/1"


@dataclass(frozen=True)
class SiteThreshold:
    """A site's threshold for the model ``model_id``; ``calibration`` records how it was chosen."""

    model_id: str
    threshold: float
    policy: str
    calibration: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if not isinstance(self.model_id, str) or not self.model_id:
            raise DcxError("a site file needs the model_id it was calibrated for")
        if not isinstance(self.threshold, (int, float)) or not math.isfinite(self.threshold) \
                or not 0.0 <= self.threshold <= 1.0:
            raise DcxError(f"site threshold {self.threshold!r} is not a probability in [0, 1]")

    def check_model(self, model_id: str, source: str = "the site file") -> None:
        """Refuse a site threshold calibrated for another model."""
        if model_id != self.model_id:
            raise DcxError(f"{source} was calibrated for model {self.model_id}, but this model is {model_id}; "
                           "recalibrate with dcx-calibrate for this model")

    def to_dict(self) -> dict:
        return {"format": FORMAT, "model_id": self.model_id, "threshold": float(self.threshold),
                "policy": self.policy, "calibration": self.calibration}


def write_site(path: str | os.PathLike, site: SiteThreshold) -> Path:
    return write_json(path, site.to_dict())


def read_site(path: str | os.PathLike) -> SiteThreshold:
    """A site file, validated; one clear error for a missing, foreign or damaged file."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DcxError(f"site file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DcxError(f"{path} is not a readable site file ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DcxError(f"{path} is not a dcx site file (no '{FORMAT}' format); make one with dcx-calibrate")
    try:
        return SiteThreshold(payload.get("model_id"), payload.get("threshold"), str(payload.get("policy", "")),
                             payload.get("calibration") if isinstance(payload.get("calibration"), dict) else {})
    except DcxError as exc:
        raise DcxError(f"{path}: {exc.message}") from exc
