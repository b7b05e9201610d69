"""The checkpoint file that carries a model card, and the one way a checkpoint becomes a model.

A checkpoint is ``{"format": FORMAT, "card": <JSON-able dict>, "state_dict": ..., "resume": ...}``
saved with :func:`torch.save` and loaded with ``weights_only=True``: no pickled code runs.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .card import ModelCard
from .errors import DcxError
from .files import atomic_path
from .models import DcxNet, create_model

FORMAT = "dcx-checkpoint/1"


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
