"""Small JPEG thumbnails as ``data:`` URIs, so a report is one file that needs no network.

Only the images a reader looks at one by one (flagged, out of distribution) get pictures;
at ``THUMB_PX`` px and JPEG quality 80 each costs a few kB. Every input is hostile: a file
that cannot be read (moved, corrupt, too large) yields ``None`` and the report says why,
never an exception. Heatmaps are looked up by file name inside the heatmap folder only, so a
row cannot point the report at an arbitrary file.
"""
from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np

from dcx.core.reader import read_unit_gray

THUMB_PX = 128


def radiograph_thumbnail(path: str, size: int = THUMB_PX) -> tuple[str | None, str | None]:
    """(data URI, None) of the radiograph at ``path``, or (None, why not)."""
    from PIL import Image

    try:
        gray = read_unit_gray(path)
    except Exception as exc:  # any decoder failure of a hostile file: the report notes it
        return None, _reason(exc)
    image = Image.fromarray(np.rint(np.clip(gray, 0.0, 1.0) * 255).astype(np.uint8), mode="L")
    return _jpeg_uri(image, size), None


def heatmap_thumbnail(heatmap: str | None, folder: str | os.PathLike | None,
                      size: int = THUMB_PX) -> tuple[str | None, str | None]:
    """(data URI, None) of a row's heatmap PNG, found by its file name in ``folder``, or (None, why not)."""
    from PIL import Image

    if not heatmap:
        return None, "no heatmap in the table (run dcx-infer with --heatmaps)"
    if folder is None:
        return None, "no --heatmaps folder given"
    path = Path(folder) / Path(heatmap).name
    try:
        with Image.open(path) as im:
            im.load()
            image = im.convert("RGB")
    except Exception as exc:  # missing or damaged heatmap
        return None, _reason(exc)
    return _jpeg_uri(image, size), None


def _jpeg_uri(image, size: int) -> str:
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _reason(exc: Exception) -> str:
    text = getattr(exc, "message", None) or getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text).splitlines()[0][:200]
