"""The preprocessing contract every training, export and engine path reproduces."""
import numpy as np
import pytest
import torch
from PIL import Image

from dcx.core.errors import DcxError
from dcx.core.preprocess import Preprocess, letterbox, letterbox_geometry, to_unit_gray
from dcx.core.reader import read_unit_gray


def test_letterbox_keeps_aspect_and_centres_a_non_square_film():
    tall = torch.ones(1, 100, 50)
    out = letterbox(tall, 64)
    assert out.shape == (1, 64, 64)
    assert letterbox_geometry(100, 50, 64) == (64, 32, 0, 16)
    cols = out[0].sum(0)
    assert torch.all(cols[:16] == 0) and torch.all(cols[48:] == 0), "padding is black, both sides"
    torch.testing.assert_close(out[0, :, 16:48], torch.ones(64, 32))


def test_letterbox_antialiases_when_shrinking():
    stripes = torch.zeros(1, 256, 256)
    stripes[:, :, ::2] = 1.0  # one-pixel stripes average to 0.5 when shrunk 4x with antialiasing
    out = letterbox(stripes, 64)
    assert abs(out.mean().item() - 0.5) < 0.01 and out.std().item() < 0.05


def test_letterbox_maps_values_after_resizing_as_if_before_and_leaves_the_padding_alone():
    raw = torch.rand(1, 300, 200) * 4095
    mapped = letterbox(raw, 64, 0.25, scale=1 / 4095, offset=0.1)
    torch.testing.assert_close(mapped, letterbox(raw / 4095 + 0.1, 64, 0.25), atol=1e-6, rtol=0)
    assert torch.all(mapped[0, :, :10] == 0.25)


def test_unit_gray_conversions_match_pil_and_bit_depth():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    pil_luma = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32) / 255
    np.testing.assert_allclose(to_unit_gray(rgb), pil_luma, atol=1 / 255)
    rgba = np.dstack([rgb, np.zeros((8, 9), np.uint8)])
    np.testing.assert_array_equal(to_unit_gray(rgba), to_unit_gray(rgb))  # alpha ignored
    sixteen = np.array([[0, 32768, 65535]], dtype=np.uint16)
    np.testing.assert_allclose(to_unit_gray(sixteen), [[0, 32768 / 65535, 1]], rtol=1e-6)
    with pytest.raises(DcxError, match="unsupported pixel type"):
        to_unit_gray(np.zeros((2, 2), np.int32))


def test_reference_reader_treats_palette_png_like_its_rgb_twin(tmp_path):
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette.save(tmp_path / "p.png")
    palette.convert("RGB").save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_unit_gray(tmp_path / "p.png"), read_unit_gray(tmp_path / "rgb.png"))


def test_reference_reader_names_files_it_cannot_read(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(DcxError, match="not a supported image"):
        read_unit_gray(text)
    truncated = tmp_path / "cut.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(DcxError, match="cut.png: cannot decode"):
        read_unit_gray(truncated)


def test_preprocess_call_gives_the_model_input_shape():
    assert Preprocess(size=32)(np.zeros((40, 30), np.float32)).shape == (1, 32, 32)
