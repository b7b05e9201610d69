"""Synthetic chest radiographs: learnable phantoms and a labelled archive in real file formats.

No real dataset can be downloaded where dcx is built and tested, so tests, the demo and the
benchmarks run on phantoms. Each phantom is a PA chest film drawn from an additive density
model (radiograph convention: dense = bright, air = dark): body outline, two lung fields,
ribs and clavicles, mediastinum and spine, heart shadow, diaphragm domes, lung texture,
exposure and quantum noise, with random pose and anatomy. Each class adds one pattern:

- ``covid``: bilateral, peripheral, lower-zone ground-glass opacities (several soft blobs);
- ``pneumonia``: one dense lobar consolidation in one lung;
- ``normal``: nothing.

Every image comes with its lesion mask. Anatomy and lesions belong to the *patient* (a
patient's follow-up film shows the same chest), pose, exposure and noise to the *image*.
All randomness derives from the seed, so the same arguments write the same bytes.

The archive writer covers the files real archives hold: 8- and 16-bit PNG, JPEG, and DICOM
in the transfer syntaxes of CR/DX archives (see :data:`DICOM_VARIANTS`).
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcx.core.errors import DcxError

from .lossless_jpeg import encode_lossless_jpeg

PATTERNS = ("covid", "normal", "pneumonia")
FORMATS = ("png", "jpg", "dcm")
#: DICOM variants the archive cycles through, in this order.
ARCHIVE_DICOM_VARIANTS = ("explicit-le-12bit", "monochrome1", "jpeg-baseline", "jpeg2000", "rle")
#: Every variant :func:`write_dicom` can write (the archive ones plus more real-archive cases;
#: lossless JPEG: first-order prediction (.70), which DALI decodes on a GPU, and predictor 7 (.57)).
DICOM_VARIANTS = ARCHIVE_DICOM_VARIANTS + ("implicit-le-12bit", "jpeg-ls", "jpeg-lossless-sv1", "jpeg-lossless")
#: The predictor (selection value) each lossless JPEG variant is written with.
LOSSLESS_JPEG_PREDICTOR = {"jpeg-lossless-sv1": 1, "jpeg-lossless": 7}
#: Every third PNG is 16-bit, as some exporters write them.
PNG16_EVERY = 3
#: Of every FOLLOW_UP_EVERY films of a class (the first ones), two are one patient's first and
#: follow-up films, so patient-wise splits matter.
FOLLOW_UP_EVERY = 4
MASKS_NAME = "masks.npz"
MANIFEST_COLUMNS = ("path", "label", "patient_id", "format", "variant", "transfer_syntax", "mask")

_TS = {
    "explicit-le-12bit": "1.2.840.10008.1.2.1",
    "monochrome1": "1.2.840.10008.1.2.1",
    "implicit-le-12bit": "1.2.840.10008.1.2",
    "jpeg-baseline": "1.2.840.10008.1.2.4.50",
    "jpeg2000": "1.2.840.10008.1.2.4.90",
    "rle": "1.2.840.10008.1.2.5",
    "jpeg-ls": "1.2.840.10008.1.2.4.80",
    "jpeg-lossless-sv1": "1.2.840.10008.1.2.4.70",
    "jpeg-lossless": "1.2.840.10008.1.2.4.57",
}
_SOP_CLASS = {"DX": "1.2.840.10008.5.1.4.1.1.1.1", "CR": "1.2.840.10008.5.1.4.1.1.1"}


# --------------------------------------------------------------------------- phantoms


@dataclass(frozen=True)
class Patient:
    """Anatomy and lesions of one synthetic patient, in normalised image coordinates.

    Coordinates: ``u`` left-to-right and ``v`` top-to-bottom, both in [-1, 1]. PA view, so the
    patient's left lung (and the heart) is on the image's right (u > 0).
    """

    label: str
    body_width: float
    lung_offset: float  # lung centre distance from the midline
    lung_half_width: float
    lung_top: float
    dome_right: float  # diaphragm level under the image-left lung (liver side, higher)
    dome_left: float
    heart: tuple[float, float, float, float]  # centre u, centre v, half axes
    rib_spacing: float
    rib_start: float
    texture_seed: int
    blobs: tuple[tuple[float, ...], ...] = ()  # covid: (side, lateral frac, height frac, sigma, strength)
    consolidation: tuple = ()  # pneumonia: (side, lower lobe?, fissure height frac, slope, strength)


def make_patient(rng: np.random.Generator, label: str) -> Patient:
    """Draw one patient's anatomy and the lesions of ``label``."""
    if label not in PATTERNS:
        raise DcxError(f"no phantom pattern for class {label!r}; dcx-synth draws {', '.join(PATTERNS)}")
    dome_right = rng.uniform(0.36, 0.46)
    blobs, consolidation = (), ()
    if label == "covid":
        blobs = tuple(
            (side, rng.uniform(0.3, 0.85), rng.uniform(0.5, 0.9), rng.uniform(0.09, 0.13), rng.uniform(0.8, 1.0))
            for side in (-1.0, 1.0)
            for _ in range(rng.integers(3, 6))
        )
    elif label == "pneumonia":
        lower = bool(rng.random() < 0.65)
        consolidation = (rng.choice([-1.0, 1.0]), lower, rng.uniform(0.4, 0.55) if lower else rng.uniform(0.45, 0.6),
                         rng.uniform(-0.25, 0.25), rng.uniform(0.85, 1.0))
    return Patient(
        label=label,
        body_width=rng.uniform(0.8, 0.92),
        lung_offset=rng.uniform(0.34, 0.40),
        lung_half_width=rng.uniform(0.23, 0.28),
        lung_top=rng.uniform(-0.80, -0.70),
        dome_right=dome_right,
        dome_left=dome_right + rng.uniform(0.03, 0.08),
        heart=(rng.uniform(0.12, 0.18), rng.uniform(0.24, 0.32), rng.uniform(0.27, 0.33), rng.uniform(0.19, 0.24)),
        rib_spacing=rng.uniform(0.125, 0.15),
        rib_start=rng.uniform(-0.82, -0.74),
        texture_seed=int(rng.integers(2**31)),
        blobs=blobs,
        consolidation=consolidation,
    )


