"""Recognise image formats by their magic bytes, never by extension.

Archives hold DICOM files without extension, PNGs named ``.jpg`` and worse; the first
bytes decide. DICOM is recognised with the 128-byte preamble + ``DICM`` and without it
(raw data sets starting with a group 0x0008 or 0x0002 element in little endian).
"""
from __future__ import annotations

import os

HEADER_BYTES = 132
#: Refuse files above this size before reading them (no radiograph comes near it).
MAX_FILE_BYTES = 1 << 30

_SIGNATURES = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"BM", "bmp"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "jpeg2000"),
    (b"\xff\x4f\xff\x51", "jpeg2000"),  # raw J2K codestream
)


def sniff_bytes(head: bytes) -> str | None:
    """Format name from the first bytes of a file, or None when unknown."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if _looks_like_raw_dicom(head):
        return "dicom"
    return None


def _looks_like_raw_dicom(head: bytes) -> bool:
    """A preamble-less data set: first tag (0002,xxxx) or (0008,xxxx), little endian, with a
    plausible explicit VR or implicit length."""
    if len(head) < 8:
        return False
    group = int.from_bytes(head[0:2], "little")
    if group not in (0x0002, 0x0008):
        return False
    vr = head[4:6]
    if vr.isalpha() and vr.isupper():
        return True
    length = int.from_bytes(head[4:8], "little")
    return length < 1024


def sniff(path: str | os.PathLike) -> str | None:
    """Format name of the file at ``path`` (reads at most 132 bytes)."""
    with open(path, "rb") as f:
        return sniff_bytes(f.read(HEADER_BYTES))
