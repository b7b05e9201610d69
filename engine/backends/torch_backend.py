"""The PyTorch reference backend: a ``dcx-train`` checkpoint (``.pt``) served as is.

It runs :meth:`DcxNet.graph_outputs`, the very graph that export writes to ONNX and
TensorRT, so every backend returns the same probabilities and the same activation map.

**Why no separate Grad-CAM.** The heads of all dcx models are a 1x1 convolution over the last
feature map A averaged over space (ResNet/DenseNet: the GAP + linear head rewritten; SqueezeNet:
its own conv head with a ReLU). For the class logit ``y_c = mean_ij(sum_k w_ck A_kij + b_c)``
Grad-CAM's channel weights are ``mean_ij dy_c/dA_kij = w_ck / (h w)``, hence::

    Grad-CAM_c = ReLU(sum_k w_ck A_k) / (h w) = ReLU(CAM_c - b_c) / (h w)

(SqueezeNet: the same times the fraction of positions where its head ReLU is open). So
Grad-CAM is the CAM shifted by the class bias and scaled: the same pixel ordering and the
same hottest region, which is what a heatmap shows; ``tests/test_backends.py`` checks this
identity against autograd. Serving the CAM keeps heatmaps identical across backends.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from dcx.core.checkpoint import load_model
from dcx.core.devices import torch_device

from .base import Backend


class TorchBackend(Backend):
    name = "pytorch"
    precision = "fp32"

    def __init__(self, path: str | os.PathLike, *, device: str = "auto", threads: int | None = None):
        model, self.card = load_model(path)
        self.device = torch_device(device)
        if threads:
            torch.set_num_threads(threads)  # process-wide: PyTorch has no per-model pool
        self.model = model.to(self.device)

    def _infer(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        with torch.inference_mode():
            outputs = self.model.graph_outputs(images.to(self.device, non_blocking=True), self.card.positive_index)
        outputs = [t.float().cpu().numpy() for t in outputs]
        return outputs[0], outputs[1], outputs[2] if len(outputs) > 2 else None

    def _release(self) -> None:
        del self.model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

