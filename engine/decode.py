"""The engine's decoder: file paths -> letterboxed unit-gray tensors, and one outcome per file.

Every byte is hostile, so Python looks at each file before any decoder does:

1. **Read** the header first: not a regular file, above :data:`~dcx.core.formats.MAX_FILE_BYTES`, unreadable -> ``error``.
2. **Sniff** the magic bytes (:func:`dcx.core.formats.sniff_bytes`); unknown or empty -> ``error``
   when the name claims an image or DICOM (:func:`claims_image`), else ``skipped`` (a CSV, a PDF,
   ``Thumbs.db``: no image, nothing wrong). Only then is the rest of the file read.
3. **DICOM** (:mod:`dcx.core.dicom`): header rules first (non-images and series rules ->
   ``skipped``; absurd sizes -> ``error``, before any pixel is touched). Frame 1 of JPEG baseline
   and JPEG 2000 objects (and first-order lossless JPEG on a GPU; :mod:`dcx.engine.codec_rules`)
   goes to DALI's decoder as compressed bytes;
   other syntaxes (uncompressed, JPEG-LS, RLE, 12-bit lossy) are decoded by pydicom and its
   plugins and handed to DALI as arrays; either way DALI applies the header's
   :class:`~dcx.core.dicom.PixelTransform` and resizes. Colour, LUT tables, sigmoid windows
   and signed data take the reference path (numpy).
4. **Rasters**: nvImageCodec -- the parser DALI decodes with -- reads the header: above
   ``MAX_PIXELS`` -> ``error``; 8-bit gray, 8-bit colour and 16-bit gray go to DALI; the rest
   (CMYK, 16-bit colour, 1-bit, 12-bit JPEG, unparseable headers, files without their end
   marker) go to the core reference reader, :func:`dcx.core.reader.read_unit_gray`.

DALI decodes batches (:mod:`dcx.engine.dali_pipeline`). One bad file fails its whole batch
and kills the pipeline, so a failed batch is rebuilt and split in halves until the
culprit is alone; a file that fails alone is retried through the reference path, and only
when that fails too does it become an ``error`` row with the reference reader's reason.

**DCT-scaled JPEG** (CPU, opt-in: ``dct_scaling=True``): a baseline 8-bit JPEG at least
``2 * DCT_MARGIN`` times the model input on its long side is decoded by libjpeg (Pillow's
``draft``) at 1/2, 1/4 or 1/8 scale -- the IDCT skips the high frequencies the letterbox
resize would average away anyway -- never below ``DCT_MARGIN`` times the input, then
letterboxed as the reference path does. It departs from the contract by at most
:data:`DCT_MAX_ABS` (any pixel) and :data:`DCT_MEAN_ABS` (mean) in unit gray, held by
``tests/engine/test_decode.py`` against the reference reader.

Parity with the training transform (``Preprocess(size)(read_unit_gray(path))``) is held by
``tests/engine/test_decode.py`` (max 1e-4, mean 1e-5); the figure measured on the real sample
data is in ``benchmarks/README.md`` ("Decoder parity"). The GPU build is tested only where a
GPU is (``@pytest.mark.gpu``): nvJPEG's IDCT may move JPEG pixels by a gray level or two.
"""
from __future__ import annotations

import importlib.util
import io
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from dcx.core import dicom, formats
from dcx.core.errors import DcxError
from dcx.core.preprocess import MAX_PIXELS, Preprocess, letterbox_geometry, to_unit_gray
from dcx.core.reader import read_unit_gray
from dcx.core.reasons import clean_text, exception_reason
from dcx.core.resize import resize_antialiased

from . import codec_rules, integrity
from .dali_import import import_dali
from .dali_pipeline import CLOCK_STAGES, KINDS, BatchFailed, LetterboxPipeline, Sample
from .stage_clock import StageClock

# nvImageCodec's header parser and OpenCV's JPEG 2000 reader (both inside DALI) log every odd
# file to stderr, over the progress bar; the outcome rows carry the reasons instead.
os.environ.setdefault("PYNVIMGCODEC_VERBOSITY", "0")
os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")

