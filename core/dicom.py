"""DICOM rules: which objects are radiographs to score, what their stored values mean, and
which header tags travel to the result rows.

Decoders (DALI, pydicom's plugins, numpy for uncompressed data) only turn bytes into
*stored values*; the header says what they mean. :class:`PixelTransform` is that meaning,
defined once for every decoder, in the order of DICOM PS3.3 C.11:

1. **Bits Stored**: bits above BitsStored are masked off, or sign-extended when
   PixelRepresentation is 1 (signed).
2. **Modality LUT**: RescaleSlope / RescaleIntercept (a Modality LUT Sequence table if present).
3. **VOI**: a VOI LUT Sequence table when present (pydicom's preference), else the *first*
   WindowCenter / WindowWidth pair (VOILUTFunction LINEAR, LINEAR_EXACT or SIGMOID), else the
   full range the stored bits can hold. Full range rather than min/max of the data: it needs
   only the header (so DALI applies it without a pass over the pixels), an 8-bit DICOM maps
   exactly like the PNG of the same pixels (/255, the training contract), and burned-in labels
   or collimator edges cannot change the contrast. A window narrower than 1 is ignored.
4. **MONOCHROME1** is inverted, so bright means dense in every image.

The result is unit gray float32 in [0, 1]. Without LUT tables or a sigmoid the whole chain is
``clip(scale * stored + offset, 0, 1)`` (:attr:`PixelTransform.linear`); the DALI pipeline
applies exactly those two numbers to the values it decodes, so both paths share one definition.

Colour objects (RGB, YBR, PALETTE COLOR) become BT.601 luma of their RGB values, as rasters do.
Multi-frame objects: the **first frame** is scored (``frames`` in the metadata tells how many
there were). Objects without a pixel matrix (structured reports, presentation states,
DICOMDIR, key object selections, encapsulated PDFs) raise :class:`Skipped`, as do files outside
the optional :class:`SeriesRules`. Every other problem raises :class:`DcxError` with the reason.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from .errors import DcxError
from .preprocess import MAX_PIXELS, to_unit_gray

from .reasons import exception_reason

#: Header tags copied to every DICOM result, as (metadata key, DICOM keyword).
META_TAGS = (
    ("study_uid", "StudyInstanceUID"),
    ("series_uid", "SeriesInstanceUID"),
    ("sop_uid", "SOPInstanceUID"),
    ("accession", "AccessionNumber"),
    ("modality", "Modality"),
    ("body_part", "BodyPartExamined"),
    ("view_position", "ViewPosition"),
    ("rows", "Rows"),
    ("columns", "Columns"),
    ("bits_stored", "BitsStored"),
    ("photometric", "PhotometricInterpretation"),
)
#: Patient identifiers: copied only when the caller asks for them (``include_phi``).
PHI_TAGS = (("patient_name", "PatientName"), ("patient_id", "PatientID"))

_JPEG_BASELINE, _JPEG_EXTENDED = "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"
#: pydicom reads elements above this size only when they are used (the pixel data).
_DEFER = "256 KB"


class Skipped(DcxError):
    """A readable DICOM object that is not to be scored: no pixel matrix, or outside the series
    rules. The engine reports it as ``skipped`` with this message as the reason."""


@dataclass(frozen=True)
class SeriesRules:
    """Which DICOM series to score (MONAI Deploy style). A file whose header *states* another
    value is skipped with the reason; a missing tag passes, because archives often omit
    ViewPosition or BodyPartExamined and a rule should reject only what it can see. An empty
    set accepts anything. The defaults select chest radiographs: CR/DX, PA/AP, CHEST."""

    modalities: frozenset[str] = frozenset({"CR", "DX"})
    views: frozenset[str] = frozenset({"PA", "AP"})
    body_parts: frozenset[str] = frozenset({"CHEST"})

    def __post_init__(self):
        for name in ("modalities", "views", "body_parts"):
            object.__setattr__(self, name, frozenset(v.strip().upper() for v in getattr(self, name)))

    def violation(self, ds) -> str | None:
        """Why the data set ``ds`` falls outside the rules, or None when it passes."""
        for keyword, allowed in (("Modality", self.modalities), ("ViewPosition", self.views),
                                 ("BodyPartExamined", self.body_parts)):
            value = str(ds.get(keyword, "") or "").strip().upper()
            if allowed and value and value not in allowed:
                return f"series rules: {keyword} {value} not in {{{', '.join(sorted(allowed))}}}"
        return None


@dataclass(frozen=True)
class PixelTransform:
    """Stored values of one grayscale image -> unit gray (steps 1-4 of the module docstring).

    ``scale``/``offset`` describe the whole chain when :attr:`linear`; otherwise a LUT table or
    a sigmoid window applies and only :meth:`apply` (numpy) can evaluate it.
    """

    bits_stored: int
    signed: bool
    scale: float
    offset: float
    linear: bool = True
    _dataset: object = field(default=None, repr=False, compare=False)  # for LUT tables / sigmoid

    @classmethod
    def from_dataset(cls, ds) -> "PixelTransform":
        bits_allocated = _int(ds, "BitsAllocated", 16)
        bits = min(_int(ds, "BitsStored", bits_allocated), bits_allocated)
        if bits < 1:
            raise DcxError(f"BitsStored {bits} is not a usable bit depth")
        signed = _int(ds, "PixelRepresentation", 0) == 1
        invert = str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1"
        window = _window(ds)
        if "ModalityLUTSequence" in ds or "VOILUTSequence" in ds or (window and window[2] == "SIGMOID"):
            return cls(bits, signed, float("nan"), float("nan"), linear=False, _dataset=ds)

        slope = _float(ds, "RescaleSlope", 1.0) or 1.0
        intercept = _float(ds, "RescaleIntercept", 0.0)
        if window is not None:
            a, b = _window_affine(*window)
        else:  # full range of the stored bits, after the modality rescale
            low, high = _stored_range(bits, signed)
            m0, m1 = sorted((slope * low + intercept, slope * high + intercept))
            a, b = (1.0 / (m1 - m0), -m0 / (m1 - m0)) if m1 > m0 else (0.0, 0.0)
        scale, offset = a * slope, a * intercept + b
        if invert:
            scale, offset = -scale, 1.0 - offset
        return cls(bits, signed, scale, offset)

    @property
    def clips(self) -> bool:
        """Whether some storable value falls outside [0, 1] (a window narrower than the data
        range), so the clip must happen before resizing."""
        lo, hi = _stored_range(self.bits_stored, self.signed)
        ends = (self.scale * lo + self.offset, self.scale * hi + self.offset)
        return not self.linear or min(ends) < -1e-6 or max(ends) > 1 + 1e-6

    def stored_values(self, decoded: np.ndarray) -> np.ndarray:
        """Decoded integers -> the stored values: bits above BitsStored (overlays, garbage) masked
        off, or sign-extended from bit BitsStored - 1 for signed data."""
        values = np.asarray(decoded)
        bits = self.bits_stored
        if values.dtype.kind not in "ui" or bits >= values.dtype.itemsize * 8:
            return values
        unsigned_type = values.dtype.str.replace("i", "u")
        unsigned = values.view(unsigned_type) & ((1 << bits) - 1)
        if not self.signed:
            return unsigned
        as_int = unsigned.astype(np.int64)
        return np.where(as_int >= 1 << (bits - 1), as_int - (1 << bits), as_int)

    def apply(self, decoded: np.ndarray) -> np.ndarray:
        """Decoded integers (any array, as a decoder returns them) -> unit gray float32 in [0, 1]."""
        values = self.stored_values(decoded)
        if self.linear:
            unit = values.astype(np.float32) * np.float32(self.scale) + np.float32(self.offset)
        else:
            unit = self._apply_tables(values)
        return np.clip(unit, 0.0, 1.0).astype(np.float32, copy=False)

    def _apply_tables(self, values: np.ndarray) -> np.ndarray:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut

        ds = self._dataset
        modality = apply_modality_lut(values, ds)
        if "VOILUTSequence" in ds:
            top = max((1 << int(ds.VOILUTSequence[0].LUTDescriptor[2])) - 1, 1)
            indices = np.rint(modality).astype(np.int64)  # a LUT is indexed by integers
            unit = apply_voi_lut(indices, ds, prefer_lut=True).astype(np.float64) / top
        elif (window := _window(ds)) is not None and window[2] == "SIGMOID":
            center, width, _ = window
            unit = 1.0 / (1.0 + np.exp(-4.0 * (modality.astype(np.float64) - center) / width))
        elif window is not None:
            a, b = _window_affine(*window)
            unit = a * modality.astype(np.float64) + b
        else:  # a Modality LUT table and no window: the table's output range
            table = np.asarray(ds.ModalityLUTSequence[0].LUTData, dtype=np.float64)
            unit = (modality - table.min()) / max(float(np.ptp(table)), 1.0)
        if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
            unit = 1.0 - unit
        return unit.astype(np.float32)


class DicomImage:
    """A parsed DICOM image: header checks done, pixels not decoded yet.

    ``meta`` holds the result-row tags (see :data:`META_TAGS`; patient identifiers only with
    ``include_phi``), plus ``transfer_syntax``, ``frames``, ``width`` and ``height``.
    """

    def __init__(self, ds, *, include_phi: bool = False):
        self.dataset = ds
        self.rows, self.columns = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
        self.frames = _int(ds, "NumberOfFrames", 1) or 1
        self.samples_per_pixel = _int(ds, "SamplesPerPixel", 1)
        self.transfer_syntax = ds.file_meta.TransferSyntaxUID
        self.meta = _meta(ds, include_phi)
        self.meta.update(transfer_syntax=str(self.transfer_syntax), frames=self.frames,
                         width=self.columns, height=self.rows)
        self.transform = PixelTransform.from_dataset(ds) if self.samples_per_pixel == 1 else None

    @property
    def encapsulated(self) -> bool:
        return self.transfer_syntax.is_encapsulated

    def first_frame(self) -> bytes:
        """The compressed bytes of frame 1 (encapsulated transfer syntaxes only)."""
        from pydicom.encaps import get_frame

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return get_frame(self.dataset.PixelData, 0, number_of_frames=self.frames)
        except Exception as exc:
            raise DcxError(f"cannot extract frame 1 from the pixel data ({_why(exc)})") from exc

    def unit_gray(self) -> np.ndarray:
        """Frame 1 decoded by pydicom with every rule applied: the reference path."""
        decoded = self.decoded_frame()
        if self.transform is not None:
            return self.transform.apply(decoded)
        return self._colour_unit_gray(decoded)

    def decoded_frame(self) -> np.ndarray:
        """Frame 1 as pydicom decodes it (numpy for uncompressed data, else the pylibjpeg /
        pyjpegls / Pillow plugins): integers, no rule applied yet; RGB for colour objects."""
        from pydicom.pixels import pixel_array

        if not self.encapsulated:
            self._check_native_length()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                decoded = pixel_array(self.dataset, index=0, decoding_plugin=self._plugin())
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # plugins written in Rust (pylibjpeg-rle) panic with a BaseException
            raise DcxError(f"cannot decode {self.transfer_syntax.name} pixel data ({_why(exc)})") from exc
        if decoded.shape[:2] != (self.rows, self.columns):
            raise DcxError(f"decoded frame is {decoded.shape[1]}x{decoded.shape[0]}, "
                           f"header says {self.columns}x{self.rows}")
        return decoded

    def _plugin(self) -> str:
        """Pillow for 8-bit JPEG: its libjpeg-turbo is the decoder of .jpg rasters and of DALI's CPU
        backend, so a JPEG decodes to the same values wherever it sits (pylibjpeg's libjpeg differed
        by 1-2 gray levels). Anything else: pydicom's default plugin order."""
        from pydicom.pixels import get_decoder

        jpeg8 = (str(self.transfer_syntax) in (_JPEG_BASELINE, _JPEG_EXTENDED)
                 and _int(self.dataset, "BitsStored", 8) <= 8)
        return "pillow" if jpeg8 and "pillow" in get_decoder(self.transfer_syntax).available_plugins else ""

    def _colour_unit_gray(self, rgb: np.ndarray) -> np.ndarray:
        ds = self.dataset
        if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            rgb = apply_color_lut(rgb, ds)
        if rgb.dtype == np.uint8:
            return to_unit_gray(rgb)
        bits = min(_int(ds, "BitsStored", 16), rgb.dtype.itemsize * 8)
        return to_unit_gray(rgb.astype(np.float32) / np.float32((1 << bits) - 1))

    def _check_native_length(self) -> None:
        bits = _int(self.dataset, "BitsAllocated", 16)
        expected = (self.rows * self.columns * self.frames * self.samples_per_pixel * bits + 7) // 8
        try:
            got = len(self.dataset.PixelData)  # read now (deferred)
        except Exception as exc:
            raise DcxError(f"cannot read the pixel data ({_why(exc)})") from exc
        if got < expected:
            raise DcxError(f"truncated pixel data: {got} of {expected} bytes")


