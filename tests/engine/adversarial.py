"""An adversarial corpus: broken and odd files, each with what dcx-infer must make of it.

:func:`build_corpus` writes the files under a folder and returns, per relative path, an
:class:`Expect`: the status the row must have and a pattern its reason must match (``None``:
no reason). Everything is generated here (Pillow, pydicom, raw bytes) in well under a second,
so the suite needs no data set. ``tests/test_adversarial.py`` runs a real ``dcx-infer`` over it.

Classes of files:

- **ok**: valid images in every encoding the engine takes, also misnamed or nameless ones, a
  12-bit JPEG, DICOM with hostile header text;
- **noted**: damaged but decodable (a PNG chunk with a bad CRC, JPEG entropy data with a
  broken marker): scored ``ok``, and the reason says the file is damaged;
- **skipped**: files that are plainly not images (CSV, JSON, XML, PDF, NPZ, Thumbs.db, an
  empty text file, a DICOM structured report);
- **error**: files that claim to be images or DICOM and cannot be read, and entries that are
  not regular files (a FIFO, a broken symbolic link).
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Header text planted in DICOM files; no row may carry it outside its own column.
PHI_MARKER = "DOE^JOHN"
FORMULA = '=HYPERLINK("http://evil.example/x","click")'


@dataclass(frozen=True)
class Expect:
    status: str
    reason: str | None = None  # regex the reason must match (re.search); None: reason must be empty


def _phantom(size=(96, 80), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[0], 0 : size[1]]
    img = 60 + 120 * np.exp(-(((x - size[1] / 2) / (size[1] / 3)) ** 2 + ((y - size[0] / 2) / (size[0] / 2.5)) ** 2))
    return np.clip(img + rng.normal(0, 6, size), 0, 255).astype(np.uint8)


def _encode(array: np.ndarray, fmt: str, **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc & 0xFFFFFFFF)


def png_with_bad_idat_crc(gray: np.ndarray) -> bytes:
    """A PNG that decodes completely but whose IDAT checksum is wrong (a flipped bit on disk
    in the checksum itself, or a tool that rewrote the data and not the CRC)."""
    h, w = gray.shape
    raw = b"".join(b"\0" + gray[r].tobytes() for r in range(h))
    idat = zlib.compress(raw)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + _chunk(b"IDAT", idat, crc=zlib.crc32(b"IDAT" + idat) ^ 0x5A5A)
            + _chunk(b"IEND", b""))


def giant_png() -> bytes:
    """A valid PNG header claiming 100000 x 100000 pixels (a decompression bomb's opening)."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 1000))
            + _chunk(b"IEND", b""))


def jpeg_with_damaged_scan(jpeg: bytes) -> bytes:
    """Entropy-coded data with a stray marker in the middle of the scan (what a flipped byte
    in transit makes): libjpeg warns "corrupt JPEG data" and still returns an image."""
    sos = jpeg.index(b"\xff\xda")
    scan_start = sos + 2 + int.from_bytes(jpeg[sos + 2 : sos + 4], "big")
    middle = scan_start + (len(jpeg) - scan_start) // 2
    return jpeg[:middle] + b"\xff\xc8" + jpeg[middle + 2 :]


def twelve_bit_jpeg() -> bytes:
    """A valid 12-bit (extended process) JPEG: frame 1 of pydicom's own JPGExtended.dcm test file."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.encaps import generate_frames

    ds = pydicom.dcmread(get_testdata_file("JPGExtended.dcm"))
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def _dicom(path: Path, gray: np.ndarray, **tags) -> None:
    import pydicom

    from dcx.train.synth import write_dicom

    write_dicom(path, gray.astype(np.float32) / 255.0, "explicit-le-12bit")
    if tags:
        ds = pydicom.dcmread(path)
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
        ds.save_as(path)


def _structured_report(path: Path) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName = "SR", PHI_MARKER
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.save_as(path, enforce_file_format=True)


def _bad_numeric_tag(path: Path, gray: np.ndarray) -> None:
    """RescaleSlope (a DS, decimal string) holding a patient's name: pydicom raises on it,
    quoting the value."""
    import pydicom

    _dicom(path, gray)
    ds = pydicom.dcmread(path)
    ds.PatientName = PHI_MARKER
    ds.add_new(0x00281053, "DS", "1")
    ds.save_as(path)
    raw = path.read_bytes()
    slope = b"\x28\x00\x53\x10DS\x02\x001 "
    assert slope in raw
    path.write_bytes(raw.replace(slope, b"\x28\x00\x53\x10DS\x08\x00" + PHI_MARKER.encode()))


def _text_in_frame_count(path: Path, gray: np.ndarray) -> None:
    """NumberOfFrames (an IS, integer string) holding a patient's name."""
    _dicom(path, gray)
    raw = path.read_bytes()
    marker = b"\x28\x00\x08\x00IS"
    assert marker not in raw
    # an explicit-VR element placed in group order, after (0028,0004) PhotometricInterpretation
    photometric = raw.index(b"\x28\x00\x04\x00CS")
    end = photometric + 8 + int.from_bytes(raw[photometric + 6 : photometric + 8], "little")
    element = marker + len(PHI_MARKER).to_bytes(2, "little") + PHI_MARKER.encode()
    path.write_bytes(raw[:end] + element + raw[end:])