#: DCT-scaled JPEG decoding keeps the decoded long side at least this many times the model input.
DCT_MARGIN = 2
#: Its bound against the reference path (unit gray, letterboxed): any pixel, and one image's mean
#: (measured on the 51 cxr-dev JPEGs: max 0.090 / worst mean 0.0016 at 128 px, 0.048 / 0.0009 at 224).
DCT_MAX_ABS = 0.1
DCT_MEAN_ABS = 0.002

#: The most images one DALI run decodes on the CPU. DALI keeps each sample slot's buffer at the
#: largest image decoded in it, so a pipeline as wide as a 16-image batch holds about 16 of the
#: run's largest films (decoded, and as RGB where any was colour): over 2,000 files of the archive of
#: benchmarks/README.md (session 8), runs of 8 held 114-137 MiB less at the same CPU cost. On a
#: GPU decoded images live in device memory and nvJPEG gains from wide batches: there DALI runs
#: the whole batch.
CPU_DALI_BATCH = 8


@dataclass
class Outcome:
    """What became of one input file. ``meta``: ``width``/``height``, ``decoded_by`` (``dali`` or
    ``reference``: Pillow / pydicom) and, for DICOM, the tags of :data:`dcx.core.dicom.META_TAGS`
    plus ``transfer_syntax`` and ``frames``."""

    status: str = "ok"  # ok | error | skipped
    reason: str | None = None
    #: For an ``ok`` file: damage the decoder forgave (:func:`dcx.engine.integrity.damage`).
    note: str | None = None
    format: str | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class DecodedBatch:
    """``images[k]`` belongs to input ``rows_of_images[k]``; ``outcomes`` has one entry per input."""

    images: torch.Tensor  # (M, 1, S, S) float32, on the decoder's device
    rows_of_images: list[int]
    outcomes: list[Outcome]


@dataclass
class _Item:
    """One file on its way: to DALI (``kind`` + ``sample``), or already decoded (``unit_gray``)."""

    outcome: Outcome
    kind: str | None = None
    sample: Sample | None = None
    unit_gray: np.ndarray | None = None
    reference: Callable[[], np.ndarray] | None = None  # the reference decoding, if DALI fails
    decoded_by: str = "reference"  # what made unit_gray: "reference" or "dct-scaled"


