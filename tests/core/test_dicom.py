"""DICOM rules (dcx.core.dicom): real files, golden values, every transfer syntax, the pixel
rules one by one, non-image objects, series rules, PHI and hostile headers."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from dcx.core import dicom
from dcx.core.errors import DcxError
from dcx.core.preprocess import MAX_PIXELS
from dcx.core.reader import read_unit_gray
from dcx.train.synth import DICOM_VARIANTS, make_phantom, write_dicom


def shared_dicoms(shared_data):
    files = sorted((shared_data / "dicom").glob("*.dcm"))
    assert len(files) >= 20, "the shared DICOM folder lost files"
    return files


def native(tmp_path, pixels, name="x.dcm", **tags):
    """An explicit-LE DICOM of integer ``pixels`` (12 bits stored) with ``tags`` set on top."""
    path = write_dicom(tmp_path / name, np.asarray(pixels, dtype=np.uint16), "explicit-le-12bit")
    ds = pydicom.dcmread(path)
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    return path


RAMP = (np.arange(48 * 40).reshape(48, 40) * 2).astype(np.uint16)  # 0..3838 in 12 bits


# --------------------------------------------------------------------------- real files


def test_every_shared_file_reads_through_the_reference_reader(shared_data):
    for path in shared_dicoms(shared_data):
        unit = read_unit_gray(path)  # the core reader delegates DICOM here
        assert unit.dtype == np.float32 and unit.ndim == 2, path.name
        assert 0.0 <= unit.min() < unit.max() <= 1.0, path.name
        image = dicom.open_dicom(path)
        assert unit.shape == (image.rows, image.columns)


def _independent_unit_gray(path):
    """Golden path, torchxrayvision style: pydicom's own pixel_array, modality LUT and
    windowing, normalised by the range pydicom windows into, MONOCHROME1 flipped."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path, force=True)
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    values = apply_modality_lut(ds.pixel_array, ds)
    if "WindowCenter" in ds:
        top = 2 ** ds.BitsStored - 1
        unit = apply_voi_lut(values, ds) / top  # pydicom windows into 0..2**BitsStored-1
    else:
        unit = values / (2 ** ds.BitsStored - 1)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        unit = 1.0 - unit
    return unit


@pytest.mark.parametrize("name", ["fodicom__CR-MONO1-10-chest.dcm", "nema_wg04__RG1_J2KI.dcm",
                                  "udacity__test2.dcm"])
def test_real_files_match_an_independent_pydicom_computation(shared_data, name):
    path = shared_data / "dicom" / name
    ours = dicom.read_unit_gray(path)
    golden = _independent_unit_gray(path)
    assert np.abs(ours - golden).max() < 1e-5


def test_golden_statistics_of_the_monochrome1_cr(shared_data):
    """Frozen numbers for one file (10-bit MONOCHROME1, window 550/1024): they change only if the
    rules or pydicom's decoding change."""
    unit = dicom.read_unit_gray(shared_data / "dicom" / "fodicom__CR-MONO1-10-chest.dcm")
    assert unit.shape == (440, 440)
    assert unit.mean() == pytest.approx(0.5466, abs=1e-4)
    assert unit.min() == pytest.approx(1.0 - (979 - 549.5) / 1023 - 0.5, abs=1e-5)  # stored max 979
    assert unit.max() == 1.0  # stored 0 lies outside the window: clipped


def test_one_image_in_two_transfer_syntaxes_agrees(shared_data):
    """RG1 as lossy JPEG 2000 (DALI's kind of frame) and as near-lossless JPEG-LS (pyjpegls)."""
    j2k = dicom.read_unit_gray(shared_data / "dicom" / "nema_wg04__RG1_J2KI.dcm")
    jls = dicom.read_unit_gray(shared_data / "dicom" / "nema_wg04__RG1_JLSN.dcm")
    assert j2k.shape == jls.shape == (1955, 1841)
    assert np.abs(j2k - jls).mean() < 2e-3


def test_file_without_transfer_syntax_reads_as_implicit_little_endian(shared_data):
    image = dicom.open_dicom(shared_data / "dicom" / "fodicom__CR-MONO1-10-chest.dcm")
    assert image.meta["transfer_syntax"] == "1.2.840.10008.1.2"
    assert image.meta["bits_stored"] == 10 and image.meta["photometric"] == "MONOCHROME1"


def test_series_rules_on_the_altered_headers(shared_data):
    rules = dicom.SeriesRules()
    folder = shared_data / "dicom"
    with pytest.raises(dicom.Skipped, match="BodyPartExamined RIBCAGE not in"):
        dicom.open_dicom(folder / "udacity__test4.dcm", series_rules=rules)
    with pytest.raises(dicom.Skipped, match="Modality CT not in"):
        dicom.open_dicom(folder / "udacity__test5.dcm", series_rules=rules)
    dicom.open_dicom(folder / "udacity__test1.dcm", series_rules=rules)  # no ViewPosition: passes
    dicom.open_dicom(folder / "udacity__test5.dcm")  # no rules: everything passes


# --------------------------------------------------------------------------- transfer syntaxes