def open_dicom(source: str | os.PathLike | bytes, *, include_phi: bool = False,
               series_rules: SeriesRules | None = None) -> DicomImage:
    """Parse the header of a DICOM file (a path or its bytes) and run every check that needs no
    pixels: is it an image, do the series rules accept it, are its dimensions sane and below
    ``MAX_PIXELS``. Raises :class:`Skipped` or :class:`DcxError` with the reason."""
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    # pydicom warns about every oddity of hostile headers; the outcome carries what matters
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            import pydicom

            ds = pydicom.dcmread(fp, force=True, defer_size=_DEFER)
        except Exception as exc:
            raise DcxError(f"not a readable DICOM file ({_why(exc)})") from exc
        ended_early = any("End of file" in str(w.message) for w in caught)
        _check_header(ds, ended_early, series_rules)
        return DicomImage(ds, include_phi=include_phi)


def _check_header(ds, ended_early: bool, series_rules: SeriesRules | None) -> None:
    _ensure_transfer_syntax(ds)
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        sop_class = _sop_class(ds)
        # pydicom returns what it read when a file ends early: an image object cut short, or
        # too little to say what it was. Only a known non-image class is skipped.
        if ended_early or "Rows" in ds or sop_class is None or "Image Storage" in sop_class:
            raise DcxError(f"{sop_class or 'an object of unknown class'} without pixel data "
                           "(truncated or corrupt?)")
        raise Skipped(f"not an image: {sop_class} has no pixel data")
    if "PixelData" not in ds:
        raise Skipped(f"not a radiograph: {_sop_class(ds) or 'the object'} holds float pixel data")
    if series_rules is not None and (why := series_rules.violation(ds)):
        raise Skipped(why)

    rows, cols, frames = _int(ds, "Rows", 0), _int(ds, "Columns", 0), _int(ds, "NumberOfFrames", 1) or 1
    if rows < 1 or cols < 1 or frames < 1:
        raise DcxError(f"invalid dimensions: Rows {rows}, Columns {cols}, NumberOfFrames {frames}")
    if rows * cols * frames > MAX_PIXELS:
        raise DcxError(f"{cols}x{rows} pixels x {frames} frames exceeds the {MAX_PIXELS} pixel limit")
    if _int(ds, "SamplesPerPixel", 1) not in (1, 3):
        raise DcxError(f"SamplesPerPixel {_int(ds, 'SamplesPerPixel', 1)} is not supported")
    if _int(ds, "BitsAllocated", 0) not in (1, 8, 16, 32):
        raise DcxError(f"BitsAllocated {_int(ds, 'BitsAllocated', 0)} is not supported")


