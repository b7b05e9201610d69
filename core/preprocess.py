"""The input contract: how any radiograph becomes the tensor a dcx model sees.

Training, evaluation, INT8 calibration and every engine backend reproduce exactly this,
so it is defined here once:

1. **Unit grayscale.** Decode to one channel in [0, 1]: 8-bit / 255, 16-bit / 65535
   (DICOM: rescale, VOI window and MONOCHROME1 inversion first, see ``dcx.core.dicom``),
   colour by ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B, as PIL's ``convert("L")``),
   alpha ignored, palette expanded first.
2. **Letterbox.** Scale so the longer side is ``size`` (bilinear, antialiased when shrinking:
   torch's ``F.interpolate(antialias=True)``, computed on the CPU by :mod:`dcx.core.resize`),
   keeping the aspect ratio so non-square films keep both lung fields, then pad the shorter
   side symmetrically with ``pad_value`` (black) to ``size`` x ``size``.
3. **Normalisation** (the card's mean/std, ImageNet's by default, after replicating gray to
   three channels) happens *inside* the model (:class:`dcx.core.models.DcxNet`), so exported
   graphs take the unit-gray tensor directly and the engine never needs to know it.

Every parameter comes from the model card (:meth:`dcx.core.card.ModelCard.preprocess`, and
:func:`dcx.core.checkpoint.build_model` for mean/std). Step 1 for files is :mod:`dcx.core.reader`;
the engine's DALI pipeline reproduces steps 1-2 on CPU or GPU; its test states the bound.

PyTorch is imported by the functions that make tensors (here and in :mod:`dcx.core.resize`), not
with this module: step 1 and the geometry also serve processes that load no model (dcx-report's
thumbnails, the DICOM reader), which PyTorch's import would cost 2 CPU-seconds and 500 MB.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import DcxError
from .resize import resize_antialiased

if TYPE_CHECKING:
    import torch

#: Refuse images above this many pixels before decoding (decompression bombs, lying headers).
MAX_PIXELS = 16384 * 16384

LUMA_WEIGHTS = (0.299, 0.587, 0.114)

#: Step 3's defaults (ImageNet statistics, the backbones' pretraining); a card may carry others.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The resize policies and interpolations this contract implements (the card names one of each);
#: the reference path (:func:`letterbox`) and the engine's DALI pipeline implement exactly these.
RESIZES = ("letterbox",)
INTERPOLATIONS = ("bilinear-antialias",)


@dataclass(frozen=True)
class Preprocess:
    """Parameters of steps 1-2, read from the model card (:meth:`dcx.core.card.ModelCard.preprocess`).

    A card naming a policy this contract does not implement is refused rather than served
    with another one: the model would see images unlike those it was trained on.
    """

    size: int = 224
    resize: str = "letterbox"
    interpolation: str = "bilinear-antialias"
    pad_value: float = 0.0

    def __post_init__(self):
        if self.resize not in RESIZES:
            raise DcxError(f"the model card asks for resize {self.resize!r}; dcx implements {', '.join(RESIZES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise DcxError(f"the model card asks for interpolation {self.interpolation!r}; "
                           f"dcx implements {', '.join(INTERPOLATIONS)}")
        if not isinstance(self.size, int) or self.size < 1:
            raise DcxError(f"the model card's input size must be a positive integer, got {self.size!r}")

    def __call__(self, unit_gray: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Unit-gray HxW image -> float32 tensor (1, size, size)."""
        return letterbox(as_tensor(unit_gray), self.size, self.pad_value)


def to_unit_gray(pixels: np.ndarray) -> np.ndarray:
    """Any decoded raster (HxW, HxWx1..4; uint8/uint16/float) -> float32 HxW in [0, 1]."""
    arr = np.asarray(pixels)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3 and arr.shape[2] == 2:  # gray + alpha
        arr = arr[:, :, 0]
    if arr.dtype == np.uint8:
        scale = 255.0
    elif arr.dtype == np.uint16:
        scale = 65535.0
    elif arr.dtype.kind == "f":
        scale = 1.0
    else:
        raise DcxError(f"unsupported pixel type {arr.dtype}")
    unit = arr.astype(np.float32) / np.float32(scale)
    if unit.ndim == 3:
        if unit.shape[2] not in (3, 4):
            raise DcxError(f"unsupported channel count {unit.shape[2]}")
        r, g, b = (unit[:, :, i] for i in range(3))
        unit = LUMA_WEIGHTS[0] * r + LUMA_WEIGHTS[1] * g + LUMA_WEIGHTS[2] * b
    elif unit.ndim != 2:
        raise DcxError(f"unsupported image shape {arr.shape}")
    return np.clip(unit, 0.0, 1.0).astype(np.float32, copy=False)


def as_tensor(unit_gray: np.ndarray | torch.Tensor) -> torch.Tensor:
    """HxW unit gray -> (1, H, W) float32 tensor."""
    import torch

    t = torch.as_tensor(unit_gray, dtype=torch.float32)
    return t.unsqueeze(0) if t.ndim == 2 else t


def letterbox_geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """Resized (h, w) and the (top, left) offset of the image inside the square canvas."""
    scale = size / max(height, width)
    h = max(1, min(size, round(height * scale)))
    w = max(1, min(size, round(width * scale)))
    return h, w, (size - h) // 2, (size - w) // 2


def letterbox(image: torch.Tensor, size: int, pad_value: float = 0.0, *, scale: float = 1.0,
              offset: float = 0.0) -> torch.Tensor:
    """(C, H, W) or (N, C, H, W) -> same rank at size x size, aspect kept, centred, padded.

    ``scale`` and ``offset`` map values linearly after the resize (``unit = scale * value +
    offset``; they commute, the filter's weights sum to 1), so a caller holding raw decoded
    values need not map the full-resolution image first."""
    batched = image.ndim == 4
    x = image if batched else image.unsqueeze(0)
    h, w, top, left = letterbox_geometry(x.shape[-2], x.shape[-1], size)
    if (h, w) != tuple(x.shape[-2:]):
        x = resize_antialiased(x, h, w)
    if scale != 1.0 or offset != 0.0:
        x = x * scale + offset
    out = x.new_full((x.shape[0], x.shape[1], size, size), pad_value)
    out[:, :, top : top + h, left : left + w] = x
    return out if batched else out[0]
