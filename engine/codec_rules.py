"""What DALI's image decoder does to a DICOM frame, by device: which frames it can decode, and
how far its uint16 output sits above the stored values.

These are facts about DALI 2.4 (``setup.py`` pins it exactly, because both can change with a
release), kept as small pure functions so they can be tested for every precision and device
without a GPU, and so the pixel rules can live with the other DICOM rules.

**Bit depth** (``dali/operators/imgcodec/image_decoder.h``). nvImageCodec decodes a sample to its
native type: uint8 up to 8 bits, uint16 above; on the GPU always uint16 for lossless JPEG (nvJPEG's
lossless backend has no uint8 output; the CPU's libjpeg-turbo gives uint8 for 8 bits: measured
by ``dcx-bench gpu-check``). The ``mixed`` (GPU) decoder then stretches a sample of ``p`` bits to
the full range of that type (``dyn_range_multiplier = max / (2**p - 1)``); the CPU decoder does
not (``assert(dyn_range_multiplier == 1.0f); // TODO``). Converting a uint8 sample to the
requested uint16 multiplies by 257 on both. nvImageCodec widens 1-bit uint8 samples to 0..255
itself, on both devices. So on the GPU every depth comes out spanning 0..65535, whatever the codec.

**Decodability.** DALI fails a whole batch for one frame it cannot decode, and the engine then
rebuilds the pipeline while it bisects the batch: frames known to fail go to pydicom up front.
The CPU decoder fails lossless JPEG and 12-bit lossy JPEG (GUIDE 2, seen); nvJPEG's lossless
decoder handles first-order prediction (selection value 1) only.
"""
from __future__ import annotations

DEVICES = ("cpu", "gpu")
#: Codecs of DICOM frames DALI may be asked to decode: lossy JPEG (baseline / extended),
#: lossless JPEG (process 14) and JPEG 2000.
CODECS = ("jpeg", "jpeg-lossless", "jpeg2k")

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG2000 = "1.2.840.10008.1.2.4.91"

#: The codec of each transfer syntax whose frames DALI may decode.
CODEC_OF_SYNTAX = {JPEG_BASELINE: "jpeg", JPEG_EXTENDED: "jpeg", JPEG_LOSSLESS: "jpeg-lossless",
                   JPEG_LOSSLESS_SV1: "jpeg-lossless", JPEG2000_LOSSLESS: "jpeg2k", JPEG2000: "jpeg2k"}


def _check(precision: int, device: str, codec: str) -> None:
    if not 1 <= precision <= 16:
        raise ValueError(f"precision must be 1..16 bits, got {precision}")
    if device not in DEVICES or codec not in CODECS:
        raise ValueError(f"unknown device {device!r} or codec {codec!r}")


def uint16_gain(precision: int, device: str, codec: str) -> float:
    """How many times the stored value DALI's uint16 output is, for a ``precision``-bit
    grayscale sample of ``codec`` decoded on ``device`` (``cpu`` or ``gpu``).

    >>> uint16_gain(12, "cpu", "jpeg2k"), uint16_gain(12, "gpu", "jpeg2k")
    (1.0, 16.00366...)
    """
    _check(precision, device, codec)
    native_bits = 16 if precision > 8 or (codec == "jpeg-lossless" and device == "gpu") else 8
    if native_bits == 8 and precision == 1:
        return 65535.0  # widened to 0..255 by nvImageCodec, then x257
    widening = 257.0 if native_bits == 8 else 1.0
    if device == "cpu":
        return widening
    return widening * ((1 << native_bits) - 1) / ((1 << precision) - 1)


def dali_decodes(syntax: str, precision: int, device: str, *, predictor: int | None = None) -> bool:
    """Whether DALI's decoder on ``device`` decodes a grayscale frame of transfer ``syntax`` with
    ``precision`` bits (``predictor``: a lossless JPEG frame's selection value)."""
    codec = CODEC_OF_SYNTAX.get(str(syntax))
    if codec is None:
        return False
    _check(precision, device, codec)
    if codec == "jpeg":
        return precision == 8
    if codec == "jpeg-lossless":
        return device == "gpu" and predictor == 1
    return True


def lossless_jpeg_predictor(frame: bytes) -> int | None:
    """The selection value (predictor, 1..7) in the first start-of-scan header of a lossless
    JPEG stream, or None when the stream has no well-formed one."""
    at = 2 if frame[:2] == b"\xff\xd8" else None
    while at is not None and at + 4 <= len(frame):
        if frame[at] != 0xFF:
            return None
        marker, length = frame[at + 1], int.from_bytes(frame[at + 2:at + 4], "big")
        if marker == 0xDA:  # SOS: length, Ns, Ns x (Cs, Td/Ta), Ss (the predictor), Se, Ah/Al
            components = frame[at + 4] if at + 4 < len(frame) else 0
            ss = at + 5 + 2 * components
            return frame[ss] if ss < len(frame) and 1 <= frame[ss] <= 7 else None
        if length < 2:
            return None
        at += 2 + length
    return None
