"""Inference backends behind one interface; the model file's extension picks the backend.

=====================  ==============================  ======================================
file                   backend                         runs on
=====================  ==============================  ======================================
``.plan``, ``.engine``  TensorRT (full; version-         the NVIDIA GPU model it was built for
                       compatible plans also the lean  (:mod:`.trt_runtime` picks the runtime)
                       or dispatch runtime)
``.onnx``              ONNX Runtime, or OpenVINO for   CUDA provider when present, else CPU;
                       artefacts exported for it       OpenVINO: the CPU
``.pt``                PyTorch (``dcx-train`` output)  CUDA when present, else CPU
=====================  ==============================  ======================================

Example::

    from dcx.engine.backends import open_backend

    with open_backend("runs/r18/model.onnx", device="cpu") as backend:
        probs, cam, ood = backend.infer(batch)  # ood: None without a fitted OOD score; batch: (N, 1, S, S) float32, S = backend.card.input_size

An ONNX artefact is served by the runtime its export recorded and was verified with
(:func:`dcx.core.artefact.read_runtime`: ``dcx-export --target openvino`` -> OpenVINO, else
ONNX Runtime). Each backend module is imported only when its file type is opened, so TensorRT
(and its CUDA libraries) is never loaded on a machine that serves ONNX.
"""
from __future__ import annotations

import os
from pathlib import Path

from dcx.core.artefact import read_card, read_runtime
from dcx.core.checkpoint import load_checkpoint
from dcx.core.devices import check_device
from dcx.core.errors import DcxError

from .base import Backend

__all__ = ["Backend", "open_backend", "read_engine_card", "BACKEND_BY_SUFFIX", "CPU_BATCH_SIZE"]

BACKEND_BY_SUFFIX = {".plan": "tensorrt", ".engine": "tensorrt", ".onnx": "onnxruntime", ".pt": "pytorch"}
#: The batch dcx-infer sends on a CPU unless told otherwise (and dcx-export verifies with).
CPU_BATCH_SIZE = 16


def open_backend(path: str | os.PathLike, *, device: str = "auto", threads: int | None = None,
                 batch_size: int | None = None) -> Backend:
    """Load the model at ``path`` on ``device`` (auto, cpu or gpu: :mod:`dcx.core.devices`) and return its backend.

    ``threads`` caps CPU threads (ONNX Runtime intra-op pool, or PyTorch's process-wide
    pool); None uses every core this process may run on. ``batch_size``: the batch the caller
    will send, for OpenVINO, which compiles for exactly it (other backends take any batch as
    it comes). Raises :class:`DcxError` with one line for a missing, foreign or corrupt file,
    or a backend this machine cannot run.
    """
    path = Path(path)
    kind = _backend_kind(path)
    if not path.is_file():
        raise DcxError(f"model file not found: {path}")
    device = check_device(device)
    if kind == "tensorrt":
        from .tensorrt_backend import TensorRTBackend as cls
    elif kind == "onnxruntime" and read_runtime(path) == "openvino":
        from .openvino_backend import OpenVinoBackend

        return OpenVinoBackend(path, device=device, threads=threads, batch_size=batch_size)
    elif kind == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeBackend as cls
    else:
        from .torch_backend import TorchBackend as cls
    return cls(path, device=device, threads=threads)


def _backend_kind(path: Path) -> str:
    """Which backend serves the model file at ``path``, by its suffix; one line for any other file."""
    kind = BACKEND_BY_SUFFIX.get(path.suffix.lower())
    if kind is None:
        raise DcxError(f"cannot tell the backend of {path.name}: expected a model file ending in "
                       f"{', '.join(BACKEND_BY_SUFFIX)} (TensorRT plan, ONNX, dcx-train checkpoint)")
    return kind


def read_engine_card(path: str | os.PathLike):
    """The :class:`~dcx.core.card.ModelCard` of a model file without loading the model (a
    Ray driver or a benchmark may have no GPU for a plan): a checkpoint's own, else the
    export sidecar's or ONNX metadata's."""
    if _backend_kind(Path(path)) == "pytorch":
        return load_checkpoint(path)[0]
    return read_card(path)
