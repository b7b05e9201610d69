"""The engine decoder (dcx.engine.decode): parity with the training transform, batch-failure
isolation, and one outcome with a reason for every bad file.

THE BOUND: DALI tensors vs ``Preprocess(size)(read_unit_gray(path))`` on the same files differ by
at most 1e-4 per pixel and 1e-5 on average (measured with DALI resizing: max 1.8e-5, mean 1.2e-7
over all 300 cxr-dev files and the 21 shared DICOM files at 224 px; the synthetic files below at
96 px stay within the same bound). The CPU default, DALI decoding and the contract's own letterbox
resizing, holds it by construction; DALI's resize (the GPU's graph) is held to it on DALI's CPU
operators (``dali_resize=True``).
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from dcx.core import dicom
from dcx.engine.decode import Decoder
from dcx.core.preprocess import MAX_PIXELS, Preprocess
from dcx.core.reader import read_unit_gray
from dcx.train.synth import DICOM_VARIANTS, make_phantom, write_dicom

MAX_ABS, MEAN_ABS = 1e-4, 1e-5
SIZE = 96


def reference(path, size=SIZE) -> torch.Tensor:
    return Preprocess(size)(read_unit_gray(path))


def assert_parity(batch, paths, size=SIZE):
    """Every ok image against the training transform; returns the worst (max, mean)."""
    diffs = []
    for image, row in zip(batch.images, batch.rows_of_images):
        diff = (image.cpu() - reference(paths[row], size)).abs()
        assert diff.max() <= MAX_ABS, (Path(paths[row]).name, float(diff.max()))
        diffs.append(diff)
    assert diffs, "nothing decoded"
    assert float(torch.stack(diffs).mean()) <= MEAN_ABS
    return max(float(d.max()) for d in diffs)


def gray(h, w, seed=0) -> np.ndarray:
    """A phantom resized to h x w in [0, 1] (real anatomy edges, not a flat test card)."""
    phantom, _ = make_phantom("pneumonia", size=128, seed=seed)
    return np.asarray(Image.fromarray(phantom.astype(np.float32)).resize((w, h), Image.BILINEAR))


def u8(a) -> np.ndarray:
    return np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def rasters(tmp_path_factory) -> dict[str, Path]:
    """One file per raster kind and size regime: shrink, enlarge, same size, extreme aspect."""
    d = tmp_path_factory.mktemp("rasters")
    g = u8(gray(300, 200))
    rgb = np.dstack([g, u8(gray(300, 200, 1)), 255 - g])
    files = {}

    def save(name, array, mode=None, **kw):
        (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(d / name, **kw)
        files[name] = d / name

    save("gray.png", g)
    save("gray.jpg", g, quality=90)
    save("gray.bmp", g)
    save("gray.tif", g)
    save("gray.jp2", g)
    save("gray.webp", g, lossless=True)
    save("small.png", u8(gray(30, 40)))  # enlarged
    save("exact.png", u8(gray(SIZE, SIZE)))  # no resize at all
    save("tall.png", u8(gray(500, 37)))
    save("rgb.png", rgb)
    save("rgb.jpg", rgb, quality=90)
    save("rgba.png", np.dstack([rgb, g]))
    save("la.png", np.dstack([g, 255 - g]), "LA")
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE).save(d / "palette.png")
    files["palette.png"] = d / "palette.png"
    deep = np.round(gray(120, 90) * 65535).astype(np.uint16)
    save("deep.png", deep)
    save("deep.tif", deep)
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")  # reference path
    files["cmyk.jpg"] = d / "cmyk.jpg"
    Image.fromarray(g > 128).save(d / "bilevel.png")  # reference path
    files["bilevel.png"] = d / "bilevel.png"
    return files


@pytest.fixture(scope="module")
def dicoms(tmp_path_factory) -> dict[str, Path]:
    """Every synthetic transfer syntax plus DALI-path frames whose window clips."""
    d = tmp_path_factory.mktemp("dicoms")
    phantom = gray(150, 110, seed=2)
    files = {f"{v}.dcm": write_dicom(d / f"{v}.dcm", phantom, v) for v in DICOM_VARIANTS}
    for name, variant, tags in [
        ("j2k-window-mono1.dcm", "jpeg2000", dict(WindowCenter="1500", WindowWidth="1200",
                                                     PhotometricInterpretation="MONOCHROME1")),
        ("jpeg-window.dcm", "jpeg-baseline", dict(WindowCenter="120", WindowWidth="100",
                                                  RescaleSlope="1.5", RescaleIntercept="-10")),
        ("native-window.dcm", "explicit-le-12bit", dict(WindowCenter="2000", WindowWidth="1500")),
        ("sigmoid.dcm", "rle", dict(WindowCenter="2000", WindowWidth="1500", VOILUTFunction="SIGMOID")),
        ("signed.dcm", "explicit-le-12bit", dict(PixelRepresentation=1)),
    ]:
        path = write_dicom(d / name, phantom, variant)
        ds = pydicom.dcmread(path)
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
        files[name] = path
    return files


@pytest.fixture(scope="module", params=[None, True], ids=["host-resize", "dali-resize"])
def decoder(request):
    """The CPU default (DALI decodes, the contract's own code resizes), and the GPU's resize graph
    on DALI's CPU operators, so its edge correction is held to the same bound here."""
    with Decoder(Preprocess(SIZE), batch_size=8, num_threads=2, dali_resize=request.param) as dec:
        yield dec


# --------------------------------------------------------------------------- parity


def test_rasters_match_the_training_transform(decoder, rasters):
    paths = list(rasters.values())
    threads = torch.get_num_threads()
    batch = decoder.decode(paths)
    assert torch.get_num_threads() == threads  # the host letterbox runs single-threaded, then gives them back
    assert [o.status for o in batch.outcomes] == ["ok"] * len(paths)
    assert batch.images.shape == (len(paths), 1, SIZE, SIZE) and batch.images.dtype == torch.float32
    assert batch.rows_of_images == list(range(len(paths)))
    assert_parity(batch, paths)
    by = {p.name: o.meta["decoded_by"] for p, o in zip(paths, batch.outcomes)}
    assert by.pop("cmyk.jpg") == by.pop("bilevel.png") == "reference"
    assert set(by.values()) == {"dali"}, by
    assert batch.outcomes[0].meta["width"] == 200 and batch.outcomes[0].meta["height"] == 300


def test_sixteen_bit_data_keep_their_depth(decoder, tmp_path):
    """Values that differ only in the low byte must stay apart (an 8-bit decode merges them)."""
    ramp = np.tile((np.arange(SIZE) * 3 + 30000).astype(np.uint16), (SIZE, 1))
    Image.fromarray(ramp).save(tmp_path / "r.png")
    batch = decoder.decode([tmp_path / "r.png"])
    row = batch.images[0, 0, SIZE // 2]
    assert batch.outcomes[0].meta["decoded_by"] == "dali"
    assert torch.allclose(row, torch.from_numpy(ramp[0] / 65535).float(), atol=1e-6)


def test_dicom_frames_match_the_training_transform(decoder, dicoms):
    paths = list(dicoms.values())
    batch = decoder.decode(paths)
    assert [o.status for o in batch.outcomes] == ["ok"] * len(paths), [o.reason for o in batch.outcomes]
    assert_parity(batch, paths)
    by = {p.name: o.meta["decoded_by"] for p, o in zip(paths, batch.outcomes)}
    # DALI decodes JPEG / JPEG 2000 frames itself and windows + resizes what pydicom decoded;
    # only transforms that are not one affine map stay on the numpy reference path
    assert {n for n, b in by.items() if b == "reference"} == {"sigmoid.dcm", "signed.dcm"}


@pytest.mark.parametrize("dali_resize", [None, True], ids=["host-resize", "dali-resize"])
def test_cxr_dev_matches_the_training_transform(shared_data, dali_resize):
    """Every tenth cxr-dev file (8-bit gray PNG, RGB/RGBA PNG, JPEG, WebP) at 224 px."""
    every = sorted(p for p in (shared_data / "cxr-dev").rglob("*") if p.suffix != ".csv" and p.is_file())
    paths = every[::10]
    with Decoder(Preprocess(224), batch_size=16, dali_resize=dali_resize) as dec:
        batch = dec.decode(paths)
        assert [o.status for o in batch.outcomes] == ["ok"] * len(paths)
        assert dec.counts["dali"] == len(paths)
    assert_parity(batch, paths, size=224)


def test_shared_dicom_folder_decodes(shared_data):
    paths = sorted((shared_data / "dicom").glob("*.dcm"))
    with Decoder(Preprocess(64), batch_size=8) as dec:
        batch = dec.decode(paths)
        assert [o.status for o in batch.outcomes] == ["ok"] * len(paths), [o.reason for o in batch.outcomes]
        assert_parity(batch, paths, size=64)
        syntaxes = {o.meta["transfer_syntax"] for o in batch.outcomes}
        assert {"1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.91",
                "1.2.840.10008.1.2.4.81"} <= syntaxes
    with Decoder(Preprocess(64), series_rules=dicom.SeriesRules()) as dec:
        outcomes = dec.decode(paths).outcomes
    skipped = {p.name: o.reason for p, o in zip(paths, outcomes) if o.status == "skipped"}
    assert skipped == {"udacity__test4.dcm": "series rules: BodyPartExamined RIBCAGE not in {CHEST}",
                       "udacity__test5.dcm": "series rules: Modality CT not in {CR, DX}"}


# --------------------------------------------------------------------------- isolation


def corrupt_png(src: Path, dst: Path) -> Path:
    """Garbage inside the IDAT data; header and IEND intact, so it reaches DALI and fails there."""
    data = bytearray(src.read_bytes())
    start = data.index(b"IDAT") + 4
    data[start + 40:start + 240] = np.random.default_rng(0).integers(0, 256, 200, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def test_a_corrupt_file_does_not_cost_its_batch_mates(tmp_path):
    good = []
    for k in range(7):
        Image.fromarray(u8(gray(200, 180, seed=k))).save(tmp_path / f"g{k}.png")
        good.append(tmp_path / f"g{k}.png")
    bad = corrupt_png(good[0], tmp_path / "bad.png")
    also_bad = corrupt_png(good[1], tmp_path / "bad2.png")
    paths = good[:3] + [bad] + good[3:] + [also_bad]
    with Decoder(Preprocess(SIZE), batch_size=len(paths)) as dec:
        clean = dec.decode(good)
        assert dec.counts["failed_batches"] == 0
        batch = dec.decode(paths)
        assert dec.counts["failed_batches"] >= 2  # the whole batch, then halves, until alone
        statuses = [o.status for o in batch.outcomes]
        assert statuses == ["ok"] * 3 + ["error"] + ["ok"] * 4 + ["error"]
        assert "cannot decode" in batch.outcomes[3].reason  # the reference reader's diagnosis
        assert batch.rows_of_images == [0, 1, 2, 4, 5, 6, 7]
        assert torch.equal(batch.images, clean.images)  # the batch-mates got their DALI images
        assert all(o.meta["decoded_by"] == "dali" for o in batch.outcomes if o.status == "ok")
        again = dec.decode(good)  # the rebuilt pipeline works on
        assert torch.equal(again.images, clean.images)


def test_a_file_the_host_letterbox_fails_on_does_not_cost_its_batch_mates(rasters, monkeypatch):
    """The letterbox after DALI (the CPU default) failing on one image (say, out of memory on a
    huge film) isolates that file like a failed DALI batch: the reference path takes it over."""
    import dcx.engine.dali_pipeline as dp

    real = dp.letterbox

    def fails_on_tall(image, *args, **kwargs):
        if image.shape[-1] == 37:  # tall.png
            raise MemoryError("no room")
        return real(image, *args, **kwargs)

    monkeypatch.setattr(dp, "letterbox", fails_on_tall)
    paths = [rasters["gray.png"], rasters["tall.png"], rasters["small.png"]]
    with Decoder(Preprocess(SIZE), batch_size=4) as dec:
        batch = dec.decode(paths)
    assert [o.status for o in batch.outcomes] == ["ok"] * 3
    assert [o.meta["decoded_by"] for o in batch.outcomes] == ["dali", "reference", "dali"]
    assert_parity(batch, paths)


def test_host_letterbox_buffer_serves_larger_and_smaller_films_alike(rasters, monkeypatch):
    """The float buffer the host letterbox reuses: a film after a larger one reads only its own
    pixels, and a film above the buffer's limit gets its own array; parity holds for both."""
    import dcx.engine.dali_pipeline as dp

    gray = np.asarray(Image.open(rasters["gray.png"]))
    monkeypatch.setattr(dp, "HOST_BUFFER_VALUES", gray.size - 1)  # gray.png alone goes over
    paths = [rasters["small.png"], rasters["gray.png"], rasters["tall.png"], rasters["small.png"]]
    with Decoder(Preprocess(SIZE), batch_size=4) as dec:
        batch = dec.decode(paths)
        assert dec._pipelines["gray8"]._host_buffer.numel() < gray.size
    assert [o.meta["decoded_by"] for o in batch.outcomes] == ["dali"] * 4
    assert_parity(batch, paths)
    assert torch.equal(batch.images[0], batch.images[3])


def test_one_pipeline_serves_many_batches(rasters):
    paths = [rasters["gray.png"], rasters["small.png"], rasters["tall.png"]] * 4
    with Decoder(Preprocess(SIZE), batch_size=5) as dec:
        first = dec.decode(paths)
        dec.decode(paths)
        assert first.images.shape[0] == len(paths)
        assert dec._pipelines["gray8"].builds == 1


def test_a_cpu_batch_wider_than_dalis_runs_comes_back_whole_and_in_order(rasters):
    """On the CPU a 20-file batch is decoded in DALI runs of at most CPU_DALI_BATCH (DALI keeps each
    sample slot at the largest image decoded in it: fewer slots, less memory held); the batch
    comes back whole, in input order, each image its own file's."""
    from dcx.engine.decode import CPU_DALI_BATCH

    paths = [rasters[name] for name in ("gray.png", "small.png", "tall.png", "exact.png", "rgb.png")] * 4
    with Decoder(Preprocess(SIZE), batch_size=len(paths)) as dec:
        batch = dec.decode(paths)
        widths = {kind: pipeline.batch_size for kind, pipeline in dec._pipelines.items()}
    assert CPU_DALI_BATCH < 16 and widths == {"gray8": CPU_DALI_BATCH, "rgb8": CPU_DALI_BATCH}
    assert batch.rows_of_images == list(range(len(paths)))
    assert_parity(batch, paths)


def test_empty_input(decoder):
    batch = decoder.decode([])
    assert batch.images.shape == (0, 1, SIZE, SIZE) and batch.outcomes == [] and batch.rows_of_images == []


# --------------------------------------------------------------------------- bad input


def png_claiming(width: int, height: int) -> bytes:
    def chunk(kind, payload):
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def jpeg_claiming(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(u8(gray(16, 16))).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_every_bad_file_gets_an_error_with_its_reason(tmp_path, rasters, monkeypatch):
    good = rasters["gray.png"]
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:1500])
    (tmp_path / "garbage.png").write_bytes(os.urandom(3000))
    (tmp_path / "notes.txt").write_text("radiology report, not an image\n")
    (tmp_path / "anim.gif").write_bytes(b"GIF89a" + b"\0" * 100)
    (tmp_path / "named.jpg").write_bytes(good.read_bytes())  # a PNG named .jpg: fine
    (tmp_path / "huge.png").write_bytes(png_claiming(100_000, 100_000))
    (tmp_path / "huge.jpg").write_bytes(jpeg_claiming(65_000, 65_000))
    huge_dcm = write_dicom(tmp_path / "huge.dcm", gray(40, 30), "explicit-le-12bit")
    ds = pydicom.dcmread(huge_dcm)
    ds.Rows = ds.Columns = 60_000
    ds.save_as(huge_dcm)
    (tmp_path / "folder.png").mkdir()
    locked = tmp_path / "locked.png"
    locked.write_bytes(good.read_bytes())
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads anything: make the OS refuse as it would
        real = os.open

        def refusing_open(path, *args, **kwargs):
            if os.fspath(path).endswith("locked.png"):
                raise PermissionError(13, "Permission denied")
            return real(path, *args, **kwargs)
        monkeypatch.setattr(os, "open", refusing_open)
    expected = {
        "empty.png": "empty file",
        "truncated.png": "truncated",
        "garbage.png": "unsupported format",
        "anim.gif": "unsupported format",
        "huge.png": f"100000x100000 exceeds the {MAX_PIXELS} pixel limit",
        "huge.jpg": f"65000x65000 exceeds the {MAX_PIXELS} pixel limit",
        "huge.dcm": "exceeds the",
        "folder.png": "not a regular file",
        "locked.png": "permission denied",
        "missing.png": "file not found",
    }
    paths = [tmp_path / n for n in expected] + [tmp_path / "notes.txt", tmp_path / "named.jpg", good]
    with Decoder(Preprocess(SIZE), batch_size=4) as dec:
        batch = dec.decode(paths)
    for path, outcome in zip(paths, batch.outcomes):
        if path.name in expected:
            assert outcome.status == "error", path.name
            assert expected[path.name] in outcome.reason, (path.name, outcome.reason)
            assert str(tmp_path) not in outcome.reason  # the row has the path already
    assert batch.outcomes[-3].status == "skipped" and batch.outcomes[-3].reason.startswith("not an image")
    assert [o.status for o in batch.outcomes[-2:]] == ["ok", "ok"]
    assert batch.outcomes[-2].format == "png"
    assert batch.rows_of_images == [len(paths) - 2, len(paths) - 1]


def test_mangled_files_each_get_one_outcome(tmp_path, rasters, dicoms):
    """Flipped bytes, cuts and overwritten blocks in every format, all in one call: nothing
    raises, every file gets ok or error (a mangled image is never a 'skipped' non-image)."""
    rng = np.random.default_rng(7)
    sources = [rasters[n] for n in ("gray.png", "gray.jpg", "gray.tif", "gray.jp2", "rgb.png")]
    sources += [dicoms[f"{v}.dcm"] for v in DICOM_VARIANTS]
    paths = []
    for k in range(4 * len(sources)):
        data = bytearray(sources[k % len(sources)].read_bytes())
        if k % 4 == 0:
            data = data[:int(rng.integers(1, len(data)))]
        elif k % 4 == 1:
            for at in rng.integers(0, len(data), 12):
                data[at] = int(rng.integers(0, 256))
        else:
            at = int(rng.integers(len(data) // 4, len(data) - 64))
            data[at:at + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
        paths.append(tmp_path / f"m{k:02d}{sources[k % len(sources)].suffix}")
        paths[-1].write_bytes(bytes(data))
    with Decoder(Preprocess(SIZE), batch_size=8) as dec:
        batch = dec.decode(paths)
    assert len(batch.outcomes) == len(paths)
    assert {o.status for o in batch.outcomes} <= {"ok", "error"}
    assert all(o.reason for o in batch.outcomes if o.status == "error")
    assert batch.images.shape[0] == sum(o.status == "ok" for o in batch.outcomes)
    assert torch.isfinite(batch.images).all() and batch.images.min() >= 0 and batch.images.max() <= 1 + 1e-5


def test_dicom_outcomes_carry_metadata_and_phi_only_on_request(dicoms):
    path = dicoms["jpeg2000.dcm"]
    with Decoder(Preprocess(SIZE)) as dec:
        meta = dec.decode([path]).outcomes[0].meta
    ds = pydicom.dcmread(path)
    assert meta["sop_uid"] == ds.SOPInstanceUID and meta["transfer_syntax"] == "1.2.840.10008.1.2.4.90"
    assert meta["width"] == 110 and meta["height"] == 150
    assert "patient_id" not in meta
    with Decoder(Preprocess(SIZE), include_phi=True) as dec:
        assert dec.decode([path]).outcomes[0].meta["patient_id"] == ds.PatientID


def test_non_image_dicom_is_skipped(tmp_path, decoder):
    path = write_dicom(tmp_path / "x.dcm", gray(20, 20), "explicit-le-12bit")
    ds = pydicom.dcmread(path)
    del ds.PixelData, ds.Rows, ds.Columns
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.save_as(path)
    outcome = decoder.decode([path]).outcomes[0]
    assert (outcome.status, outcome.format) == ("skipped", "dicom")
    assert outcome.reason == "not an image: Basic Text SR Storage has no pixel data"


def test_pad_value_of_the_card_is_kept(rasters):
    preprocess = Preprocess(SIZE, pad_value=0.25)
    with Decoder(preprocess) as dec:
        batch = dec.decode([rasters["tall.png"]])
    expected = preprocess(read_unit_gray(rasters["tall.png"]))
    assert batch.images[0, 0, 0, 0] == 0.25
    assert (batch.images[0] - expected).abs().max() <= MAX_ABS


def test_bad_options_are_user_errors():
    from dcx.core.errors import DcxError

    with pytest.raises(DcxError, match="'cpu' or 'gpu'"):
        Decoder(Preprocess(SIZE), device="tpu")
    with pytest.raises(DcxError, match="implements letterbox"):  # the contract (and so DALI) has one policy
        Decoder(Preprocess(SIZE, resize="stretch"))
    if not torch.cuda.is_available():
        with pytest.raises(DcxError, match="CUDA"):
            Decoder(Preprocess(SIZE), device="gpu")


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_gpu_pipeline_matches_the_training_transform(rasters, dicoms):
    """Same pipeline built as ``mixed``: PNG/TIFF/BMP/WebP still decode on the CPU inside
    nvImageCodec (the CPU bound holds); JPEG and JPEG 2000 decode on nvJPEG / nvJPEG2000, whose
    IDCT may differ from libjpeg-turbo by a gray level or two: max 0.02, mean 2e-3 there."""
    pytest.importorskip("nvidia.dali", reason="DALI is not installed (pip install nvidia-dali-cuda130)")
    paths = list(rasters.values()) + list(dicoms.values())
    with Decoder(Preprocess(SIZE), device="gpu", batch_size=8) as dec:
        batch = dec.decode(paths)
        assert dec.counts["failed_batches"] == 0  # frames the GPU cannot decode went to pydicom first
    assert batch.images.device.type == "cuda"
    assert [o.status for o in batch.outcomes] == ["ok"] * len(paths)
    decoded_by = {p.name: o.meta.get("decoded_by") for p, o in zip(paths, batch.outcomes)}
    assert decoded_by["jpeg-lossless-sv1.dcm"] == "dali" and decoded_by["jpeg2000.dcm"] == "dali"
    for image, row in zip(batch.images, batch.rows_of_images):
        diff = (image.cpu() - reference(paths[row])).abs()
        gpu_codec = paths[row].suffix in (".jpg", ".jp2") or paths[row].suffix == ".dcm"
        assert diff.max() <= (0.02 if gpu_codec else MAX_ABS), (paths[row].name, float(diff.max()))
        assert diff.mean() <= (2e-3 if gpu_codec else MEAN_ABS)


@pytest.mark.gpu
def test_gpu_batch_is_intact_after_the_next_run_reuses_dalis_buffer(rasters):
    """The copy out of DALI's GPU buffer runs on torch's stream; the next run must wait for it
    before DALI writes that buffer again (else the first batch holds the second's pixels)."""
    pytest.importorskip("nvidia.dali", reason="DALI is not installed (pip install nvidia-dali-cuda130)")
    first, second = rasters["tall.png"], rasters["gray.png"]
    with Decoder(Preprocess(SIZE), device="gpu", batch_size=8) as dec:
        a = dec.decode([first] * 8)
        dec.decode([second] * 8)
        for image in a.images:
            assert (image.cpu() - reference(first)).abs().max() <= MAX_ABS


# -- DCT-scaled JPEG decoding (opt-in, CPU) ------------------------------------------------------

def _dct_parity(paths, size):
    """(decoded_by per file, worst max and worst per-image mean |dct - reference|)."""
    from dcx.engine.decode import Decoder as _Decoder

    with _Decoder(Preprocess(size), batch_size=8, dct_scaling=True) as dec:
        batch = dec.decode(paths)
    assert [o.status for o in batch.outcomes] == ["ok"] * len(paths)
    by = [batch.outcomes[row].meta["decoded_by"] for row in batch.rows_of_images]
    diffs = [(image - reference(paths[row], size)).abs() for image, row in zip(batch.images, batch.rows_of_images)]
    return by, max(float(d.max()) for d in diffs), max(float(d.mean()) for d in diffs)


def test_dct_scaled_jpeg_stays_within_its_bound_and_only_where_it_pays(tmp_path):
    from dcx.engine.decode import DCT_MARGIN, DCT_MAX_ABS, DCT_MEAN_ABS

    phantom, _ = make_phantom("covid", 1024, seed=3)  # a radiograph-like film with edges and noise
    gray8 = (np.clip(phantom, 0, 1) * 255).astype(np.uint8)
    paths = []
    for name, image in [("gray.jpg", Image.fromarray(gray8)),
                        ("rgb.jpg", Image.fromarray(np.stack([gray8, gray8, gray8[::-1]], -1))),
                        ("wide.jpg", Image.fromarray(gray8[:600])),
                        ("small.jpg", Image.fromarray(gray8[:200, :200]))]:
        image.save(tmp_path / name, quality=92)
        paths.append(tmp_path / name)
    size = 128
    by, worst_max, worst_mean = _dct_parity(paths, size)
    assert by == ["dct-scaled"] * 3 + ["dali"]  # 200 px < 2 * DCT_MARGIN * 128: full decode
    assert 200 < 2 * DCT_MARGIN * size
    assert 0 < worst_max <= DCT_MAX_ABS and worst_mean <= DCT_MEAN_ABS


def test_dct_scaled_cxr_dev_jpegs_stay_within_the_bound(shared_data):
    from dcx.engine.decode import DCT_MAX_ABS, DCT_MEAN_ABS

    jpegs = sorted(p for p in (shared_data / "cxr-dev").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    by, worst_max, worst_mean = _dct_parity(jpegs, 128)
    assert by.count("dct-scaled") >= len(jpegs) // 2
    assert worst_max <= DCT_MAX_ABS and worst_mean <= DCT_MEAN_ABS