def read_unit_gray(path: str | os.PathLike) -> np.ndarray:
    """The reference DICOM reader: frame 1 of ``path`` as unit-gray HxW float32 (all rules
    applied). Raises :class:`Skipped` for non-images and :class:`DcxError` for bad files."""
    try:
        return open_dicom(path).unit_gray()
    except DcxError as exc:
        raise type(exc)(f"{os.fspath(path)}: {exc.message}") from exc


# --------------------------------------------------------------------------- header helpers


def _ensure_transfer_syntax(ds) -> None:
    """Files without file meta (ACR-NEMA style) get the syntax pydicom read them with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if "TransferSyntaxUID" in getattr(ds, "file_meta", {}):
        return
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if not hasattr(ds, "file_meta"):
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit
                                      else ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _meta(ds, include_phi: bool) -> dict:
    tags = META_TAGS + (PHI_TAGS if include_phi else ())
    meta = {}
    for key, keyword in tags:
        try:
            value = ds.get(keyword)
        except Exception:  # a malformed element: the metadata is best effort
            value = None
        if value is not None and not isinstance(value, int):
            value = str(value).strip() or None
        meta[key] = value
    return meta


def _window(ds) -> tuple[float, float, str] | None:
    """The first usable VOI window as (center, width, VOILUTFunction), else None. A LINEAR
    window narrower than 1 (or any window of width <= 0) is unusable and ignored."""
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    center, width = _first_float(ds, "WindowCenter"), _first_float(ds, "WindowWidth")
    if center is None or width is None or width <= (1 if function == "LINEAR" else 0):
        return None
    return center, width, function


def _window_affine(center: float, width: float, function: str) -> tuple[float, float]:
    """A linear VOI window as y = a * m + b (before clipping), PS3.3 C.11.2.1.2 / C.11.2.1.3.2."""
    if function == "LINEAR_EXACT":
        return 1.0 / width, 0.5 - center / width
    return 1.0 / (width - 1), 0.5 - (center - 0.5) / (width - 1)


def _stored_range(bits: int, signed: bool) -> tuple[int, int]:
    """The smallest and largest value ``bits`` stored bits can hold."""
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def _first_float(ds, keyword: str) -> float | None:
    """A numeric tag as float (the first value of a multi-valued one); None when absent or bad."""
    from pydicom.multival import MultiValue

    try:
        value = ds.get(keyword)
        if isinstance(value, (MultiValue, list, tuple)):
            value = value[0] if len(value) else None
        value = None if value in (None, "") else float(value)
    except Exception:
        return None
    return value if value is not None and np.isfinite(value) else None


def _float(ds, keyword: str, default: float) -> float:
    value = _first_float(ds, keyword)
    return default if value is None else value


def _int(ds, keyword: str, default: int) -> int:
    try:
        value = ds.get(keyword)
        return default if value in (None, "") else int(value)
    except Exception:
        return default


def _sop_class(ds) -> str | None:
    """The registered name of the object's SOP class; None when absent or not a known class."""
    from pydicom.uid import UID

    uid = ds.get("SOPClassUID") or getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID")
    name = UID(str(uid)).name if uid else None
    return name if name and name != str(uid) else None


def _why(exc: BaseException) -> str:
    return exception_reason(exc, limit=240)