class Decoder:
    """Decode batches of files for the engine (see the module docstring). A context manager;
    one pipeline per input kind, built on first use and reused; not thread-safe.

    ``dali_resize``: where the letterbox resize runs. By default in DALI on the GPU and, on the
    CPU, in the contract's own code after DALI decodes (:class:`LetterboxPipeline`); True on the
    CPU runs the GPU's resize graph on DALI's CPU operators, which is how its edge correction is
    tested where there is no GPU.

    ``counts`` tallies images by path (``dali``, ``reference``) and ``failed_batches``;
    ``timings`` holds cumulative busy seconds per stage: ``read`` (reading bytes, sniffing,
    headers), ``decode`` (DALI runs with their resize, on the CPU the letterbox after them;
    reference decoding), ``preprocess`` (feeding geometry, copying out, reference letterboxing,
    stacking) and ``setup`` (building pipelines).
    """

    def __init__(self, preprocess: Preprocess, *, device: str = "cpu", batch_size: int = 32,
                 num_threads: int = 2, include_phi: bool = False,
                 series_rules: dicom.SeriesRules | None = None, dct_scaling: bool = False,
                 dali_resize: bool | None = None):
        if device not in ("cpu", "gpu"):
            raise DcxError(f"decoder device must be 'cpu' or 'gpu', got {device!r}")
        if device == "gpu" and not torch.cuda.is_available():
            raise DcxError("GPU decoding needs a CUDA device; torch sees none (use device 'cpu')")
        if device == "gpu" and dali_resize is False:
            raise DcxError("on the GPU the letterbox resize runs in DALI (dali_resize must not be False)")
        if batch_size < 1 or num_threads < 1:
            raise DcxError("batch size and decode threads must be at least 1")
        try:  # here, with advice, not mid-run
            import_dali()
        except ImportError as exc:  # not installed, or a broken install: say which
            raise DcxError(f"DALI is not installed: pip install nvidia-dali-cuda130 ({exc})") from None
        self.preprocess, self.device = preprocess, device
        self.num_threads = num_threads
        self.dali_batch = batch_size if device == "gpu" else min(batch_size, CPU_DALI_BATCH)
        self.include_phi, self.series_rules = include_phi, series_rules
        self.dct_scaling = dct_scaling and device == "cpu"  # nvJPEG on a GPU gains nothing from it
        self.dali_resize = dali_resize
        self.counts: Counter = Counter()
        self._torch_device = torch.device("cuda" if device == "gpu" else "cpu")
        self._pipelines: dict[str, LetterboxPipeline] = {}
        self._clock = StageClock(("read",) + CLOCK_STAGES)

    @property
    def timings(self) -> dict[str, float]:
        return dict(self._clock.seconds)

    def __enter__(self) -> "Decoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for pipeline in self._pipelines.values():
            pipeline.close()
        self._pipelines.clear()

    # ------------------------------------------------------------------ batches

    def decode(self, paths: list[str | os.PathLike]) -> DecodedBatch:
        """Decode ``paths`` (about one batch: their bytes are held at once); never raises for a
        bad file (its outcome says why)."""
        with self._clock("read"):
            items = [self._prepare(Path(p)) for p in paths]
        images: dict = {}  # input row -> (1, S, S): numpy on the CPU, a CUDA tensor on the GPU
        for kind in KINDS:
            todo = [i for i, item in enumerate(items) if item.kind == kind]
            for start in range(0, len(todo), self.dali_batch):
                images.update(self._run_isolating(kind, todo[start:start + self.dali_batch], items))
        with self._clock("preprocess"):
            for i, item in enumerate(items):
                if item.unit_gray is not None and item.outcome.status == "ok":
                    image = self.preprocess(torch.from_numpy(item.unit_gray).to(self._torch_device))
                    images[i] = image if self.device == "gpu" else image.numpy()
                    self.counts[item.decoded_by] += 1
                if i in images:
                    item.outcome.meta["decoded_by"] = "dali" if item.kind else item.decoded_by
            rows = sorted(images)
            return DecodedBatch(self._stack([images[i] for i in rows]), rows, [item.outcome for item in items])

    def _stack(self, images: list) -> torch.Tensor:
        size = self.preprocess.size
        if self.device == "gpu":
            return torch.stack(images) if images else torch.empty((0, 1, size, size), device="cuda")
        out = np.empty((len(images), 1, size, size), dtype=np.float32)  # numpy: see dali_pipeline
        for k, image in enumerate(images):
            out[k] = image
        return torch.from_numpy(out)

    def _run_isolating(self, kind: str, todo: list[int], items: list[_Item]) -> dict:
        """Run ``todo`` through DALI; on a failed batch, bisect until the culprits are alone."""
        done = {}
        pending = [todo]
        while pending:
            group = pending.pop()
            try:
                images, sizes = self._pipeline(kind).run([items[i].sample for i in group])
            except BatchFailed as exc:
                self.counts["failed_batches"] += 1
                if len(group) == 1:
                    self._use_reference(items[group[0]], f"DALI could not decode it: {clean_text(str(exc))}")
                else:
                    half = len(group) // 2
                    pending += [group[half:], group[:half]]
                continue
            for i, image, decoded in zip(group, images, sizes):
                sample = items[i].sample
                if decoded != (sample.height, sample.width):
                    self._use_reference(items[i], f"decoded {decoded[1]}x{decoded[0]}, header said "
                                                  f"{sample.width}x{sample.height}")
                else:
                    done[i] = image
                    self.counts["dali"] += 1
        return done

    def _pipeline(self, kind: str) -> LetterboxPipeline:
        if kind not in self._pipelines:
            self._pipelines[kind] = LetterboxPipeline(
                kind, size=self.preprocess.size, pad_value=self.preprocess.pad_value, device=self.device,
                batch_size=self.dali_batch, num_threads=self.num_threads, clock=self._clock,
                dali_resize=self.dali_resize)
        return self._pipelines[kind]

    def _use_reference(self, item: _Item, dali_problem: str) -> None:
        """DALI failed this file: decode it the reference way, or record why neither could."""
        item.kind = item.sample = None
        try:
            with self._clock("decode"):
                item.unit_gray = item.reference()
        except DcxError as exc:
            item.outcome.status, item.outcome.reason = "error", exc.message
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a decoder bug (or a Rust panic) must not cost the batch
            item.outcome.status, item.outcome.reason = "error", clean_text(f"{dali_problem}; reference: "
                                                                           f"{exception_reason(exc)}")

    # ------------------------------------------------------------------ one file

    def _prepare(self, path: Path) -> _Item:
        outcome = Outcome()
        try:
            data, outcome.format = _read(path)
            if outcome.format == "dicom":
                return self._prepare_dicom(path, outcome)
            return self._prepare_raster(path, data, outcome)
        except NotAnImage as exc:
            outcome.status, outcome.reason = "skipped", exc.message
        except dicom.Skipped as exc:
            outcome.status, outcome.reason = "skipped", exc.message
        except DcxError as exc:
            outcome.status, outcome.reason = "error", exc.message
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # hostile bytes find bugs anywhere: one row, never a crash
            outcome.status, outcome.reason = "error", f"unexpected {exception_reason(exc)}"
        return _Item(outcome)

    def _prepare_raster(self, path: Path, data: bytes, outcome: Outcome) -> _Item:
        item = _Item(outcome, reference=lambda: _read_reference(path))
        outcome.note = integrity.damage(outcome.format, data)
        header = _probe(data)
        if header is not None:
            outcome.meta.update(width=header.width, height=header.height)
            _check_pixels(header.width, header.height)
        kind = _raster_kind(header) if header is not None and _looks_complete(outcome.format, data) else None
        if kind is None:
            with self._clock("decode"):
                item.unit_gray = item.reference()
            outcome.meta.update(width=item.unit_gray.shape[1], height=item.unit_gray.shape[0])
        elif self.dct_scaling and outcome.format == "jpeg" and kind in ("gray8", "rgb8") and (
                reduced := dct_scaled_jpeg(data, self.preprocess.size)) is not None:
            with self._clock("decode"):
                item.unit_gray, item.decoded_by = reduced(), "dct-scaled"
        else:
            top = 65535.0 if kind == "gray16" else 255.0
            item.kind, item.sample = kind, Sample(_array(data), header.height, header.width, 1.0 / top)
        return item

    def _prepare_dicom(self, path: Path, outcome: Outcome) -> _Item:
        # from the path: pydicom reads the header and defers large values (the pixel data is
        # read once, when frame 1 is taken), so a DICOM file is never held twice in memory
        image = dicom.open_dicom(path, include_phi=self.include_phi, series_rules=self.series_rules)
        outcome.meta.update(image.meta)
        item = _Item(outcome, reference=image.unit_gray)
        transform = image.transform
        if transform is None or not transform.linear or transform.signed:
            with self._clock("decode"):
                item.unit_gray = image.unit_gray()  # colour, LUT tables, sigmoid, signed: numpy
            return item
        item.kind, item.sample = self._dali_frame(image) or self._stored_frame(image)
        return item

    def _dali_frame(self, image: dicom.DicomImage) -> tuple[str, Sample] | None:
        """Frame 1 as compressed bytes for DALI's decoder, or None when pydicom must decode it
        (:func:`~dcx.engine.codec_rules.dali_decodes`: decided before DALI sees the frame)."""
        syntax = str(image.transfer_syntax)
        codec = codec_rules.CODEC_OF_SYNTAX.get(syntax)
        if codec is None:
            return None
        frame = image.first_frame()
        header = _probe(frame)
        predictor = codec_rules.lossless_jpeg_predictor(frame) if codec == "jpeg-lossless" else None
        if (header is None or header.codec_name != ("jpeg2k" if codec == "jpeg2k" else "jpeg")
                or header.num_channels != 1 or (header.height, header.width) != (image.rows, image.columns)
                or header.precision != image.transform.bits_stored
                or not codec_rules.dali_decodes(syntax, header.precision, self.device, predictor=predictor)
                or not _looks_complete(codec, frame)):
            return None
        transform = image.transform
        if header.precision == 8 and codec != "jpeg-lossless" and not transform.clips:
            sample = Sample(_array(frame), image.rows, image.columns, transform.scale, transform.offset)
            return "gray8", sample
        gain = codec_rules.uint16_gain(header.precision, self.device, codec)
        return "gray16", _windowed(_array(frame), image, gain=gain)

    def _stored_frame(self, image: dicom.DicomImage) -> tuple[str, Sample]:
        """Frame 1 decoded by pydicom (uncompressed, JPEG-LS, RLE, ...) for DALI to window and resize."""
        with self._clock("decode"):
            stored = image.transform.stored_values(image.decoded_frame())
        if stored.dtype.kind != "u" or stored.dtype.itemsize > 2:
            raise DcxError(f"{stored.dtype} pixel data is not supported")
        return "raw16", _windowed(stored.astype(np.uint16)[:, :, None], image, gain=1.0)