def _soft(d: np.ndarray, eps: float) -> np.ndarray:
    """Soft inside-indicator of a signed distance (positive inside): anti-aliased edges."""
    return 0.5 * (1.0 + np.tanh(d / np.float32(eps)))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean unit-ish noise varying over ``size / cells`` pixels (bicubic upsampling)."""
    from PIL import Image

    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))


def render(patient: Patient, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One film of ``patient``: (unit-gray float32 HxW in [0, 1], lesion mask bool HxW).

    The smooth anatomy is drawn at most :data:`RENDER_MAX` pixels wide and upsampled; exposure
    and quantum noise are applied at full size. That keeps 512-px archives fast.
    """
    work = min(size, RENDER_MAX)
    angle, scale = np.deg2rad(rng.uniform(-4, 4)), rng.uniform(0.92, 1.04)
    shift = rng.uniform(-0.04, 0.04, size=2)
    density, lesion_score = _density(patient, work, angle, scale, shift)
    if work < size:
        density, lesion_score = _upsample(density, size), _upsample(lesion_score, size)
    # Exposure: gain, offset, gamma and a gentle heel-effect gradient; then quantum noise.
    across = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    gain = rng.uniform(0.9, 1.1) * (1.0 + 0.05 * rng.uniform(-1, 1) * across[None, :])
    image = np.clip(rng.uniform(0.03, 0.08) + gain * density, 0.0, 1.0) ** np.float32(rng.uniform(0.85, 1.15))
    image += rng.normal(0.0, rng.uniform(0.01, 0.02), size=image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0).astype(np.float32), lesion_score > 1.0


