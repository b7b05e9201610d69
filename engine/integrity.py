"""Damage that decoders forgive: found in Python, so the row says so instead of the log.

libpng and libjpeg decode many damaged files anyway -- a PNG chunk failing its CRC, JPEG
entropy data with a stray marker -- and only print a warning on the process's stderr,
without a file name. Those images are scored (they may be fine to read), and
:func:`damage` gives the note their ``ok`` row carries. The checks are cheap passes over
bytes already in memory (CRC-32 of each PNG chunk; a walk over the 0xFF bytes of a JPEG
scan). They cannot see every damage: a JPEG whose flipped bits still form valid Huffman
codes decodes to wrong pixels without any sign short of decoding it.
"""
from __future__ import annotations

import zlib

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Bytes after 0xFF that may appear inside JPEG entropy-coded data: stuffing and restarts.
_IN_SCAN = {0x00, *range(0xD0, 0xD8)}
#: Markers that may legally end a scan (next scan's tables, the next scan, the end).
_AFTER_SCAN = {0xC4, 0xCC, 0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF, 0xFE, *range(0xE0, 0xF0)}


def damage(fmt: str | None, data: bytes) -> str | None:
    """A note on damage a decoder would forgive, or None when the checks find none."""
    if fmt == "png":
        return _png_damage(data)
    if fmt == "jpeg":
        return _jpeg_damage(data)
    return None


def _png_damage(data: bytes) -> str | None:
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        end = pos + 8 + length
        if end + 4 > len(data):
            return None  # truncation is the decoder's to report
        if zlib.crc32(data[pos + 4 : end]) != int.from_bytes(data[end : end + 4], "big"):
            return f"damaged: PNG chunk {kind.decode('latin-1')!s} fails its CRC check"
        if kind == b"IEND":
            return None
        pos = end + 4
    return None


def _jpeg_damage(data: bytes) -> str | None:
    pos = data.find(b"\xff\xda")
    while pos >= 0:
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")  # skip the SOS header
        expected_rst = 0xD0
        while True:
            pos = data.find(b"\xff", pos)
            if pos < 0 or pos + 1 >= len(data):
                return None
            code = data[pos + 1]
            if code == 0xFF:  # fill byte before a marker
                pos += 1
                continue
            if code == 0x00:
                pos += 2
                continue
            if 0xD0 <= code <= 0xD7:
                if code != expected_rst:
                    return f"damaged: JPEG restart marker out of sequence at byte {pos}"
                expected_rst = 0xD0 + (code - 0xD0 + 1) % 8
                pos += 2
                continue
            if code not in _AFTER_SCAN:
                return f"damaged: unexpected marker 0xFF{code:02X} inside the JPEG scan data at byte {pos}"
            break
        pos = data.find(b"\xff\xda", pos) if code == 0xDA or code in _AFTER_SCAN - {0xD9} else -1
    return None
