"""The DALI letterbox pipeline: encoded image bytes -> (N, 1, S, S) unit-gray tensors.

One pipeline definition, :func:`letterbox_pipeline`, reproduces the preprocessing contract of
:mod:`dcx.core.preprocess` (unit gray, letterbox with bilinear antialiasing, centred, padded).
Three choices are fixed when it is built:

* the **device**: ``cpu`` (``device_id=None``) or ``gpu`` (the decoder runs as ``mixed``, so JPEG
  and JPEG 2000 decode on nvJPEG / nvJPEG2000 and everything after runs on the GPU);
* where the **resize** runs: in DALI (on the GPU), or, on the CPU by default, in the contract's
  own :func:`~dcx.core.preprocess.letterbox` after DALI has decoded
  (:meth:`LetterboxPipeline._letterbox_on_host`): exact by construction and cheaper there, as
  DALI's CPU resize alone cost 3.4 ms per 1024 x 1024 film against the contract's 0.8
  (:mod:`dcx.core.resize`), the edge correction below coming on top;
* the **kind** of input, because DALI decodes a whole batch to one type:

  - ``gray8``: 8-bit single channel (most radiographs, 8-bit DICOM frames), decoded as uint8;
  - ``rgb8``: 8-bit colour (RGB, RGBA, palette, gray + alpha), decoded as RGB and resized as
    uint8 RGB; BT.601 luma taken after the resize, on the float output (luma and resize are both
    linear, so they commute; no full-resolution float copy).
    Decoding straight to gray used other weights: up to 0.059 off on cxr-dev PNGs;
  - ``gray16``: deeper single channel (16-bit PNG/TIFF, 12-16 bit DICOM frames), decoded as
    uint16 and clamped per sample before resizing (a DICOM window clips). Not used for 8-bit
    data: decoding to uint16 cost ~40% more time on 2 CPU cores;
  - ``raw16``: no decoding: stored values pydicom already holds (uncompressed DICOM, or frames
    its plugins decoded) arrive as uint16 arrays and take the gray16 path from the clamp on,
    so DALI's threads (or the GPU) resize them too.

Python feeds, per sample, the bytes and numbers it derived from the header (the decoder never
trusts the decoded size silently: it is returned and checked): the letterbox geometry from the
core :func:`~dcx.core.preprocess.letterbox_geometry`, and ``unit = scale * value + offset``.

**Edges** (when DALI resizes). DALI's antialiased linear filter equals torch's (PIL's) inside the image to ~4e-6,
but at the borders DALI repeats the edge pixel where torch renormalises the filter over the
pixels inside; on real radiographs that moved the outermost rows by up to 0.11. Both are linear
and separable, so the difference is fixed at output resolution (no full-resolution padded
copy): DALI also resizes the edge rows and columns and reads the four corner pixels; the shares
of filter weight DALI put on repeated pixels (:func:`edge_shares`, per geometry) take them back
out, and the result is divided by the share inside (:func:`edge_normaliser`): exactly torch's
renormalised weights. Python feeds per sample only the cached per-geometry arrays.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from dcx.core.preprocess import LUMA_WEIGHTS, letterbox, letterbox_geometry

from .dali_import import import_dali
from .stage_clock import StageClock

#: The stages a pipeline's :class:`StageClock` counts: building it, feeding and copying out
#: (``preprocess``: Python geometry and assembly), running DALI (``decode``: decode + resize).
CLOCK_STAGES = ("setup", "decode", "preprocess")

KINDS = ("gray8", "rgb8", "gray16", "raw16")
_LUMA = torch.tensor(LUMA_WEIGHTS, dtype=torch.float32)
#: The largest decoded image (values) whose float copy reuses one buffer (32 MiB: gray films and
#: 16-bit DICOM frames up to 8 megapixels), which then stays allocated: see _as_float.
HOST_BUFFER_VALUES = 8 << 20
_INPUTS = ("encoded", "clamp_lo", "clamp_hi", "resized", "above", "below", "left", "right",
           "gain", "offset", "box_anchor")


def _inputs(kind: str, resize: bool) -> tuple[str, ...]:
    """The external sources a pipeline of ``kind`` has (only the 16-bit kinds clamp; one that
    only decodes takes the bytes alone)."""
    if not resize:
        return ("encoded",)
    return _INPUTS if kind.endswith("16") else tuple(n for n in _INPUTS if not n.startswith("clamp"))


@dataclass
class Sample:
    """One image for the pipeline: its data, the header's size and the value mapping.

    ``unit = clip(scale * value + offset, 0, 1)`` where ``value`` is what the decoder outputs
    (uint8 / uint16 / luma); values are first clamped to ``clamp`` (16-bit kinds only).
    """

    data: np.ndarray  # encoded bytes (uint8, 1-D); raw16: stored values (uint16, H x W x 1)
    height: int
    width: int
    scale: float
    offset: float = 0.0
    clamp: tuple[float, float] = (0.0, 65535.0)


class BatchFailed(RuntimeError):
    """DALI refused the batch (it cannot say which sample; the pipeline was rebuilt), or the
    letterbox after it failed on one of its images."""


def letterbox_pipeline(kind: str, gpu: bool, size: int, pad_value: float = 0.0, *, resize: bool = True,
                       **pipeline_args):
    """Build the pipeline for ``kind`` on the CPU or GPU (``pipeline_args``: batch_size,
    num_threads, device_id, ...). Outputs: images (S, S, 1) float32 and decoded sizes (H, W[, C]);
    without ``resize``, the decoded images themselves (H, W, C; uint8 or uint16)."""
    import_dali()
    from nvidia.dali import fn, pipeline_def, types
    import nvidia.dali.math as dmath

    @pipeline_def(**pipeline_args)
    def definition():
        feed = {name: fn.external_source(name=name, batch=True) for name in _inputs(kind, resize)}
        on_device = {k: (v.gpu() if gpu else v) for k, v in feed.items()
                     if k in ("clamp_lo", "clamp_hi", "above", "below", "left", "right", "gain", "offset")}
        # jpeg_fancy_upsampling: chroma upsampled as libjpeg (Pillow, the reference) does, on
        # nvJPEG too; DALI's default (False) upsamples colour JPEGs differently on the GPU
        decoder = dict(device="mixed" if gpu else "cpu", adjust_orientation=False, jpeg_fancy_upsampling=True)
        if kind == "rgb8":  # resized as uint8 RGB; luma after the resize (both linear)
            image = decoded = fn.decoders.image(feed["encoded"], output_type=types.RGB, **decoder)
        elif kind == "raw16":  # already decoded by pydicom: only name the layout
            image = decoded = fn.reshape(feed["encoded"], layout="HWC")
            if gpu:
                image = decoded = image.gpu()
        else:
            dtype = types.UINT16 if kind == "gray16" else types.UINT8
            image = decoded = fn.decoders.image(feed["encoded"], output_type=types.GRAY, dtype=dtype,
                                                **decoder)
        if not resize:
            return decoded, decoded.shape()
        if kind.endswith("16"):
            image = dmath.clamp(image, on_device["clamp_lo"], on_device["clamp_hi"])
        linear = dict(interp_type=types.INTERP_LINEAR, antialias=True, dtype=types.FLOAT)
        h, w = feed["resized"][0], feed["resized"][1]

        def gray(x):  # float luma after the resize (rgb8) or the single channel
            return fn.coord_transform(x, M=list(LUMA_WEIGHTS)) if kind == "rgb8" else x

        # the clamped edge rows / columns resized as DALI resizes them, and the corner pixels
        resized = gray(fn.resize(image, size=feed["resized"], **linear))
        top = gray(fn.resize(image[0:1], resize_x=w, resize_y=1.0, **linear))
        bottom = gray(fn.resize(image[-1:], resize_x=w, resize_y=1.0, **linear))
        first = gray(fn.resize(image[:, 0:1], resize_x=1.0, resize_y=h, **linear))
        last = gray(fn.resize(image[:, -1:], resize_x=1.0, resize_y=h, **linear))
        corner = {(r, c): gray(fn.cast(image[r:r + 1 if r == 0 else None, c:c + 1 if c == 0 else None],
                                       dtype=types.FLOAT))
                  for r in (0, -1) for c in (0, -1)}
        above, below = on_device["above"], on_device["below"]
        left, right = on_device["left"], on_device["right"]
        image = (resized - above * top - below * bottom - first * left - last * right
                 + above * left * corner[0, 0] + above * right * corner[0, -1]
                 + below * left * corner[-1, 0] + below * right * corner[-1, -1])
        image = image * on_device["gain"] + on_device["offset"]
        image = fn.slice(image, feed["box_anchor"], [size, size], axes=[0, 1],
                         out_of_bounds_policy="pad", fill_values=pad_value)
        return image, decoded.shape()

    return definition()


class LetterboxPipeline:
    """A built :func:`letterbox_pipeline`, fed in batch mode and reused across batches.

    DALI fails a whole batch when one sample is bad and the pipeline object is dead
    afterwards: :meth:`run` then rebuilds it and raises :class:`BatchFailed`, so the caller can
    isolate the culprit. Not thread-safe: one pipeline per thread.
    """

    def __init__(self, kind: str, *, size: int, pad_value: float = 0.0, device: str = "cpu",
                 batch_size: int = 32, num_threads: int = 2, clock: StageClock | None = None,
                 dali_resize: bool | None = None):
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        self.kind, self.size, self.pad_value = kind, size, pad_value
        self.gpu, self.batch_size = device == "gpu", batch_size
        self.dali_resize = self.gpu if dali_resize is None else dali_resize
        if self.gpu and not self.dali_resize:
            raise ValueError("on the GPU, DALI resizes")
        self._args = dict(batch_size=batch_size, num_threads=num_threads, prefetch_queue_depth=1,
                          device_id=torch.cuda.current_device() if self.gpu else None)
        self.builds = 0
        self._host_buffer = torch.empty(0, dtype=torch.float32)  # see _as_float
        self._copied: torch.cuda.Event | None = None  # the last copy out of DALI's GPU buffer
        self.clock = clock or StageClock(CLOCK_STAGES)
        self._pipe = self._build()

    def _build(self):
        with self.clock("setup"):
            pipe = letterbox_pipeline(self.kind, self.gpu, self.size, self.pad_value, resize=self.dali_resize,
                                      **self._args)
            pipe.build()
        self.builds += 1
        return pipe

    def run(self, samples: list[Sample]) -> tuple[np.ndarray | torch.Tensor, list[tuple[int, int]]]:
        """Letterbox up to ``batch_size`` samples: ((n, 1, S, S) float32 -- a numpy array on the
        CPU, a CUDA tensor on the GPU --, the (height, width) each sample decoded to)."""
        if not 0 < len(samples) <= self.batch_size:
            raise ValueError(f"{len(samples)} samples for a batch of {self.batch_size}")
        with self.clock("preprocess"):
            feeds = [self._feed(s) for s in samples]
            for name in _inputs(self.kind, self.dali_resize):
                self._pipe.feed_input(name, [feed[name] for feed in feeds])
        self._wait_for_copy_out()
        try:
            with self.clock("decode"):
                images, shapes = self._pipe.run()
        except RuntimeError as exc:
            del self._pipe  # dead after a failure: free it before building the next one
            self._pipe = self._build()
            lines = [line.strip() for line in str(exc).splitlines()]
            what = " ".join(line for line in lines if line.startswith(("Error in", "Failed")))
            raise BatchFailed(what or "DALI error") from exc
        with self.clock("preprocess"):
            shapes = shapes.as_cpu() if hasattr(shapes, "as_cpu") else shapes  # on the GPU in mixed mode
            decoded = [(int(h), int(w)) for h, w in np.array(shapes.as_tensor())[:, :2]]
            if self.dali_resize:
                return self._copy_out(images.as_tensor(), len(samples)), decoded
        with self.clock("decode"):  # the resize, as when DALI does it
            try:
                return self._letterbox_on_host(images, samples), decoded
            except (RuntimeError, ValueError, MemoryError) as exc:  # as a failed DALI resize: isolate the file
                raise BatchFailed(f"letterbox: {exc}") from exc

    def _letterbox_on_host(self, images, samples: list[Sample]) -> np.ndarray:
        """Letterbox DALI's decoded images with the contract's own code (luma at full resolution,
        then :func:`~dcx.core.preprocess.letterbox`): exact by construction, and cheaper on a CPU
        than DALI's resize with the edge correction (``dcx-bench throughput``'s decoding rows)."""
        out = np.empty((len(samples), 1, self.size, self.size), dtype=np.float32)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # this thread's only (OpenMP): the model's threads keep the other cores
        try:
            for k, s in enumerate(samples):
                pixels = self._as_float(np.asarray(images[k]))  # H x W x C
                if self.kind.endswith("16"):
                    pixels.clamp_(*s.clamp)
                gray = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels[:, :, :3] @ _LUMA
                out[k] = letterbox(gray[None], self.size, self.pad_value, scale=s.scale, offset=s.offset).numpy()
        finally:
            torch.set_num_threads(threads)
        return out

    def _as_float(self, decoded: np.ndarray) -> torch.Tensor:
        """``decoded`` as float32, in a buffer kept across images up to :data:`HOST_BUFFER_VALUES`
        (a new 4 MB array per film cost ~0.3 ms of fresh-page faults on 2 CPU cores); a larger
        image gets its own array, so one huge film does not hold its memory for the whole run."""
        pixels = torch.from_numpy(decoded)
        if decoded.size > HOST_BUFFER_VALUES:
            return pixels.to(torch.float32)
        if self._host_buffer.numel() < decoded.size:
            self._host_buffer = torch.empty(decoded.size, dtype=torch.float32)
        return self._host_buffer[:decoded.size].view(decoded.shape).copy_(pixels)

    def _feed(self, s: Sample) -> dict:
        """The per-sample inputs: geometry from the core letterbox_geometry, the zero margins
        (wider than the filter's reach), the value mapping with the edge normaliser folded in."""
        if not self.dali_resize:
            return {"encoded": s.data}
        h, w, top, left = letterbox_geometry(s.height, s.width, self.size)
        shares = dict(zip(("above", "below", "left", "right"), edge_shares(s.height, s.width, h, w)))
        return {
            "encoded": s.data,
            "clamp_lo": np.float32(s.clamp[0]), "clamp_hi": np.float32(s.clamp[1]),
            "resized": np.array([h, w], np.float32),
            **shares,
            "gain": edge_normaliser(s.height, s.width, h, w) * np.float32(s.scale),
            "offset": np.float32(s.offset),
            "box_anchor": np.array([-top, -left], np.int32),
        }

    def _copy_out(self, batch, n: int) -> np.ndarray | torch.Tensor:
        """Copy the outputs out of DALI's buffers (reused by the next run). On the CPU with numpy:
        torch's intra-op threads fought DALI's for 2 cores (a 6 MB torch.stack took 0.5 s).
        On the GPU the copy is queued on torch's stream, which DALI's stream does not wait for:
        an event marks it, and the next run (or close) waits for that event first."""
        if not self.gpu:
            return np.array(batch).reshape(n, 1, self.size, self.size)
        from nvidia.dali.plugin.pytorch import feed_ndarray

        out = torch.empty((n, self.size, self.size, 1), dtype=torch.float32, device="cuda")
        stream = torch.cuda.current_stream()
        feed_ndarray(batch, out, cuda_stream=stream)
        self._copied = stream.record_event()
        return out.reshape(n, 1, self.size, self.size)

    def _wait_for_copy_out(self) -> None:
        """Block until the last copy out of DALI's GPU buffer is done, so DALI may reuse it."""
        if self._copied is not None:
            self._copied.synchronize()
            self._copied = None

    def close(self) -> None:
        self._wait_for_copy_out()
        self._pipe = None


@functools.lru_cache(maxsize=64)
def edge_normaliser(height: int, width: int, out_height: int, out_width: int) -> np.ndarray:
    """1 / (share of each output pixel's filter weight that falls inside the image), as an
    (out_height, out_width, 1) float32 array: 1 inside, above 1 near the edges."""
    inside = np.outer(_inside_share(height, out_height), _inside_share(width, out_width))
    return (1.0 / inside).astype(np.float32)[:, :, None]


@functools.lru_cache(maxsize=64)
def edge_shares(height: int, width: int, out_height: int, out_width: int) -> tuple[np.ndarray, ...]:
    """The filter weight shares DALI puts on the repeated edge pixels: above and below the image
    ((out_height, 1, 1) each), left and right of it ((1, out_width, 1) each); 0 inside."""
    above, below = _outside_shares(height, out_height)
    left, right = _outside_shares(width, out_width)
    column, row = (lambda a: a.astype(np.float32)[:, None, None]), (lambda a: a.astype(np.float32)[None, :, None])
    return column(above), column(below), row(left), row(right)


def _inside_share(n_in: int, n_out: int) -> np.ndarray:
    before, after = _outside_shares(n_in, n_out)
    return 1.0 - before - after


def _outside_shares(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output position, the triangle filter's weight on input pixels before 0 and after
    n_in-1 over its total weight (torch's antialiased bilinear: support = max(scale, 1) input
    pixels)."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = scale * (np.arange(n_out) + 0.5)
    reach = math.ceil(support) + 1
    taps = np.floor(centres - support).astype(np.int64)[:, None] + np.arange(2 * reach + 1)[None, :]
    weights = np.clip(1.0 - np.abs((taps + 0.5 - centres[:, None]) / support), 0.0, None)
    total = weights.sum(1)
    return (weights * (taps < 0)).sum(1) / total, (weights * (taps >= n_in)).sum(1) / total