@pytest.mark.parametrize("variant", DICOM_VARIANTS)
def test_every_synthetic_transfer_syntax_reads_back_the_phantom(tmp_path, variant):
    phantom, _ = make_phantom("covid", size=96, seed=3)
    path = write_dicom(tmp_path / f"{variant}.dcm", phantom, variant)
    unit = dicom.read_unit_gray(path)
    bits = 8 if variant == "jpeg-baseline" else 12
    expected = np.round(phantom * (2 ** bits - 1)) / (2 ** bits - 1)
    diff = np.abs(unit - expected)
    if variant in ("jpeg-baseline", "jpeg2000"):  # lossy
        assert diff.mean() < 0.01
    else:  # lossless, MONOCHROME1 undone
        assert diff.max() < 1e-6


# --------------------------------------------------------------------------- the rules


def test_full_range_of_stored_bits_without_a_window(tmp_path):
    unit = dicom.read_unit_gray(native(tmp_path, RAMP))
    assert np.allclose(unit, RAMP / 4095, atol=1e-7)


def test_rescale_and_linear_window(tmp_path):
    path = native(tmp_path, RAMP, RescaleSlope="2", RescaleIntercept="-1000", WindowCenter="1000",
                  WindowWidth="2001")
    m = RAMP * 2.0 - 1000
    expected = np.clip((m - 999.5) / 2000 + 0.5, 0, 1)
    assert np.allclose(dicom.read_unit_gray(path), expected, atol=1e-6)


def test_first_of_several_windows_and_linear_exact(tmp_path):
    path = native(tmp_path, RAMP, WindowCenter=["2000", "100"], WindowWidth=["1000", "50"],
                  VOILUTFunction="LINEAR_EXACT")
    expected = np.clip((RAMP - 2000.0) / 1000 + 0.5, 0, 1)
    assert np.allclose(dicom.read_unit_gray(path), expected, atol=1e-6)


def test_sigmoid_window(tmp_path):
    path = native(tmp_path, RAMP, WindowCenter="2000", WindowWidth="1000", VOILUTFunction="SIGMOID")
    expected = 1 / (1 + np.exp(-4 * (RAMP - 2000.0) / 1000))
    assert not dicom.open_dicom(path).transform.linear
    assert np.allclose(dicom.read_unit_gray(path), expected, atol=1e-6)


def test_voi_lut_table_wins_over_the_window(tmp_path):
    path = native(tmp_path, RAMP, WindowCenter="100", WindowWidth="10")
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = (np.sqrt(np.arange(4096) / 4095) * 65535).astype(np.uint16).tobytes()
    ds.VOILUTSequence = [item]
    ds.save_as(path)
    assert np.allclose(dicom.read_unit_gray(path), np.sqrt(RAMP / 4095), atol=1e-4)


def test_degenerate_window_is_ignored(tmp_path):
    path = native(tmp_path, RAMP, WindowCenter="100", WindowWidth="1")
    assert np.allclose(dicom.read_unit_gray(path), RAMP / 4095, atol=1e-7)


def test_monochrome1_is_inverted(tmp_path):
    path = native(tmp_path, RAMP, PhotometricInterpretation="MONOCHROME1")
    assert np.allclose(dicom.read_unit_gray(path), 1 - RAMP / 4095, atol=1e-6)


def test_bits_above_bits_stored_are_masked(tmp_path):
    path = native(tmp_path, RAMP)
    ds = pydicom.dcmread(path)
    ds.PixelData = (RAMP | 0xF000).tobytes()  # overlay garbage in the high nibble
    ds.save_as(path)
    assert np.allclose(dicom.read_unit_gray(path), RAMP / 4095, atol=1e-7)


def test_signed_pixels_use_the_signed_range(tmp_path):
    signed = (RAMP.astype(np.int32) - 2048).astype(np.int16)  # -2048..1790
    path = native(tmp_path, signed.view(np.uint16) & 0x0FFF, PixelRepresentation=1)
    assert np.allclose(dicom.read_unit_gray(path), (signed + 2048) / 4095, atol=1e-6)


def test_the_transform_is_one_affine_map_when_linear(tmp_path):
    """What the DALI path applies (scale, offset, clip) equals apply() on the same values."""
    path = native(tmp_path, RAMP, RescaleSlope="0.5", WindowCenter="900", WindowWidth="700",
                  PhotometricInterpretation="MONOCHROME1")
    t = dicom.open_dicom(path).transform
    assert t.linear and t.clips
    assert np.allclose(np.clip(t.scale * RAMP + t.offset, 0, 1), t.apply(RAMP), atol=1e-6)
    assert not dicom.open_dicom(native(tmp_path, RAMP, name="plain.dcm")).transform.clips


