"""Decoding-only throughput and CPU cost: the other half of the end-to-end budget.

Model-only throughput is the ceiling inference sets; this module measures what decoding
costs on the same files, so a report can say where end-to-end time goes and what is
reachable at all. On a CPU, decoding and inference share the same cores, so the images/s
of the whole path cannot exceed ``cores / (decode + inference CPU seconds per image)``
(:func:`cpu_ceiling`), however well the two overlap. The decoding figures:

- **engine decoder**: :class:`dcx.engine.decode.Decoder` exactly as ``dcx-infer`` builds it
  (batch size, threads, device): read, sniff, headers, DALI decode, letterbox;
- **codec only**: DALI's image decoder alone (no resize, no checks) on the raster files the
  engine decoder handed to DALI: the floor no decoder of these files can go under;
- **DCT-scaled** (CPU only): the engine decoder with ``dct_scaling=True`` -- large JPEGs decoded
  at reduced DCT scale, within the bound :data:`dcx.engine.decode.DCT_MAX_ABS` of the contract;
- **DALI resize** (CPU only): the engine decoder with ``dali_resize=True`` -- DALI resizes with
  the edge correction, as on a GPU, instead of the contract's own letterbox after decoding.
"""
from __future__ import annotations

import os
import time

from dcx.core.errors import DcxError
from dcx.engine.backends import read_engine_card
from dcx.engine.decode import Decoder, raster_kind


def bench_engine_decoder(files: list[str], engine: str | os.PathLike, *, batch_size: int, threads: int,
                         device: str = "cpu") -> tuple[dict, list[str]]:
    """Images/s and CPU milliseconds per image of the engine's decoder over ``files``, and the
    raster files it decoded with DALI (:func:`bench_alternatives` times the codec on them)."""
    return _bench_engine_decoder(files, _preprocess(files, engine), batch_size, threads, device)


def bench_alternatives(files: list[str], rasters: list[str], engine: str | os.PathLike, *, batch_size: int,
                       threads: int, device: str = "cpu") -> dict:
    """The same for DALI's bare codec on ``rasters`` and, on a CPU, for the decoder's DCT-scaled
    and DALI-resize variants over ``files``."""
    record = {"codec_only": _bench_codec(rasters, batch_size, threads, device)}
    if device == "cpu":
        preprocess = _preprocess(files, engine)
        for name, option in (("dct_scaled", "dct_scaling"), ("dali_resize", "dali_resize")):
            record[name], _ = _bench_engine_decoder(files, preprocess, batch_size, threads, device, **{option: True})
    return record


def _preprocess(files: list[str], engine: str | os.PathLike):
    if not files:
        raise DcxError("no files to decode")
    return read_engine_card(engine).preprocess()


def cpu_ceiling(cores: int, *cpu_ms_per_image: float) -> float:
    """The most images/s ``cores`` can sustain when each image costs the given CPU milliseconds."""
    return 1000.0 * cores / sum(cpu_ms_per_image)


def _bench_engine_decoder(files, preprocess, batch_size: int, threads: int, device: str, *,
                          dct_scaling: bool = False, dali_resize: bool | None = None) -> tuple[dict, list[str]]:
    """The decoder's record, and the raster files it decoded with DALI (the codec's input)."""
    by_dali: list[str] = []

    def decode(batch: list[str]) -> int:
        decoded = decoder.decode(batch)
        by_dali.extend(path for path, outcome in zip(batch, decoded.outcomes)
                       if outcome.meta.get("decoded_by") == "dali" and outcome.format != "dicom")
        return len(decoded.images)

    with Decoder(preprocess, device=device, batch_size=batch_size, num_threads=threads,
                 dct_scaling=dct_scaling, dali_resize=dali_resize) as decoder:
        decoder.decode(files[:batch_size])  # warm-up: builds the pipelines
        record = _timed(decode, files, batch_size)
        record["dct_scaled_files"] = decoder.counts["dct-scaled"]
    what = "dcx.engine.decode.Decoder (read, checks, DALI decode, letterbox)"
    if dct_scaling:
        what = "the same with dct_scaling=True (large JPEGs decoded at 1/2..1/8 DCT scale)"
    if dali_resize:
        what = "the same with dali_resize=True (DALI resizes, with the edge correction, as on a GPU)"
    return {**record, "what": what}, by_dali


def _bench_codec(rasters: list[str], batch_size: int, threads: int, device: str) -> dict:
    """DALI's decoder alone, as the engine's pipelines call it (gray files to GRAY, colour files
    to RGB, by the engine's own :func:`~dcx.engine.decode.raster_kind`; no resize, no checks) on
    raster files it is known to decode. Not ANY_DATA: DALI 2.4's CPU decoder corrupted the heap
    on a batch mixing gray, RGB and RGBA PNGs."""
    import numpy as np
    import torch
    from nvidia.dali import fn, pipeline_def, types

    if not rasters:
        return {"images": 0, "what": "no raster file went to DALI (DICOM or reference-path files only)"}

    @pipeline_def(batch_size=batch_size, num_threads=threads, prefetch_queue_depth=1,
                  device_id=torch.cuda.current_device() if device == "gpu" else None)
    def codec(output_type):
        encoded = fn.external_source(name="encoded", batch=True)
        return fn.decoders.image(encoded, output_type=output_type, dtype=types.UINT8,
                                 device="mixed" if device == "gpu" else "cpu")

    pipes = {gray: codec(types.GRAY if gray else types.RGB) for gray in (True, False)}
    for pipe in pipes.values():
        pipe.build()
    # before the clock starts
    gray = {path: raster_kind(np.fromfile(path, dtype=np.uint8).tobytes()) != "rgb8" for path in rasters}

    def decode(batch: list[str]) -> int:
        for kind, pipe in pipes.items():
            part = [path for path in batch if gray[path] == kind]
            if part:
                pipe.feed_input("encoded", [np.fromfile(path, dtype=np.uint8) for path in part])
                pipe.run()
        return len(batch)

    decode(rasters[:batch_size])
    return {**_timed(decode, rasters, batch_size),
            "what": "DALI fn.decoders.image only, to gray or RGB (no resize, no checks)"}


def _timed(decode, files: list[str], batch_size: int) -> dict:
    """One pass over ``files``: wall and process CPU time (every thread) per decoded image."""
    wall, cpu, images = time.perf_counter(), time.process_time(), 0
    for start in range(0, len(files), batch_size):
        images += decode(files[start:start + batch_size])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if images == 0:
        raise DcxError("no file decoded")
    return {"images": images, "images_per_s": images / wall, "cpu_ms_per_image": 1000.0 * cpu / images}
