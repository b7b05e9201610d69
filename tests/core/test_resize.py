"""The CPU resize is torch's antialiased bilinear to float rounding, on random and real films."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dcx.core.preprocess import letterbox_geometry
from dcx.core.resize import filter_matrix, resize_antialiased

CXR_DEV = Path(__file__).resolve().parents[3] / "shared" / "data" / "cxr-dev"


def torch_resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


@pytest.mark.parametrize("shape, size", [
    ((1024, 1024), (224, 224)),  # the common film
    ((2500, 2048), (224, 183)),  # a large CR, non-integer scales
    ((31, 17), (224, 123)),  # enlarging
    ((300, 40), (224, 30)),  # shrinking one side, almost keeping the other
    ((224, 224), (224, 224)),  # same size: the filter is the identity
    ((7, 5), (3, 2)),
])
def test_equals_torch_to_float_rounding(shape, size):
    x = torch.rand((2, 1, *shape), generator=torch.Generator().manual_seed(0))
    out = resize_antialiased(x, *size)
    assert out.shape == (2, 1, *size)
    torch.testing.assert_close(out, torch_resize(x, *size), atol=1e-6, rtol=0)


def test_one_pixel_wide_output_matches_pillow():
    """torch 2.14 gives every row the same value when one output side is 1 and the other
    resizes; Pillow's float resize (the same triangle filter, in double precision) is the
    reference there."""
    column = np.linspace(0, 1, 300, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    out = resize_antialiased(torch.from_numpy(column), 40, 1)
    pillow = np.asarray(Image.fromarray(column, mode="F").resize((1, 40), Image.BILINEAR))
    np.testing.assert_allclose(out.numpy(), pillow, atol=1e-5)
    assert out[-1, 0] - out[0, 0] > 0.9  # a gradient, not one value repeated


def test_filter_rows_sum_to_one_and_stay_inside_the_image():
    dense = filter_matrix(1000, 224).to_dense()
    assert dense.shape == (224, 1000)
    torch.testing.assert_close(dense.sum(1), torch.ones(224), atol=1e-6, rtol=0)
    assert (dense >= 0).all()
    assert dense[0, :4].gt(0).all() and dense[0, 10:].eq(0).all()  # edge taps renormalised, not cut


def test_other_dtypes_and_devices_use_torch():
    x = torch.rand((1, 1, 50, 60), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = resize_antialiased(x, 20, 24)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, torch_resize(x, 20, 24))


@pytest.mark.skipif(not CXR_DEV.is_dir(), reason="real sample data (../shared/data/cxr-dev) not present")
def test_real_films_letterbox_size_equals_torch():
    files = sorted(p for p in CXR_DEV.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[::15]
    assert files
    for path in files:
        gray = torch.from_numpy(np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255)
        h, w, _, _ = letterbox_geometry(*gray.shape, 224)
        torch.testing.assert_close(resize_antialiased(gray, h, w), torch_resize(gray[None, None], h, w)[0, 0],
                                   atol=1e-6, rtol=0, msg=str(path))
