"""Where dcx runs, in one vocabulary: ``auto``, ``cpu`` or ``gpu`` (an NVIDIA GPU through CUDA).

Every command, the backends, the decoder, training and evaluation take these names and resolve
them here. ``cuda`` (PyTorch's name) is accepted on input as another spelling of ``gpu``, so
scripts written for the older ``dcx-train --device cuda`` keep working.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import DcxError

if TYPE_CHECKING:  # imported when a device is resolved: naming one costs no PyTorch import
    import torch

DEVICES = ("auto", "cpu", "gpu")
#: What a command line accepts: the vocabulary plus PyTorch's spelling of ``gpu``.
DEVICE_CHOICES = DEVICES + ("cuda",)


def check_device(device: str) -> str:
    """``device`` in the vocabulary (``cuda`` becomes ``gpu``), or a one-line DcxError."""
    device = "gpu" if device == "cuda" else device
    if device not in DEVICES:
        raise DcxError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    return device


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def torch_device(device: str) -> torch.device:
    """``auto`` -> the CUDA device when PyTorch sees one, else the CPU; ``gpu`` must exist."""
    import torch

    device = check_device(device)
    if device == "auto":
        return torch.device("cuda" if gpu_available() else "cpu")
    if device == "gpu" and not gpu_available():
        raise DcxError("device gpu: PyTorch sees no CUDA device on this machine; use device cpu or auto")
    return torch.device("cuda" if device == "gpu" else "cpu")


def device_of(tensor_device: torch.device) -> str:
    """The vocabulary's name (``gpu`` / ``cpu``) of a torch device."""
    return "gpu" if tensor_device.type == "cuda" else "cpu"
