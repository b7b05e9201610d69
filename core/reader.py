"""The reference reader: any supported file as the unit-gray image of the input contract.

Raster formats go through Pillow, DICOM through :mod:`dcx.core.dicom` (which owns the DICOM
rules). Training, evaluation and calibration read with this; the engine decodes with DALI
instead, and ``tests/engine/test_decode.py`` holds the two together.
"""
from __future__ import annotations

import os
import stat

import numpy as np
from PIL import Image

from . import dicom, formats
from .errors import DcxError
from .preprocess import MAX_PIXELS, to_unit_gray


def read_unit_gray(path: str | os.PathLike) -> np.ndarray:
    """Any supported file -> unit-gray HxW float32 (step 1 of the contract)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DcxError(f"{os.fspath(path)}: " + ("broken symbolic link" if os.path.islink(path)
                                                 else "file not found")) from None
    if not stat.S_ISREG(mode):  # opening a FIFO would wait forever
        raise DcxError(f"{os.fspath(path)}: not a regular file")
    kind = formats.sniff(path)
    if kind == "dicom":
        return dicom.read_unit_gray(path)
    if kind is None:
        raise DcxError(f"not a supported image: {os.fspath(path)}")
    return to_unit_gray(_read_raster(path))


def _read_raster(path) -> np.ndarray:
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
