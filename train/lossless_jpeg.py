"""A small lossless JPEG (ITU T.81 process 14) encoder for test fixtures.

No Python package at hand encodes lossless JPEG (pydicom's encoders cover RLE, JPEG-LS and
JPEG 2000 only), yet archives hold it (transfer syntaxes 1.2.840.10008.1.2.4.57 and .70) and
DALI decodes it on the GPU only. This writes one grayscale component, one scan, any
predictor 1..7, 2..16 bits, with a fixed Huffman table for the 17 difference categories;
tests check every stream against an independent decoder (libjpeg via pylibjpeg).
"""
from __future__ import annotations

import numpy as np

# Code lengths: categories 0..13 get 4 bits, 14..16 five (the all-ones code stays unused).
_BITS = [0, 0, 0, 14, 3] + [0] * 11
_CODES = [(k, 4) for k in range(14)] + [(0b11100 + k, 5) for k in range(3)]


def encode_lossless_jpeg(pixels: np.ndarray, precision: int, predictor: int = 1) -> bytes:
    """``pixels`` (2-D unsigned integers below ``2**precision``) as a lossless JPEG stream."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype.kind != "u" or not 2 <= precision <= 16 or not 1 <= predictor <= 7:
        raise ValueError("expected 2-D unsigned pixels, precision 2..16 and predictor 1..7")
    if pixels.size and int(pixels.max()) >= 1 << precision:
        raise ValueError(f"pixel values exceed {precision} bits")
    rows, cols = pixels.shape
    frame = (bytes([0xFF, 0xC3, 0, 11, precision]) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big")
             + bytes([1, 1, 0x11, 0]))
    table = bytes([0xFF, 0xC4]) + (3 + 16 + 17).to_bytes(2, "big") + bytes([0] + _BITS + list(range(17)))
    scan = bytes([0xFF, 0xDA, 0, 8, 1, 1, 0x00, predictor, 0, 0])
    return b"\xff\xd8" + frame + table + scan + _entropy_coded(_differences(pixels, precision, predictor)) + b"\xff\xd9"


def _differences(pixels: np.ndarray, precision: int, predictor: int) -> np.ndarray:
    """Sample minus prediction, modulo 2**16 (T.81 H.1.2.1: the first row predicts from the
    left, the first column from above, the first sample from 2**(precision - 1))."""
    x = pixels.astype(np.int64)
    ra = np.zeros_like(x)
    rb = np.zeros_like(x)
    rc = np.zeros_like(x)
    ra[:, 1:], rb[1:, :], rc[1:, 1:] = x[:, :-1], x[:-1, :], x[:-1, :-1]
    prediction = {1: ra, 2: rb, 3: rc, 4: ra + rb - rc, 5: ra + ((rb - rc) >> 1),
                  6: rb + ((ra - rc) >> 1), 7: (ra + rb) >> 1}[predictor].copy()
    prediction[0, :] = ra[0, :]
    prediction[1:, 0] = rb[1:, 0]
    prediction[0, 0] = 1 << (precision - 1)
    return (x - prediction) % 65536


def _entropy_coded(differences: np.ndarray) -> bytes:
    bits = []
    for value in differences.ravel().tolist():
        signed = value - 65536 if value > 32768 else value
        category = 16 if value == 32768 else abs(signed).bit_length()
        code, length = _CODES[category]
        bits.append(format(code, f"0{length}b"))
        if 0 < category < 16:
            extra = signed if signed > 0 else signed + (1 << category) - 1
            bits.append(format(extra, f"0{category}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    data = int(stream, 2).to_bytes(len(stream) // 8, "big") if stream else b""
    return data.replace(b"\xff", b"\xff\x00")
