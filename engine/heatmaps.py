"""Heatmap PNGs: the radiograph with the model's class-activation map laid over it.

The CAM comes from any backend (``infer`` returns it at feature resolution, e.g. 7 x 7 for
224 px ResNets; see :mod:`dcx.engine.backends.torch_backend` for how it relates to
Grad-CAM). Here it is upsampled bilinearly to the image, clipped at zero (only evidence
*for* the class is shown), stretched to [0, 1] over its own range, coloured with a
matplotlib colour map (red = strongest evidence with ``jet``) and alpha-blended over the
grayscale image. Only matplotlib's colour tables are used: no figure, no pyplot, no GUI.

The image is the preprocessed model input (letterboxed, unit gray), so the map and the
pixels line up exactly.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dcx.core.files import atomic_path

DEFAULT_COLORMAP = "jet"
#: zlib level of the PNGs: 1 encodes a 224 px heatmap in 3.7 ms against 16.8 at Pillow's default 6,
#: for files 15% larger (60 vs 52 KiB; 40 heatmaps of a cxr-dev run, benchmarks/README.md): at 6 a
#: flagged image's heatmap took more CPU than its inference (resnet18 INT8, 9.7 ms), in the main
#: thread, between batches.
PNG_COMPRESS_LEVEL = 1


def overlay_heatmap(image, cam, *, alpha: float = 0.45, colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """(H, W, 3) uint8 RGB: ``cam`` (h, w) coloured and blended over ``image``.

    ``image`` is unit gray in [0, 1], shaped (1, H, W) or (H, W), tensor or array;
    ``alpha`` is the weight of the colour layer (0: image only, 1: heatmap only).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    gray = torch.as_tensor(image, dtype=torch.float32).detach().cpu()
    if gray.ndim == 3 and gray.shape[0] == 1:
        gray = gray[0]
    cam = torch.as_tensor(cam, dtype=torch.float32).detach().cpu()
    if gray.ndim != 2 or cam.ndim != 2:
        raise ValueError(f"expected image (1, H, W) or (H, W) and cam (h, w), got {tuple(gray.shape)} and {tuple(cam.shape)}")
    heat = normalised_cam(cam, tuple(gray.shape))
    # ((1 - alpha) * gray + alpha * colour) * 255 to the bit, in place: 0.76 ms a 224 px map
    # instead of 3.3 (np.take instead of fancy indexing, no temporaries; benchmarks/README.md)
    blended = np.take(_colour_table(colormap), np.rint(heat * 255).astype(np.uint8), axis=0)  # (H, W, 3)
    blended *= alpha
    blended += (1.0 - alpha) * gray.clamp(0, 1).numpy()[..., None]
    blended *= 255
    return np.rint(blended, out=blended).astype(np.uint8)


def normalised_cam(cam: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(h, w) CAM -> (H, W) float32 in [0, 1]: bilinear upsampling, ReLU, min-max stretch.

    A map with no positive evidence at all comes back as zeros (cold everywhere).
    """
    up = F.interpolate(cam[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    up = up.clamp_min(0)
    low, high = up.min(), up.max()
    if not torch.isfinite(high) or high - low <= 0:
        return np.zeros(size, dtype=np.float32)
    return ((up - low) / (high - low)).numpy()


def save_heatmap(image, cam, out_png: str | os.PathLike, *, alpha: float = 0.45,
                 colormap: str = DEFAULT_COLORMAP) -> Path:
    """Write :func:`overlay_heatmap` as a PNG at ``out_png`` (parent folders made; atomic).

    ``out_png`` is used as given, so the caller owns privacy: file names of archives often
    carry patient names, and heatmap folders get shared. The run orchestrator passes a name
    free of patient data (never the input's stem or a DICOM PatientName).
    """
    from PIL import Image

    out = Path(out_png)
    pixels = overlay_heatmap(image, cam, alpha=alpha, colormap=colormap)
    with atomic_path(out) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return out


_TABLES: dict[str, np.ndarray] = {}


def _colour_table(name: str) -> np.ndarray:
    """256 x 3 RGB in [0, 1] from a matplotlib colour map, built once per name."""
    if name not in _TABLES:
        from matplotlib import colormaps

        try:
            cmap = colormaps[name]
        except KeyError:
            raise ValueError(f"unknown matplotlib colour map {name!r}") from None
        _TABLES[name] = cmap(np.linspace(0.0, 1.0, 256))[:, :3].astype(np.float32)
    return _TABLES[name]