def test_multi_frame_scores_the_first_frame(tmp_path):
    frames = np.stack([RAMP, RAMP[::-1], RAMP // 2])
    path = native(tmp_path, RAMP, NumberOfFrames=3)
    ds = pydicom.dcmread(path)
    ds.PixelData = frames.astype(np.uint16).tobytes()
    ds.save_as(path)
    image = dicom.open_dicom(path)
    assert image.meta["frames"] == 3
    assert np.allclose(image.unit_gray(), RAMP / 4095, atol=1e-7)
    compressed = tmp_path / "j2k.dcm"
    ds.compress(pydicom.uid.JPEG2000Lossless, generate_instance_uid=False)
    ds.save_as(compressed)
    frame = dicom.open_dicom(compressed).first_frame()
    assert frame[:4] == b"\xff\x4f\xff\x51"  # one J2K codestream, not three
    assert np.allclose(dicom.read_unit_gray(compressed), RAMP / 4095, atol=1e-7)


def test_colour_dicom_becomes_luma(tmp_path):
    rgb = np.zeros((8, 10, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    path = native(tmp_path, RAMP)
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PlanarConfiguration = 8, 10, 3, 0
    ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = "RGB", 8, 8, 7
    ds.PixelData = rgb.tobytes()
    ds.save_as(path)
    assert np.allclose(dicom.read_unit_gray(path), (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255, atol=1e-6)


# --------------------------------------------------------------------------- what is not scored


def _object_without_pixels(path, sop_class):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("sop_class,name", [
    ("1.2.840.10008.5.1.4.1.1.88.11", "Basic Text SR Storage"),
    ("1.2.840.10008.5.1.4.1.1.11.1", "Grayscale Softcopy Presentation State Storage"),
    ("1.2.840.10008.1.3.10", "Media Storage Directory Storage"),
])
def test_non_image_objects_are_skipped_with_their_class(tmp_path, sop_class, name):
    path = _object_without_pixels(tmp_path / "obj.dcm", sop_class)
    with pytest.raises(dicom.Skipped, match=f"not an image: {name}"):
        dicom.open_dicom(path)
    with pytest.raises(DcxError, match="not an image"):  # the core reader raises it too
        read_unit_gray(path)


def test_series_rules_accept_sets_and_ignore_case():
    rules = dicom.SeriesRules(modalities={"cr"}, views=(), body_parts=["Chest"])
    ds = Dataset()
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "LL"
    assert rules.violation(ds) is None  # views empty: any
    ds.Modality = "DX"
    assert rules.violation(ds) == "series rules: Modality DX not in {CR}"


# --------------------------------------------------------------------------- hostile input


def test_gigantic_claimed_dimensions_are_refused_before_pixels(tmp_path):
    path = native(tmp_path, RAMP, Rows=60000, Columns=60000, NumberOfFrames=2)
    with pytest.raises(DcxError, match=f"60000x60000 pixels x 2 frames exceeds the {MAX_PIXELS} pixel limit"):
        dicom.open_dicom(path)


def test_truncated_native_pixel_data(tmp_path):
    path = native(tmp_path, RAMP)
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(DcxError, match="truncated pixel data"):
        dicom.read_unit_gray(path)


def test_truncated_encapsulated_file_is_an_error_not_a_skip(tmp_path):
    path = write_dicom(tmp_path / "j.dcm", make_phantom("normal", 64, 0)[0], "jpeg-baseline")
    path.write_bytes(path.read_bytes()[:-300])
    with pytest.raises(DcxError) as caught:
        dicom.read_unit_gray(path)
    assert not isinstance(caught.value, dicom.Skipped)
    assert "truncated" in caught.value.message


def test_image_cut_inside_its_header_is_an_error_not_a_skip(tmp_path):
    path = native(tmp_path, RAMP)
    path.write_bytes(path.read_bytes()[:600])  # before Rows: only the first elements survive
    with pytest.raises(DcxError) as caught:
        dicom.open_dicom(path)
    assert not isinstance(caught.value, dicom.Skipped)
    assert "Digital X-Ray Image Storage - For Presentation without pixel data" in caught.value.message


def test_garbage_is_not_a_readable_dicom(tmp_path):
    path = tmp_path / "g.dcm"
    path.write_bytes(b"\x08\x00\x05\x00CS" + b"\xff" * 50)
    with pytest.raises(DcxError):
        dicom.read_unit_gray(path)


# --------------------------------------------------------------------------- metadata


def test_metadata_and_phi_only_on_request(tmp_path):
    path = write_dicom(tmp_path / "m.dcm", RAMP, "explicit-le-12bit", patient_id="P0042")
    meta = dicom.open_dicom(path).meta
    ds = pydicom.dcmread(path)
    assert meta["study_uid"] == ds.StudyInstanceUID and meta["sop_uid"] == ds.SOPInstanceUID
    assert meta["series_uid"] == ds.SeriesInstanceUID
    assert (meta["modality"], meta["body_part"], meta["view_position"]) == ("DX", "CHEST", "PA")
    assert (meta["rows"], meta["columns"], meta["width"], meta["height"]) == (48, 40, 40, 48)
    assert meta["transfer_syntax"] == ExplicitVRLittleEndian and meta["frames"] == 1
    assert "patient_name" not in meta and "patient_id" not in meta
    assert "P0042" not in repr(meta)
    phi = dicom.open_dicom(path, include_phi=True).meta
    assert phi["patient_id"] == "P0042" and phi["patient_name"].startswith("SYNTH^")
    assert UID(meta["transfer_syntax"]).is_transfer_syntax