def build_corpus(root: Path) -> dict[str, Expect]:
    """Write the corpus under ``root``; return the expectation per path relative to ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    gray = _phantom()
    png, jpeg = _encode(gray, "PNG"), _encode(gray, "JPEG", quality=90)
    rgb = np.stack([gray, gray // 2, 255 - gray], axis=-1)
    files: dict[str, tuple[bytes | None, Expect]] = {
        # scored
        "ok/gray.png": (png, Expect("ok")),
        "ok/gray.jpg": (jpeg, Expect("ok")),
        "ok/colour.jpg": (_encode(rgb, "JPEG"), Expect("ok")),
        "ok/deep.png": (_encode((gray.astype(np.uint16) * 257), "PNG"), Expect("ok")),
        "ok/deep12.jpg": (twelve_bit_jpeg(), Expect("ok")),
        "ok/png-named.jpg": (png, Expect("ok")),
        "ok/IM000001": (png, Expect("ok")),
        "ok/1.2.840.99.5.77": (jpeg, Expect("ok")),
        # damaged, decodable: scored, with a note
        "noted/bad-crc.png": (png_with_bad_idat_crc(gray), Expect("ok", r"damaged.*CRC")),
        "noted/damaged-scan.jpg": (jpeg_with_damaged_scan(jpeg), Expect("ok", r"damaged")),
        # not images: skipped
        "misc/manifest.csv": (b"path,label\na.png,covid\n", Expect("skipped", r"^not an image")),
        "misc/meta.json": (b'{"a": 1}\n', Expect("skipped", r"^not an image")),
        "misc/notes.txt": (b"radiology notes\n", Expect("skipped", r"^not an image")),
        "misc/empty.txt": (b"", Expect("skipped", r"^not an image")),
        "misc/export.xml": (b"<?xml version='1.0'?><a/>\n", Expect("skipped", r"^not an image")),
        "misc/report.pdf": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n%%EOF\n", Expect("skipped", r"^not an image")),
        "misc/arrays.npz": (b"PK\x03\x04" + bytes(60), Expect("skipped", r"^not an image")),
        "misc/Thumbs.db": (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504), Expect("skipped", r"^not an image")),
        # claim to be images, are not readable: errors
        "bad/empty.png": (b"", Expect("error", r"empty")),
        "bad/text.png": (b"this is not a PNG, only its name says so\n", Expect("error", r"unsupported format")),
        "bad/truncated.png": (png[:200], Expect("error", r".")),
        "bad/truncated.jpg": (jpeg[:300], Expect("error", r".")),
        "bad/giant.png": (giant_png(), Expect("error", r"pixel limit")),
        "bad/garbage.dcm": (bytes(range(256)) * 4, Expect("error", r".")),
        "bad/fake-preamble.dcm": (b"\0" * 128 + b"DICM" + b"\xff" * 300, Expect("error", r".")),
        "bad/anim.gif": (b"GIF89a" + bytes(100), Expect("error", r"unsupported format")),
        "bad/gif-named.txt": (b"GIF89a" + bytes(100), Expect("error", r"unsupported format")),
        "bad/IM000002": (b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100" + b"\xff" * 40, Expect("error", r".")),
    }
    for rel, (data, _) in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    expect = {rel: e for rel, (_, e) in files.items()}

    _dicom(root / "dicom/formula.dcm", gray, AccessionNumber=FORMULA, PatientName=PHI_MARKER)
    expect["dicom/formula.dcm"] = Expect("ok")
    _structured_report(root / "dicom/report-sr.dcm")
    expect["dicom/report-sr.dcm"] = Expect("skipped", r"not an image")
    _bad_numeric_tag(root / "dicom/phi-in-slope.dcm", gray)
    expect["dicom/phi-in-slope.dcm"] = Expect("ok")  # the default slope; the value never shows
    _text_in_frame_count(root / "dicom/phi-in-frames.dcm", gray)
    expect["dicom/phi-in-frames.dcm"] = Expect("error", r".")

    os.mkfifo(root / "bad/pipe.png")
    expect["bad/pipe.png"] = Expect("error", r"not a regular file")
    os.symlink(root / "does-not-exist.png", root / "bad/dangling.png")
    expect["bad/dangling.png"] = Expect("error", r"broken symbolic link")

    # two names that differ only in how a non-UTF-8 byte would be escaped
    odd = root / "names"
    odd.mkdir()
    with open(os.path.join(os.fsencode(odd), b"x\xff.png"), "wb") as f:
        f.write(png)
    (odd / "x\\xff.png").write_bytes(png)
    expect[os.fsdecode(b"names/x\xff.png")] = Expect("ok")
    expect["names/x\\xff.png"] = Expect("ok")
    return expect
