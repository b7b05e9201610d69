"""The contract's resize -- torch's antialiased bilinear, ``F.interpolate(mode="bilinear",
antialias=True)`` -- computed on the CPU as two sparse matrix products.

Why: the CPU screening path resizes every decoded film on the host, and torch's kernel took
~1.8 ms of one core to shrink a 1024 x 1024 film to 224 px; the same filter written as an
(h x H) and a (w x W) band matrix (one row per output pixel holding its few taps) takes ~0.8 ms
(benchmarks/README.md, session 7). The weights are computed as torch computes them, in
float32 (its rounded float centres move a weight by up to 1e-5; exact float64 weights put the
result 1e-5 of unit gray off torch's), so the two agree to float rounding: held by
``tests/core/test_resize.py`` against ``F.interpolate``. On a GPU torch's own kernel runs.
PyTorch is imported when a resize runs (see :mod:`dcx.core.preprocess`).
"""
from __future__ import annotations

import functools
import warnings
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def resize_antialiased(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(..., H, W) float32 -> (..., height, width), bilinear, antialiased when shrinking."""
    import torch

    if image.device.type != "cpu" or image.dtype != torch.float32:
        batch = image.reshape(-1, 1, *image.shape[-2:])
        out = torch.nn.functional.interpolate(batch, size=(height, width), mode="bilinear", align_corners=False,
                                              antialias=True)
        return out.reshape(*image.shape[:-2], height, width)
    rows, columns = filter_matrix(image.shape[-2], height), filter_matrix(image.shape[-1], width)
    planes = image.reshape(-1, *image.shape[-2:])
    out = torch.empty((planes.shape[0], height, width), dtype=torch.float32)
    for k, plane in enumerate(planes):
        tall = torch.sparse.mm(rows, plane.contiguous())  # height x W
        out[k] = torch.sparse.mm(columns, tall.T.contiguous()).T
    return out.reshape(*image.shape[:-2], height, width)


#: Filter matrices kept for reuse: an archive's films come in a few detector sizes, and building
#: one costs ~0.25 ms. Few, because each kept matrix pins the heap memory around it: with 64 and
#: cxr-dev's 292 sizes, a 10,000-file run held ~130 MB more at its peak (benchmarks/README.md).
CACHED_MATRICES = 4


@functools.lru_cache(maxsize=CACHED_MATRICES)
def filter_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """The (n_out x n_in) sparse CSR matrix of torch's antialiased bilinear filter along one axis.

    Follows torch's ``_compute_weights_aa`` (aten/src/ATen/native/cpu/UpSampleKernel.cpp) step by
    step in float32: scale = in / out; support = max(scale, 1); per output i, centre =
    scale * (i + 0.5), taps from int(centre - support + 0.5) (at least 0) to int(centre + support
    + 0.5) (at most n_in), weight 1 - |(tap - centre + 0.5) / support| (0 outside), then divided by
    the weights' float sum -- which renormalises the filter over the pixels inside the image.
    """
    import torch

    f32 = np.float32
    scale = f32(n_in) / f32(n_out)
    support = scale if scale >= 1 else f32(1.0)
    inverse = f32(1.0 / float(scale)) if scale >= 1 else f32(1.0)
    centres = scale * (np.arange(n_out, dtype=f32) + f32(0.5))
    first = np.maximum((centres - support).astype(np.float64) + 0.5, 0).astype(np.int64)
    counts = np.minimum(((centres + support).astype(np.float64) + 0.5).astype(np.int64), n_in) - first
    steps = np.arange(counts.max())
    taps = first[:, None] + steps[None, :]
    inside = steps[None, :] < counts[:, None]
    distance = (((taps.astype(f32) - centres[:, None]).astype(np.float64) + 0.5) * float(inverse)).astype(f32)
    weights = np.where(np.abs(distance) < 1, f32(1) - np.abs(distance), f32(0)) * inside
    # summed in order, as torch sums them; never 0: the tap nearest a centre is within half a pixel
    totals = np.cumsum(weights, axis=1, dtype=f32)[:, -1:]
    weights = (weights / totals).astype(f32)
    crow = np.concatenate([[0], np.cumsum(counts)])
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the products used here are not
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(crow), torch.from_numpy(taps[inside]),
                                       torch.from_numpy(weights[inside]), size=(n_out, n_in))