#: Largest side at which anatomy is computed; larger films are upsampled from it.
RENDER_MAX = 256


def _upsample(field: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(field).resize((size, size), Image.Resampling.BICUBIC))


def _density(p: Patient, size: int, angle: float, scale: float, shift) -> tuple[np.ndarray, np.ndarray]:
    """Projected density (bright = dense) and a lesion score (> 1 inside a lesion) on a size^2 grid."""
    eps = 1.6 / size  # edge softness: about one pixel in normalised units
    axis = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    x, y = axis[None, :] - np.float32(shift[0]), axis[:, None] - np.float32(shift[1])
    c, s = np.float32(np.cos(angle) / scale), np.float32(np.sin(angle) / scale)
    u, v = c * x + s * y, -s * x + c * y

    texture = _smooth_noise(np.random.default_rng(p.texture_seed), size, 28)
    body = _soft(1.0 - (np.abs(u / p.body_width) ** 4 + np.abs((v - 0.2) / 1.3) ** 4), 4 * eps)

    # The heart lies in front of the left lung: where it projects, the film shows soft tissue.
    hu, hv, ha, hb = p.heart
    heart = _soft(1.0 - np.sqrt(((u - hu) / ha) ** 2 + ((v - hv) / hb) ** 2), 3 * eps)
    aerated = 1.0 - 0.8 * heart

    lungs, lesion_density, lesion_score = np.zeros_like(u), np.zeros_like(u), np.zeros_like(u)
    for side, dome in ((-1.0, p.dome_right), (1.0, p.dome_left)):
        t = (u - side * p.lung_offset) * side  # lateral coordinate inside this lung
        a = p.lung_half_width
        height = np.clip((v - p.lung_top) / (dome - p.lung_top), 0.0, 1.0)
        lateral = a * (0.55 + 0.45 * np.sqrt(height)) - t
        medial = t + a * (0.85 - 0.15 * height)
        apex = v - p.lung_top - 0.2 * (t / a) ** 2
        diaphragm = dome - 0.10 * (1.0 - ((t + 0.1 * a) / (1.15 * a)) ** 2) - v
        lung = _soft(np.minimum(np.minimum(lateral, medial), np.minimum(apex, diaphragm)), 2 * eps) * aerated
        lungs += lung
        if p.blobs:
            ggo = np.zeros_like(u)
            for b_side, lat, frac, sigma, strength in p.blobs:
                if b_side != side:
                    continue
                bu = side * (p.lung_offset + lat * a)
                bv = p.lung_top + frac * (dome - p.lung_top)
                ggo += strength * np.exp(-((u - bu) ** 2 + (v - bv) ** 2) / np.float32(2 * sigma * sigma))
            ggo = np.minimum(ggo, 1.0) * lung
            lesion_density += 0.38 * ggo * (0.8 + 0.2 * np.tanh(texture))
            lesion_score = np.maximum(lesion_score, ggo / 0.3)
        if p.consolidation and p.consolidation[0] == side:
            _, lower, frac, slope, strength = p.consolidation
            fissure = p.lung_top + frac * (dome - p.lung_top) + slope * (t / a) * 0.15
            part = _soft((v - fissure) if lower else (fissure - v), 3 * eps)
            cons = strength * part * lung
            lesion_density += 0.34 * cons * (0.9 + 0.1 * np.tanh(texture))
            lesion_score = np.maximum(lesion_score, cons / 0.5)

    mediastinum = _soft(0.11 + 0.05 * np.clip(v + 0.3, 0, 1) - np.abs(u), 3 * eps) * _soft(v + 0.95, 4 * eps)
    spine = _soft(0.055 - np.abs(u), 2 * eps) * (0.8 + 0.2 * np.cos(np.float32(2 * np.pi / 0.09) * v))
    reach = np.abs(u)
    phase = (v - p.rib_start + 0.12 * reach - 0.45 * reach**2) / p.rib_spacing
    ribs = ((1 + np.cos(np.float32(2 * np.pi) * phase)) / 2) ** 3 * _soft(phase, 0.2) * _soft(10.5 - phase, 0.2)
    ribs *= _soft(reach - 0.06, 2 * eps) * _soft(p.body_width - 0.06 - reach, 4 * eps)
    clavicle_line = p.lung_top - 0.02 - 0.18 * reach + 0.35 * reach**2
    clavicles = np.exp(-(((v - clavicle_line) / 0.025) ** 2)) * _soft(0.65 - reach, 4 * eps)

    air = np.clip(lungs, 0.0, 1.0) * (1.0 + 0.06 * texture)  # texture: vascular markings
    density = (0.55 * body - 0.36 * air + 0.06 * mediastinum + 0.08 * spine
               + body * (0.05 * ribs + 0.06 * clavicles) + lesion_density
               + 0.06 * body * _soft(v - p.dome_left, 0.05))
    return density.astype(np.float32), lesion_score.astype(np.float32)


