"""The device rules of DALI's decoder (dcx.engine.codec_rules): the uint16 gain for every
precision 1..16 on both devices, which frames go to pydicom up front, and the lossless JPEG
fixtures those rules are exercised with."""
from __future__ import annotations

import numpy as np
import pytest

from dcx.core import dicom
from dcx.engine import codec_rules
from dcx.engine.codec_rules import CODECS, dali_decodes, lossless_jpeg_predictor, uint16_gain
from dcx.engine.decode import Decoder
from dcx.train.lossless_jpeg import encode_lossless_jpeg
from dcx.core.preprocess import Preprocess
from dcx.train.synth import LOSSLESS_JPEG_PREDICTOR, make_phantom, write_dicom


@pytest.mark.parametrize("precision", range(1, 17))
@pytest.mark.parametrize("codec", CODECS)
def test_gpu_output_always_spans_the_full_uint16_range(precision, codec):
    """DALI's mixed decoder: the largest stored value of any depth comes out as 65535."""
    top = (1 << precision) - 1
    assert top * uint16_gain(precision, "gpu", codec) == pytest.approx(65535.0, rel=1e-12)


@pytest.mark.parametrize("precision", range(1, 17))
@pytest.mark.parametrize("codec", CODECS)
def test_cpu_output_is_raw_above_8_bits_and_x257_below(precision, codec):
    """DALI's CPU decoder skips the stretch (its TODO): uint16-native samples stay raw, uint8
    samples are widened x257 (1-bit ones were already widened to 0..255), whatever the codec
    (libjpeg-turbo decodes 8-bit lossless JPEG to uint8: measured x257 by dcx-bench gpu-check)."""
    expected = 1.0 if precision > 8 else (65535.0 if precision == 1 else 257.0)
    assert uint16_gain(precision, "cpu", codec) == expected


def test_the_critical_cases_in_numbers():
    assert uint16_gain(12, "gpu", "jpeg2k") == pytest.approx(65535 / 4095)  # ~16: the white-image bug
    assert uint16_gain(12, "cpu", "jpeg2k") == 1.0
    assert uint16_gain(8, "gpu", "jpeg") == uint16_gain(8, "cpu", "jpeg") == 257.0
    assert uint16_gain(16, "gpu", "jpeg-lossless") == uint16_gain(16, "cpu", "jpeg2k") == 1.0


@pytest.mark.parametrize("bad", [dict(precision=0), dict(precision=17), dict(device="cuda"), dict(codec="png")])
def test_out_of_range_arguments_are_refused(bad):
    with pytest.raises(ValueError):
        uint16_gain(**{**dict(precision=12, device="gpu", codec="jpeg2k"), **bad})


@pytest.mark.parametrize("device", ["cpu", "gpu"], ids=["cpu-decoder", "mixed-decoder"])  # "gpu" marks GPU tests
def test_which_frames_dali_decodes(device):
    gpu = device == "gpu"
    assert dali_decodes(codec_rules.JPEG_BASELINE, 8, device)
    assert not dali_decodes(codec_rules.JPEG_EXTENDED, 12, device)  # 12-bit lossy: pydicom
    assert dali_decodes(codec_rules.JPEG2000, 12, device) and dali_decodes(codec_rules.JPEG2000_LOSSLESS, 16, device)
    assert dali_decodes(codec_rules.JPEG_LOSSLESS_SV1, 12, device, predictor=1) == gpu
    assert dali_decodes(codec_rules.JPEG_LOSSLESS, 16, device, predictor=1) == gpu
    assert not dali_decodes(codec_rules.JPEG_LOSSLESS, 12, device, predictor=7)
    assert not dali_decodes(codec_rules.JPEG_LOSSLESS, 12, device, predictor=None)
    assert not dali_decodes("1.2.840.10008.1.2.1", 12, device)  # uncompressed: pydicom's


@pytest.mark.parametrize("predictor", range(1, 8))
def test_predictor_is_read_from_the_scan_header(predictor):
    stream = encode_lossless_jpeg(np.arange(60, dtype=np.uint16).reshape(6, 10), 12, predictor)
    assert lossless_jpeg_predictor(stream) == predictor
    assert lossless_jpeg_predictor(stream[:30]) is None  # cut before the scan header


@pytest.mark.parametrize("data", [b"", b"\xff\xd8", b"\xff\xd8\xff\xda", b"\xff\xd8\x00\x00\x00\x00",
                                  b"\xff\xd8\xff\xc4\x00\x01", b"GIF89a", b"\xff\xd8\xff\xda\x00\x08\x05"])
def test_predictor_of_hostile_bytes_is_none(data):
    assert lossless_jpeg_predictor(data) is None


@pytest.mark.parametrize("precision", [2, 8, 12, 16])
@pytest.mark.parametrize("predictor", range(1, 8))
def test_lossless_jpeg_fixture_encoder_round_trips_through_libjpeg(precision, predictor):
    libjpeg = pytest.importorskip("libjpeg")
    rng = np.random.default_rng(precision * 10 + predictor)
    pixels = rng.integers(0, 1 << precision, (23, 41)).astype(np.uint16)
    pixels[5:9] = (1 << precision) - 1  # extreme differences: categories up to 16
    pixels[9:12] = 0
    decoded = libjpeg.decode(encode_lossless_jpeg(pixels, precision, predictor))
    assert np.array_equal(decoded.astype(np.int64), pixels.astype(np.int64))


def _decoder_on(device: str) -> Decoder:
    """A CPU Decoder told it decodes on ``device``: the routing and gain are Python decisions,
    taken before DALI sees a frame, so they are testable here (a mock only for the GPU)."""
    decoder = Decoder(Preprocess(96), device="cpu")
    decoder.device = device
    return decoder


@pytest.mark.parametrize("variant", sorted(LOSSLESS_JPEG_PREDICTOR))
def test_lossless_frames_are_routed_up_front(tmp_path, variant):
    phantom, _ = make_phantom("covid", size=64, seed=1)
    image = dicom.open_dicom(write_dicom(tmp_path / "x.dcm", phantom, variant))
    assert _decoder_on("cpu")._dali_frame(image) is None  # the CPU backend fails lossless JPEG
    on_gpu = _decoder_on("gpu")._dali_frame(image)
    if LOSSLESS_JPEG_PREDICTOR[variant] == 1:
        kind, sample = on_gpu
        assert kind == "gray16" and sample.scale == pytest.approx(image.transform.scale / (65535 / 4095))
    else:
        assert on_gpu is None  # nvJPEG decodes first-order prediction only


def test_12_bit_jpeg2000_gain_follows_the_device(tmp_path):
    phantom, _ = make_phantom("covid", size=64, seed=1)
    image = dicom.open_dicom(write_dicom(tmp_path / "x.dcm", phantom, "jpeg2000"))
    (_, cpu), (_, gpu) = _decoder_on("cpu")._dali_frame(image), _decoder_on("gpu")._dali_frame(image)
    assert cpu.scale == pytest.approx(image.transform.scale)
    assert gpu.scale == pytest.approx(image.transform.scale * 4095 / 65535)
    assert gpu.clamp[1] == pytest.approx(cpu.clamp[1] * 65535 / 4095)
