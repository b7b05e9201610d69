"""The one interface every inference backend offers (Polygraphy's runner idea, in small).

A backend is opened on a model file, serves ``infer`` calls, and is closed -- best as a
context manager. Whatever runs underneath (TensorRT, ONNX Runtime, PyTorch), a call takes
the preprocessed batch of :mod:`dcx.core.preprocess` and returns the outputs of
:meth:`dcx.core.models.DcxNet.graph_outputs`: softmax probabilities, the positive
class's activation map and the out-of-distribution score (None for a model exported before
it existed), as float32 NumPy arrays. The engine never needs to know which backend it talks to.
"""
from __future__ import annotations

import abc

import numpy as np
import torch

from dcx.core.card import ModelCard


class Backend(abc.ABC):
    """Load in ``__init__``, :meth:`infer` as often as needed, :meth:`close` once.

    Attributes set by every subclass:

    - ``name``: ``"tensorrt"``, ``"onnxruntime"`` or ``"pytorch"``;
    - ``card``: the :class:`ModelCard` the model was exported with;
    - ``device``: the :class:`torch.device` where the engine should put input batches
      (``infer`` accepts any device, but this one avoids a copy);
    - ``precision``: ``"fp32"``, ``"fp16"`` or ``"int8"``;
    - ``max_batch``: the largest batch one run accepts (None: unbounded). ``infer`` splits
      larger batches itself, so callers may ignore it; it is a hint for choosing batch sizes.
    """

    name: str
    card: ModelCard
    device: torch.device
    precision: str = "fp32"
    max_batch: int | None = None
    _closed: bool = False

    def infer(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(N, 1, S, S) float32 unit-gray batch -> (probs (N, K), cam (N, h, w), ood (N,) or None), float32."""
        if self._closed:
            raise RuntimeError(f"the {self.name} backend is closed")
        size = self.card.input_size
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != (1, size, size):
            shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
            raise ValueError(f"expected a (N, 1, {size}, {size}) tensor for this model, got {shape}")
        if len(images) == 0:
            raise ValueError("expected at least one image")
        if images.dtype != torch.float32:
            raise ValueError(f"expected float32 unit-gray images, got {images.dtype}")
        step = self.max_batch or len(images)
        if len(images) <= step:
            return self._infer(images)
        parts = [self._infer(images[i : i + step]) for i in range(0, len(images), step)]
        return tuple(None if part[0] is None else np.concatenate(part) for part in zip(*parts))

    @abc.abstractmethod
    def _infer(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """One run on a batch of at most ``max_batch`` validated images."""

    def close(self) -> None:
        """Release the model and its device memory; calling it twice is harmless."""
        if not self._closed:
            self._closed = True
            self._release()

    def _release(self) -> None:
        """Subclasses drop their sessions, engines and buffers here."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.card.arch} {self.precision} on {self.device}"
                f"{' (closed)' if self._closed else ''}>")

