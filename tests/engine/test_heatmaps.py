"""Heatmaps put the heat where the CAM says, over the radiograph, as a real PNG."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dcx.engine.heatmaps import normalised_cam, overlay_heatmap, save_heatmap

S = 128


def _lesion_case(row: int, col: int):
    """A smooth gray 'radiograph' and a 4x4 CAM hot at feature cell (row, col)."""
    yy, xx = np.mgrid[0:S, 0:S] / S
    image = (0.3 + 0.4 * np.sin(3 * xx) * np.cos(2 * yy)).astype(np.float32)
    cam = np.full((4, 4), -0.5, dtype=np.float32)  # negative evidence elsewhere
    cam[row, col] = 3.0
    return image, cam


@pytest.mark.parametrize("row,col", [(0, 0), (1, 3), (3, 2)])
def test_red_peaks_over_the_hot_spot(row, col):
    image, cam = _lesion_case(row, col)
    rgb = overlay_heatmap(image, cam)
    assert rgb.shape == (S, S, 3) and rgb.dtype == np.uint8
    cell = S // 4
    red = rgb[..., 0].astype(int) - rgb[..., 2].astype(int)  # "red" = red over blue, independent of the gray
    peak_y, peak_x = np.unravel_index(np.argmax(red), red.shape)
    assert (peak_y // cell, peak_x // cell) == (row, col)
    inside = red[row * cell:(row + 1) * cell, col * cell:(col + 1) * cell].mean()
    assert inside > red.mean() + 50


def test_image_shows_through_and_alpha_zero_is_the_radiograph():
    image, cam = _lesion_case(2, 2)
    plain = overlay_heatmap(torch.from_numpy(image)[None], cam, alpha=0.0)  # (1, S, S) tensor input
    expected = np.rint(image * 255).astype(np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(plain[..., channel], expected)
    blended = overlay_heatmap(image, cam, alpha=0.45).astype(float).mean(axis=2)
    assert np.corrcoef(blended[:, :S // 2].ravel(), image[:, :S // 2].ravel())[0, 1] > 0.5


def test_normalised_cam_is_upsampled_relu_and_stretched():
    cam = torch.tensor([[-2.0, 0.0], [1.0, 4.0]])
    heat = normalised_cam(cam, (64, 64))
    assert heat.shape == (64, 64) and heat.dtype == np.float32
    assert heat.min() == 0.0 and heat.max() == pytest.approx(1.0)
    assert heat[-1, -1] == pytest.approx(1.0) and heat[0, 0] == 0.0  # corners keep their cell's value
    assert np.all(np.diff(heat[-1]) >= -1e-6)  # bilinear: monotone along the bottom row


def test_cam_without_positive_evidence_is_cold_everywhere():
    heat = normalised_cam(torch.full((7, 7), -1.0), (S, S))
    assert not heat.any()
    flat = overlay_heatmap(np.zeros((S, S), np.float32), np.zeros((7, 7)), colormap="inferno")
    assert (flat == flat[0, 0]).all()  # one colour, no NaN artefacts


def test_save_heatmap_writes_an_rgb_png(tmp_path):
    image, cam = _lesion_case(1, 1)
    out = save_heatmap(image[None], cam, tmp_path / "sub" / "3f2a9c.png")
    assert out == tmp_path / "sub" / "3f2a9c.png" and list(out.parent.iterdir()) == [out]  # no temp left
    with Image.open(out) as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (S, S)
        np.testing.assert_array_equal(np.asarray(im), overlay_heatmap(image, cam))


def test_bad_arguments_are_refused():
    image, cam = _lesion_case(0, 0)
    with pytest.raises(ValueError, match="alpha"):
        overlay_heatmap(image, cam, alpha=1.5)
    with pytest.raises(ValueError, match="colour map"):
        overlay_heatmap(image, cam, colormap="no-such-map")
    with pytest.raises(ValueError, match="expected image"):
        overlay_heatmap(np.zeros((3, S, S)), cam)


def test_the_blend_is_the_plain_formula_to_the_bit_and_leaves_the_colour_table_alone():
    """overlay_heatmap blends in place for speed: same bytes as the textbook expression, and the
    cached colour table it starts from is not written to."""
    from dcx.engine.heatmaps import _colour_table

    table = _colour_table("jet").copy()
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        image, cam = torch.rand(S, S, generator=g), torch.randn(7, 7, generator=g)
        colours = table[np.rint(normalised_cam(cam, (S, S)) * 255).astype(np.uint8)]
        plain = np.rint(((1.0 - 0.45) * image.numpy()[..., None] + 0.45 * colours) * 255).astype(np.uint8)
        np.testing.assert_array_equal(overlay_heatmap(image, cam, alpha=0.45), plain)
    np.testing.assert_array_equal(_colour_table("jet"), table)
