"""dcx-synth: phantoms, lesion masks, the archive layout, DICOM variants and determinism."""
from __future__ import annotations

import csv
import hashlib
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import UID

from conftest import invoke
from dcx.core.errors import DcxError
from dcx.train.synth import ARCHIVE_DICOM_VARIANTS, DICOM_VARIANTS, make_phantom, write_archive, write_dicom
from dcx.train.synth_cli import main


def _read_manifest(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("label", ["covid", "normal", "pneumonia"])
def test_phantom_is_unit_gray_with_dark_lungs(label):
    image, mask = make_phantom(label, 128, seed=3)
    assert image.shape == mask.shape == (128, 128)
    assert image.dtype == np.float32 and mask.dtype == bool
    assert 0.0 <= image.min() and image.max() <= 1.0
    # Radiograph convention: the lung fields (upper thirds, left and right of the spine) are darker
    # than the mediastinum between them.
    lungs = np.r_[image[40:60, 20:45].ravel(), image[40:60, 83:108].ravel()]
    assert lungs.mean() < image[40:60, 58:70].mean() - 0.1


def test_lesion_masks_follow_the_class_pattern():
    for seed in range(4):
        _, normal = make_phantom("normal", 128, seed=seed)
        assert not normal.any()
        _, covid = make_phantom("covid", 128, seed=seed)
        left, right = covid[:, :64].sum(), covid[:, 64:].sum()
        assert left > 0 and right > 0, "covid opacities are bilateral"
        rows = np.nonzero(covid.any(axis=1))[0]
        assert rows.mean() > 64, "covid opacities sit in the lower zones"
        _, pneumonia = make_phantom("pneumonia", 128, seed=seed)
        assert min(pneumonia[:, :64].sum(), pneumonia[:, 64:].sum()) == 0, "consolidation in one lung only"
        assert pneumonia.sum() > covid.sum() / 4


def test_lesions_raise_the_density_inside_their_mask():
    image, mask = make_phantom("pneumonia", 128, seed=1)
    twin = make_phantom("normal", 128, seed=1)[0]  # same seed: same draws up to the lesion
    assert mask.any()
    assert image[mask].mean() > twin[mask].mean() + 0.1


def test_archive_layout_balance_and_patients(tmp_path):
    out = tmp_path / "a"
    manifest = write_archive(out, n=31, classes=["covid", "normal", "pneumonia"], size=64,
                             formats=["png", "jpg", "dcm"], seed=0)
    assert manifest == out / "manifest.csv"
    rows = _read_manifest(manifest)
    assert len(rows) == 31
    assert {"path", "label", "patient_id", "format", "transfer_syntax", "mask"} <= rows[0].keys()
    assert sorted(Counter(r["label"] for r in rows).values()) == [10, 10, 11]
    masks = np.load(out / "masks.npz")
    for r in rows:
        assert (out / r["path"]).is_file()
        mask = masks[r["mask"]]
        assert mask.shape == (64, 64) and mask.dtype == bool and mask.any() == (r["label"] != "normal")
        assert Path(r["path"]).parts[0] == r["label"]
        assert r["path"].endswith("." + r["format"])
        assert bool(r["transfer_syntax"]) == (r["format"] == "dcm")
    assert Counter(r["format"] for r in rows).keys() == {"png", "jpg", "dcm"}
    images = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.csv", "masks.npz"}
    assert images == {r["path"] for r in rows}, "the tree holds the listed radiographs and nothing else"
    per_class_formats = {(r["label"], r["format"]) for r in rows}
    assert len(per_class_formats) == 9, "every class meets every format"
    films = Counter(r["patient_id"] for r in rows)
    assert max(films.values()) == 2, "some patients have a follow-up film"
    for pid in films:
        assert len({r["label"] for r in rows if r["patient_id"] == pid}) == 1
    assert {r["variant"] for r in rows if r["format"] == "dcm"} == set(ARCHIVE_DICOM_VARIANTS)
    assert {r["variant"] for r in rows if r["format"] == "png"} == {"png-8bit", "png-16bit"}


def test_same_arguments_write_the_same_bytes(tmp_path):
    args = dict(n=15, classes=["covid", "normal", "pneumonia"], size=64, formats=["png", "jpg", "dcm"])
    write_archive(tmp_path / "a", seed=5, **args)
    write_archive(tmp_path / "b", seed=5, **args)
    write_archive(tmp_path / "c", seed=6, **args)
    a, b, c = (_digest(tmp_path / x) for x in "abc")
    assert len(a) == 17  # 15 images, the masks, the manifest
    assert a == b
    images = [k for k in a if k not in ("manifest.csv", "masks.npz")]
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in images)


def test_archive_files_decode_to_the_phantom(tmp_path):
    """Each written file reads back (pydicom / Pillow) as the same film, whatever its format."""
    from PIL import Image

    out = tmp_path / "a"
    rows = _read_manifest(write_archive(out, n=30, classes=["covid", "normal", "pneumonia"], size=64,
                                        formats=["png", "dcm"], seed=2))
    for r in rows:
        path = out / r["path"]
        if r["format"] == "png":
            raw = np.asarray(Image.open(path))
            unit = raw / (65535.0 if r["variant"] == "png-16bit" else 255.0)
        else:
            ds = pydicom.dcmread(path)
            raw = ds.pixel_array.astype(np.float64)
            top = 2 ** ds.BitsStored - 1
            unit = (top - raw) / top if ds.PhotometricInterpretation == "MONOCHROME1" else raw / top
        assert unit.shape == (64, 64)
        # Same anatomy: lungs dark, spine bright, in every format.
        assert unit[20:30, 10:22].mean() < unit[20:30, 29:35].mean() - 0.1, r["path"]