def make_phantom(label: str, size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One phantom of class ``label``: (unit-gray float32 size x size, lesion mask bool)."""
    return render(make_patient(np.random.default_rng([seed, 0]), label), size, np.random.default_rng([seed, 1]))


# --------------------------------------------------------------------------- DICOM


def write_dicom(path: str | os.PathLike, pixels: np.ndarray, variant: str, *, bits_stored: int = 12,
                seed: int = 0, patient_id: str = "SYNTH0001", modality: str = "DX") -> Path:
    """Write a single-frame chest DICOM of ``variant`` (see :data:`DICOM_VARIANTS`).

    ``pixels`` are display values in the radiograph convention (bright = dense): a float
    array in [0, 1] is quantised to the variant's depth (``bits_stored`` bits; 8 for
    ``jpeg-baseline``); an integer array is stored as given and must fit that depth.
    ``monochrome1`` stores the inverted values (``2**bits_stored - 1 - pixels``), as such
    archives do. UIDs are derived from ``seed``, ``patient_id`` and the file name, so the same
    call writes the same bytes.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID

    if variant not in DICOM_VARIANTS:
        raise DcxError(f"unknown DICOM variant {variant!r}; choose from {', '.join(DICOM_VARIANTS)}")
    if modality not in _SOP_CLASS:
        raise DcxError(f"modality must be one of {', '.join(_SOP_CLASS)}")
    bits = 8 if variant == "jpeg-baseline" else bits_stored
    if not 8 <= bits <= 16:
        raise DcxError(f"bits_stored must be 8..16, got {bits}")
    stored = _quantise(np.asarray(pixels), bits)
    if stored.ndim != 2:
        raise DcxError(f"write_dicom takes one 2-D image, got shape {stored.shape}")
    if variant == "monochrome1":
        stored = ((1 << bits) - 1 - stored).astype(stored.dtype)

    path = Path(path)
    number = "".join(ch for ch in patient_id if ch.isdigit())[-4:].rjust(4, "0")
    uid = _uid_maker(seed, patient_id, path.name)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = _SOP_CLASS[modality]
    ds.file_meta.MediaStorageSOPInstanceUID = uid("sop")
    ds.file_meta.TransferSyntaxUID = UID(_TS["explicit-le-12bit"])
    ds.SOPClassUID, ds.SOPInstanceUID = _SOP_CLASS[modality], uid("sop")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid("study"), uid("series")
    ds.FrameOfReferenceUID = uid("frame")
    ds.PatientName, ds.PatientID = f"SYNTH^{number}", patient_id
    ds.PatientIdentityRemoved = "YES"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20200401", "120000", "1", ""
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = modality, "CHEST", "PA"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Manufacturer, ds.SeriesDescription = "dcx-synth", "synthetic phantom, no patient data"
    ds.ImagerPixelSpacing = [f"{350 / stored.shape[1]:.4f}", f"{350 / stored.shape[1]:.4f}"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1" if variant == "monochrome1" else "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = stored.dtype.itemsize * 8, bits, bits - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.BurnedInAnnotation = "NO"

    if variant == "jpeg-baseline":
        _set_jpeg_baseline(ds, stored)
    elif variant in LOSSLESS_JPEG_PREDICTOR:
        _set_lossless_jpeg(ds, stored, bits, variant)
    elif variant in ("jpeg2000", "rle", "jpeg-ls"):
        ds.PixelData = stored.tobytes()
        ds.compress(_TS[variant], encoding_plugin="pylibjpeg" if variant == "rle" else "",
                    generate_instance_uid=False)
    else:
        ds.PixelData = stored.tobytes()
        ds.file_meta.TransferSyntaxUID = UID(_TS[variant])
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _quantise(pixels: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    dtype = np.uint8 if bits == 8 else np.uint16
    if pixels.dtype.kind == "f":
        return np.round(np.clip(pixels, 0.0, 1.0) * top).astype(dtype)
    if pixels.dtype.kind not in "ui" or pixels.size and (pixels.min() < 0 or pixels.max() > top):
        raise DcxError(f"integer pixels must lie in 0..{top} for {bits} bits stored")
    return pixels.astype(dtype)


def _uid_maker(seed: int, patient_id: str, name: str):
    from pydicom.uid import generate_uid

    return lambda kind: generate_uid(entropy_srcs=["dcx-synth", str(seed), patient_id, name, kind])


def _set_jpeg_baseline(ds, stored: np.ndarray) -> None:
    """JPEG baseline (8-bit lossy): Pillow encodes, pydicom encapsulates one fragment."""
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format="JPEG", quality=92)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.LossyImageCompressionRatio = f"{stored.size / len(buf.getvalue()):.2f}"
    ds.file_meta.TransferSyntaxUID = UID(_TS["jpeg-baseline"])


def _set_lossless_jpeg(ds, stored: np.ndarray, bits: int, variant: str) -> None:
    """Lossless JPEG (process 14) from :mod:`dcx.train.lossless_jpeg`, one fragment."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    ds.PixelData = encapsulate([encode_lossless_jpeg(stored, bits, LOSSLESS_JPEG_PREDICTOR[variant])])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = UID(_TS[variant])


# --------------------------------------------------------------------------- archive


@dataclass
class _Plan:
    """Which class, patient, format and variant each image of the archive gets."""

    label: str
    patient: int
    fmt: str
    variant: str


def _plan_archive(n: int, classes: list[str], formats: list[str]) -> list[_Plan]:
    """Classes round-robin (balanced, remainder to the first classes); formats cycle per round
    so every class meets every format; DICOM variants and 8/16-bit PNG cycle per class and
    format, so no variant (bit depth, transfer syntax) can stand in for the class.
    The first images of each class pair up as follow-up films of one patient."""
    plans: list[_Plan] = []
    per_class = {c: 0 for c in classes}
    counts = {c: n // len(classes) + (i < n % len(classes)) for i, c in enumerate(classes)}
    patient_of: dict[tuple[str, int], int] = {}
    fmt_count = {(c, f): 0 for c in classes for f in formats}
    for i in range(n):
        label = classes[i % len(classes)]
        j = per_class[label]
        per_class[label] += 1
        pairs = counts[label] // FOLLOW_UP_EVERY
        slot = j // 2 if j < 2 * pairs else j - pairs
        key = (label, slot)
        if key not in patient_of:
            patient_of[key] = len(patient_of) + 1
        fmt = formats[(i // len(classes)) % len(formats)]
        k = fmt_count[label, fmt] + classes.index(label)  # staggered: small archives still cover every variant
        fmt_count[label, fmt] += 1
        variant = {"png": "png-16bit" if k % PNG16_EVERY == PNG16_EVERY - 1 else "png-8bit",
                   "jpg": "jpeg",
                   "dcm": ARCHIVE_DICOM_VARIANTS[k % len(ARCHIVE_DICOM_VARIANTS)]}[fmt]
        plans.append(_Plan(label, patient_of[key], fmt, variant))
    return plans


def write_archive(out: str | os.PathLike, *, n: int = 300, classes=PATTERNS, size: int = 512,
                  formats=("png",), seed: int = 0, force: bool = False, on_image=None) -> Path:
    """Write ``n`` phantoms as ``out/<class>/<file>`` and ``out/manifest.csv`` (paths relative
    to ``out``); return the manifest path.

    Lesion masks go to one file, ``out/masks.npz``, keyed by the manifest's ``mask`` column
    (``np.load(out / "masks.npz")[row["mask"]]``): kept out of the image tree so that every
    image file under ``out`` is a radiograph for tools that walk it.

    ``on_image()`` is called after each image (progress bars)."""
    classes, formats = list(classes), list(formats)
    _check_args(out, n, classes, size, formats, force)
    out = Path(out)
    plans = _plan_archive(n, classes, formats)
    width = max(4, len(str(n)))
    rows, masks = [], {}
    for i, plan in enumerate(plans):
        patient = make_patient(np.random.default_rng([seed, plan.patient, 0]), plan.label)
        image, mask = render(patient, size, np.random.default_rng([seed, plan.patient, 1, i]))
        patient_id = f"SYNTH{plan.patient:0{width}d}"
        stem = f"{plan.label}-{i:0{width}d}"
        rel = Path(plan.label) / f"{stem}.{plan.fmt}"
        ts = _write_image(out / rel, image, plan, seed=seed, patient_id=patient_id)
        masks[stem] = mask
        rows.append({"path": rel.as_posix(), "label": plan.label, "patient_id": patient_id, "format": plan.fmt,
                     "variant": plan.variant, "transfer_syntax": ts, "mask": stem})
        if on_image is not None:
            on_image()
    _write_masks(out / MASKS_NAME, masks)
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def _check_args(out, n, classes, size, formats, force) -> None:
    if len(set(classes)) != len(classes) or not classes:
        raise DcxError(f"classes must be distinct and non-empty, got {classes}")
    if n < len(classes):
        raise DcxError(f"--n {n} is fewer than the {len(classes)} classes")
    unknown = [c for c in classes if c not in PATTERNS]
    if unknown:
        raise DcxError(f"no phantom pattern for {', '.join(unknown)}; choose from {', '.join(PATTERNS)}")
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise DcxError(f"unknown format {', '.join(bad) or '(none)'}; choose from {', '.join(FORMATS)}")
    if not 32 <= size <= 4096:
        raise DcxError(f"--size must be 32..4096 pixels, got {size}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DcxError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise DcxError(f"{out} is not empty; pass --force to write into it")
        import shutil

        for name in ["manifest.csv", MASKS_NAME, *PATTERNS]:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()


def _write_image(path: Path, image: np.ndarray, plan: _Plan, *, seed: int, patient_id: str) -> str:
    """Write one phantom in its planned format; the DICOM transfer syntax UID or ''."""
    if plan.fmt == "dcm":
        write_dicom(path, image, plan.variant, seed=seed, patient_id=patient_id)
        return _TS[plan.variant]
    if plan.variant == "png-16bit":
        _write_png(path, np.round(image * 65535).astype(np.uint16))
    elif plan.fmt == "png":
        _write_png(path, np.round(image * 255).astype(np.uint8))
    else:
        from PIL import Image

        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(path, format="JPEG", quality=92)
    return ""


def _write_masks(path: Path, masks: dict[str, np.ndarray]) -> None:
    """An ``.npz`` that ``np.load`` reads, written with fixed zip timestamps so bytes repeat."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, mask in masks.items():
            buf = io.BytesIO()
            np.save(buf, mask, allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue(),
                        compress_type=zipfile.ZIP_DEFLATED)


def _write_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG", compress_level=1)  # noise barely compresses: favour speed
