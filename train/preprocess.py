"""The input contract: how any radiograph becomes the tensor a dcx model sees.

Training, evaluation, INT8 calibration and every engine backend reproduce exactly this,
so it is defined here once:

1. **Unit grayscale.** Decode to one channel in [0, 1]: 8-bit / 255, 16-bit / 65535
   (DICOM: rescale, VOI window and MONOCHROME1 inversion first, see ``dcx.engine.dicom``),
   colour by ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B, as PIL's ``convert("L")``),
   alpha ignored, palette expanded first.
2. **Letterbox.** Scale so the longer side is ``size`` (bilinear, antialiased when shrinking),
   keeping the aspect ratio so non-square films keep both lung fields, then pad the shorter
   side symmetrically with ``pad_value`` (black) to ``size`` x ``size``.
3. **Normalisation** (ImageNet mean/std after replicating gray to three channels) happens
   *inside* the model (:class:`dcx.train.models.DcxNet`), so exported graphs take the
   unit-gray tensor directly and the engine never needs to know it.

The engine's DALI pipeline reproduces steps 1-2 on CPU or GPU; its test states the bound.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DcxError

#: Refuse images above this many pixels before decoding (decompression bombs, lying headers).
MAX_PIXELS = 16384 * 16384

LUMA_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class Preprocess:
    """Parameters of the contract; they travel in every model card."""

    size: int = 224
    resize: str = "letterbox"
    interpolation: str = "bilinear-antialias"
    pad_value: float = 0.0

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
    t = torch.as_tensor(unit_gray, dtype=torch.float32)
    return t.unsqueeze(0) if t.ndim == 2 else t


def letterbox_geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """Resized (h, w) and the (top, left) offset of the image inside the square canvas."""
    scale = size / max(height, width)
    h = max(1, min(size, round(height * scale)))
    w = max(1, min(size, round(width * scale)))
    return h, w, (size - h) // 2, (size - w) // 2


def letterbox(image: torch.Tensor, size: int, pad_value: float = 0.0) -> torch.Tensor:
    """(C, H, W) or (N, C, H, W) -> same rank at size x size, aspect kept, centred, padded."""
    batched = image.ndim == 4
    x = image if batched else image.unsqueeze(0)
    h, w, top, left = letterbox_geometry(x.shape[-2], x.shape[-1], size)
    if (h, w) != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    out = x.new_full((x.shape[0], x.shape[1], size, size), pad_value)
    out[:, :, top : top + h, left : left + w] = x
    return out if batched else out[0]


def read_unit_gray(path: str | os.PathLike) -> np.ndarray:
    """The reference reader: any supported file -> unit-gray HxW float32.

    Raster formats go through Pillow, DICOM through ``dcx.engine.dicom`` (which owns the
    DICOM rules). The engine decodes with DALI instead; both must agree with this.
    """
    from dcx.engine import formats

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DcxError(f"{os.fspath(path)}: " + ("broken symbolic link" if os.path.islink(path)
                                                 else "file not found")) from None
    if not stat.S_ISREG(mode):  # opening a FIFO would wait forever
        raise DcxError(f"{os.fspath(path)}: not a regular file")
    kind = formats.sniff(path)
    if kind == "dicom":
        from dcx.engine import dicom

        return dicom.read_unit_gray(path)
    if kind is None:
        raise DcxError(f"not a supported image: {os.fspath(path)}")
    return to_unit_gray(_read_raster(path))


def _read_raster(path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise DcxError(f"{os.fspath(path)}: {im.width}x{im.height} exceeds the {MAX_PIXELS} pixel limit")
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode == "1":
                im = im.convert("L")
            elif im.mode == "CMYK" or im.mode == "YCbCr":
                im = im.convert("RGB")
            elif im.mode in ("I", "I;16", "I;16B", "I;16L"):
                return np.clip(np.asarray(im, dtype=np.int64), 0, 65535).astype(np.uint16)
            elif im.mode == "F":
                return np.asarray(im, dtype=np.float32)
            return np.asarray(im)
    except DcxError:
        raise
    except Exception as exc:  # Pillow raises many types for hostile bytes
        deep = _read_deep_jpeg(path)
        if deep is not None:
            return deep
        raise DcxError(f"{os.fspath(path)}: cannot decode ({type(exc).__name__}: {exc})") from exc


def _read_deep_jpeg(path) -> np.ndarray | None:
    """A 12- or 16-bit JPEG (Pillow reads 8-bit ones only) through libjpeg (pylibjpeg-libjpeg),
    as unit gray over its bit depth; None for anything else."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(b"\xff\xd8"):
        return None
    try:
        from libjpeg import decode, get_parameters

        info = get_parameters(data)
        if info["precision"] <= 8:
            return None
        if info["rows"] * info["columns"] > MAX_PIXELS:
            raise DcxError(f"{os.fspath(path)}: {info['columns']}x{info['rows']} exceeds the {MAX_PIXELS} pixel limit")
        pixels = decode(data)
    except (ImportError, RuntimeError, ValueError, KeyError):
        return None
    return pixels.astype(np.float32) / np.float32((1 << info["precision"]) - 1)