# --------------------------------------------------------------------------- helpers


def dct_scaled_jpeg(data: bytes, size: int) -> Callable[[], np.ndarray] | None:
    """A decoder of JPEG ``data`` at the smallest DCT scale (1/2, 1/4, 1/8) whose long side stays
    at least ``DCT_MARGIN * size``, returning unit gray already resized to the letterbox size of
    the *full* image (so padding and geometry are the contract's, not the reduced image's);
    None when the image is too small for any scale (or not plain 8-bit)."""
    im = Image.open(io.BytesIO(data))
    if im.format != "JPEG" or im.mode not in ("L", "RGB"):
        return None
    long_side = max(im.size)
    scale = max((s for s in (2, 4, 8) if long_side / s >= DCT_MARGIN * size), default=None)
    if scale is None:
        return None

    def decode() -> np.ndarray:
        h, w, _, _ = letterbox_geometry(im.height, im.width, size)
        with im:
            im.draft(im.mode, (-(-im.width // scale), -(-im.height // scale)))
            unit = torch.from_numpy(to_unit_gray(np.asarray(im)))
        return resize_antialiased(unit, h, w).numpy()

    return decode


def module_available(name: str) -> bool:
    """Whether ``name`` can be imported; False also when a parent package (``nvidia``) is
    missing, where ``importlib.util.find_spec`` raises instead."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


class NotAnImage(DcxError):
    """A file that neither is nor claims to be an image (``manifest.csv``, ``Thumbs.db``): a
    ``skipped`` row, so real folders do not make every nightly run end with errors."""


#: Name suffixes that claim an image or DICOM file: such a file that cannot be read is an
#: ``error``. So is a file without suffix (PACS exports name DICOM files ``IM000123``) or with a
#: numeric one (files named by their SOP Instance UID, ``1.2.840...5.1234``), and an image in a
#: format dcx does not score (GIF, HEIC, NIfTI, ...): an image the run could not look at.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".tif", ".tiff", ".bmp", ".dib",
                            ".webp", ".jp2", ".j2k", ".j2c", ".jpx", ".jpf", ".jpc", ".dcm", ".dicom",
                            ".dic", ".ima", ".img", ".gif", ".heic", ".heif", ".avif", ".jxl", ".pgm",
                            ".ppm", ".pnm", ".pbm", ".tga", ".ico", ".exr", ".hdr", ".raw", ".nii",
                            ".mha", ".mhd", ".nrrd"})
#: First bytes of image formats dcx does not score (GIF): an error whatever the name.
_OTHER_IMAGE_MAGIC = (b"GIF87a", b"GIF89a")


def claims_image(path: Path, head: bytes = b"") -> bool:
    suffix = path.suffix.lower()
    return (suffix == "" or suffix in IMAGE_SUFFIXES or suffix[1:].isdigit()
            or head.startswith(_OTHER_IMAGE_MAGIC))


def _read(path: Path) -> tuple[bytes, str]:
    """The bytes and format of an image file (of a DICOM file: its first bytes only, pydicom
    reads the rest). The header is read and sniffed first, so a file that is no image is never
    read whole; the open never blocks (a FIFO put in place of a file after discovery is refused,
    not waited on)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise DcxError("not a regular file")
        with os.fdopen(fd, "rb") as f:
            if st.st_size == 0:
                _refuse(path, b"", "empty file (0 bytes)")
            if st.st_size > formats.MAX_FILE_BYTES:
                raise DcxError(f"{st.st_size} bytes exceeds the {formats.MAX_FILE_BYTES} byte file limit")
            head = f.read(formats.HEADER_BYTES)
            fmt = formats.sniff_bytes(head)
            if fmt is None:
                _refuse(path, head, "unsupported format: not JPEG, PNG, TIFF, BMP, WebP, JPEG 2000 or DICOM "
                              "by its first bytes")
            if fmt == "dicom":
                return head, fmt
            data = bytearray(st.st_size)  # one buffer, filled in place: no second copy of a large file
            data[: len(head)] = head
            with memoryview(data) as view, view[len(head):] as rest:
                filled = len(head) + f.readinto(rest)
            del data[filled:]  # the file shrank since its stat
    except PermissionError:
        raise DcxError("permission denied") from None
    except FileNotFoundError:
        raise DcxError("file not found") from None
    except OSError as exc:
        raise DcxError(f"cannot read: {exc.strerror or exc}") from None
    if not data:
        raise DcxError("empty file (0 bytes)")
    return data, fmt


def _refuse(path: Path, head: bytes, problem: str) -> None:
    """An unreadable file is an error when it claims to be an image, else a skipped non-image."""
    if claims_image(path, head):
        raise DcxError(problem)
    raise NotAnImage(f"not an image: a {path.suffix.lower()} file, {problem.split(':')[0]}")


def _probe(data: bytes):
    """nvImageCodec's view of an encoded image (codec, size, channels, dtype, precision) without
    decoding it; None when it cannot parse the header (then DALI could not decode it either)."""
    from nvidia import nvimgcodec

    try:
        stream = nvimgcodec.CodeStream(data)
        stream.width  # parsing is lazy: this raises for a bad header
        return stream
    except Exception:
        return None


def _check_pixels(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise DcxError(f"{width}x{height} exceeds the {MAX_PIXELS} pixel limit")


def raster_kind(data: bytes) -> str | None:
    """The pipeline kind (:data:`~dcx.engine.dali_pipeline.KINDS`) DALI decodes an encoded
    raster as, or None when the reference reader does: one rule for the engine and for tools
    that decode as it does (dcx-bench's codec-only row)."""
    header = _probe(data)
    return None if header is None else _raster_kind(header)


def _raster_kind(header) -> str | None:
    """Which pipeline decodes a raster exactly as the reference reader does, or None."""
    from nvidia import nvimgcodec

    dtype, channels, precision = str(header.dtype), header.num_channels, header.precision
    if dtype == "uint8" and precision == 8:
        if channels == 1:
            return "gray8"
        ink = header.color_spec in (nvimgcodec.ColorSpec.CMYK, nvimgcodec.ColorSpec.YCCK)
        if channels in (2, 3, 4) and not ink:
            return "rgb8"
    if dtype == "uint16" and precision == 16 and channels == 1:
        return "gray16"
    return None


def _looks_complete(fmt: str, data: bytes) -> bool:
    """Cheap end-of-file checks, so truncated files go to the reference reader (which names the
    problem) instead of failing a DALI batch."""
    tail = data[-4096:]
    if fmt == "png":
        return b"IEND" in tail
    if fmt in ("jpeg", "jpeg-lossless", "jpeg2000", "jpeg2k"):
        return b"\xff\xd9" in tail
    if fmt == "webp":
        return len(data) >= int.from_bytes(data[4:8], "little") + 8
    if fmt == "bmp":
        return len(data) >= int.from_bytes(data[2:6], "little")
    return True


def _windowed(data: np.ndarray, image: dicom.DicomImage, gain: float) -> Sample:
    """A 16-bit sample of ``image``: values are ``gain`` x stored; clamped to the window first."""
    t = image.transform
    scale, clamp = t.scale / gain, (0.0, 65535.0)
    if scale:
        clamp = tuple(sorted(((0.0 - t.offset) / scale, (1.0 - t.offset) / scale)))
    return Sample(data, image.rows, image.columns, scale, t.offset, clamp)


def _array(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


def _read_reference(path: Path) -> np.ndarray:
    """The core reference reader, its messages without the ``<path>: `` prefix (rows carry the path)."""
    try:
        return read_unit_gray(path)
    except DcxError as exc:
        prefix = f"{os.fspath(path)}: "
        raise DcxError(clean_text(exc.message[len(prefix):] if exc.message.startswith(prefix) else exc.message)) from exc