@pytest.mark.parametrize("variant", DICOM_VARIANTS)
def test_write_dicom_round_trips_each_variant(tmp_path, variant):
    image, _ = make_phantom("covid", 96, seed=1)
    path = write_dicom(tmp_path / f"{variant}.dcm", image, variant, seed=1, patient_id="SYNTH0042")
    ds = pydicom.dcmread(path)
    bits = 8 if variant == "jpeg-baseline" else 12
    expected = np.round(image * (2**bits - 1))
    if variant == "monochrome1":
        expected = 2**bits - 1 - expected
    got = ds.pixel_array.astype(np.float64)
    assert got.shape == (96, 96)
    assert ds.BitsStored == bits and ds.Rows == 96 and ds.SamplesPerPixel == 1
    if variant == "jpeg-baseline":
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
        assert np.abs(got - expected).mean() < 4.0 and np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.99
    else:
        np.testing.assert_array_equal(got, expected)
    assert ds.PhotometricInterpretation == ("MONOCHROME1" if variant == "monochrome1" else "MONOCHROME2")
    assert (ds.Modality, ds.BodyPartExamined, ds.ViewPosition) == ("DX", "CHEST", "PA")
    assert str(ds.PatientName) == "SYNTH^0042" and ds.PatientID == "SYNTH0042"
    for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID):
        assert UID(uid).is_valid
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert len({ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}) == 3
    assert path.read_bytes()[128:132] == b"DICM"


def test_write_dicom_takes_integer_pixels_as_stored_values(tmp_path):
    pixels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4096
    ds = pydicom.dcmread(write_dicom(tmp_path / "x.dcm", pixels, "rle"))
    np.testing.assert_array_equal(ds.pixel_array, pixels)
    with pytest.raises(DcxError, match="0..4095"):
        write_dicom(tmp_path / "y.dcm", pixels + 4096, "explicit-le-12bit")
    with pytest.raises(DcxError, match="unknown DICOM variant"):
        write_dicom(tmp_path / "z.dcm", pixels, "jpeg-xl")


def test_cli_writes_archive_and_refuses_non_empty_out(tmp_path):
    out = tmp_path / "s"
    result = invoke(main, [out, "--n", 9, "--size", 64, "--formats", "png,dcm", "--seed", 1])
    assert "wrote 9 images" in result.output
    first = _digest(out)
    refused = invoke(main, [out, "--n", 9, "--size", 64], expect_exit=1)
    assert refused.output.startswith("Error:") and "--force" in refused.output
    assert "Traceback" not in refused.output
    invoke(main, [out, "--n", 6, "--size", 64, "--classes", "covid,normal", "--force"])
    rows = _read_manifest(out / "manifest.csv")
    assert len(rows) == 6 and {r["label"] for r in rows} == {"covid", "normal"}
    assert not (out / "pneumonia").exists(), "--force replaces the earlier archive"
    assert _digest(out) != first


@pytest.mark.parametrize("args, message", [
    (["--classes", "covid,tuberculosis"], "tuberculosis"),
    (["--formats", "png,gif"], "gif"),
    (["--n", "2"], "fewer than"),
    (["--size", "8"], "--size"),
])
def test_cli_rejects_bad_options_in_one_line(tmp_path, args, message):
    result = invoke(main, [tmp_path / "s", *args], expect_exit=1)
    assert result.output.startswith("Error:") and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_help_teaches_with_examples():
    result = invoke(main, ["--help"])
    assert "Examples" in result.output and "--formats" in result.output and "MONOCHROME1" in result.output


@pytest.mark.parametrize("variant", DICOM_VARIANTS)
def test_reference_reader_sees_the_phantom_in_each_dicom_variant(tmp_path, variant):
    """The preprocessing contract's reader undoes depth and MONOCHROME1: same unit gray as written."""
    from dcx.core.reader import read_unit_gray

    image, _ = make_phantom("pneumonia", 64, seed=4)
    unit = read_unit_gray(write_dicom(tmp_path / "x.dcm", image, variant))
    error = np.abs(unit - image)
    if variant == "jpeg-baseline":
        assert error.mean() < 0.02
    else:
        assert error.max() <= 0.5 / 4095 + 1e-6


def test_no_file_variant_stands_in_for_the_class():
    """Bit depth and transfer syntax must be spread over every class, or a model could learn
    the file format instead of the disease."""
    from collections import Counter

    from dcx.train.synth import _plan_archive

    classes = ["covid", "normal", "pneumonia"]
    for formats in (["png"], ["png", "jpg", "dcm"]):
        plans = _plan_archive(90, classes, formats)
        per_variant = Counter((p.variant, p.label) for p in plans)
        for variant in {p.variant for p in plans}:
            counts = [per_variant[variant, c] for c in classes]
            assert max(counts) - min(counts) <= 1, (formats, variant, counts)


def test_every_dicom_codec_plugin_is_declared():
    """A clean install must encode and decode every syntax dcx writes or reads: the codec
    plugins are runtime dependencies of dcx itself, not something installed by hand."""
    from importlib.metadata import requires

    declared = {re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0].lower() for r in requires("dcx") or []}
    for plugin in ("pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle", "pyjpegls"):
        assert plugin in declared, f"{plugin} is not in setup.py's install_requires"
