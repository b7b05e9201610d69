"""OpenVINO backend: an ONNX artefact exported for OpenVINO (``dcx-export --target openvino``), on the CPU.

On a small x86 CPU without VNNI, OpenVINO runs the same graphs cheaper than ONNX Runtime:
on the 2-core AVX2 EPYC of ``benchmarks/README.md`` ("OpenVINO on the CPU") resnet18 INT8
costs about 27 CPU-ms per image against 32-41 in ONNX Runtime, and densenet121 FP32 81 against
97, because its int8 kernels handle u8 x s8 products without the 16-bit saturation that forces
ONNX Runtime's graphs to 7-bit weights, and its float convolution kernels are faster (not its
concatenations: DenseNet's 58 are still copied, about 8% of its profile). The
artefact records this runtime in its sidecar and ONNX metadata, and its export was verified
through this very backend, so an OpenVINO artefact is never served by another runtime.

The model is compiled for latency with one stream and ``threads`` inference threads (default:
one per usable core), explicit f32 inference precision (no silent bf16 on CPUs that have it:
the export gates were measured in f32) and no CPU pinning (the decoder threads share the cores).
Given the ``batch_size`` its caller sends, it is compiled for exactly that batch and a smaller
one is padded with zeros (rows are independent): OpenVINO runs INT8 graphs faster with a
static shape (densenet121 INT8 67.8 against 81.3 CPU-ms per image, resnet18 26.3 against 27.8,
FP32 the same; benchmarks/README.md, session 6).
Compiled models are cached under ``$DCX_CACHE_DIR/openvino`` (OpenVINO keys them by model and
settings and recompiles on any change), so a nightly run does not compile the same model again;
each new model or batch adds a 20-50 MB blob, so the folder is kept to :data:`CACHE_BYTES`, the
least recently used blobs deleted first.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numpy as np
import torch

from dcx.core.artefact import INPUT_NAME, OOD_OUTPUT, OUTPUT_NAMES, read_card, read_precision
from dcx.core.errors import DcxError
from dcx.core.files import cache_dir, usable_cores

from .base import Backend

INSTALL_HINT = "pip install 'dcx[openvino]'"
#: Most bytes of compiled models kept in the cache (about 20-50 models' worth).
CACHE_BYTES = 1 << 30


def import_openvino():
    """``import openvino`` without its telemetry.

    Importing OpenVINO imports its model converter, which sends a usage event to Google
    Analytics from a forked process whenever the openvino-telemetry package is installed (a
    dependency of the openvino wheel; ``openvino/tools/ovc/__init__.py``). A hospital's nightly
    screening must not phone home, and the fork, made while dcx's decode thread was importing,
    left the child waiting forever on the import lock and dcx-infer waiting for it at exit (one
    ``dcx-bench`` repetition hung so). With the package marked absent, OpenVINO uses its own
    no-op stub (``telemetry_stub``); importing also got ~0.1 s cheaper.
    """
    sys.modules.setdefault("openvino_telemetry", None)
    import openvino

    return openvino


def prune_cache(folder: Path, budget: int) -> list[Path]:
    """Delete the least recently used compiled models (``*.blob``) in ``folder`` until the rest fit
    in ``budget`` bytes; return the deleted paths. Recency is the later of a blob's access and
    modification times: OpenVINO reads a blob it reuses, and Linux's default ``relatime`` records
    that at least daily, so a nightly model stays; without access times the oldest written goes
    first, and a model that loses its blob is compiled again on its next load."""
    blobs = []
    for path in folder.glob("*.blob"):
        with contextlib.suppress(FileNotFoundError):  # another run pruning at the same time
            stat = path.stat()
            blobs.append((max(stat.st_atime, stat.st_mtime), stat.st_size, path))
    total = sum(size for _, size, _ in blobs)
    deleted = []
    for _, size, path in sorted(blobs):
        if total <= budget:
            break
        path.unlink(missing_ok=True)
        total -= size
        deleted.append(path)
    return deleted


class OpenVinoBackend(Backend):
    name = "openvino"

    def __init__(self, path: str | os.PathLike, *, device: str = "auto", threads: int | None = None,
                 batch_size: int | None = None):
        if device == "gpu":
            raise DcxError(f"{os.fspath(path)} was exported for OpenVINO, which dcx runs on the CPU; use device cpu "
                           "(or export an fp16 plan or ONNX for the GPU)")
        try:
            ov = import_openvino()
        except ImportError:
            raise DcxError(f"{os.fspath(path)} was exported for OpenVINO, which is not installed: {INSTALL_HINT} "
                           "(or re-export it with --target cpu for ONNX Runtime)") from None
        self.card = read_card(path)
        self.precision = read_precision(path)
        self.device = torch.device("cpu")
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": threads or usable_cores(),
                  "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": False}
        core = ov.Core()
        cache = cache_dir() / "openvino"
        core.set_property({"CACHE_DIR": os.fspath(cache)})
        size = self.card.input_size
        try:
            model = os.fspath(path)
            if batch_size is not None:
                model = core.read_model(model)
                model.reshape({INPUT_NAME: [batch_size, 1, size, size]})
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError with multi-line messages
            raise DcxError(f"{path}: OpenVINO cannot load it ({type(exc).__name__}: "
                           f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''})") from exc
        inputs = [name for port in self.compiled.inputs for name in port.get_names()]
        outputs = {name for port in self.compiled.outputs for name in port.get_names()}
        if INPUT_NAME not in inputs or not set(OUTPUT_NAMES) <= outputs:
            raise DcxError(f"{path}: expected input {INPUT_NAME!r} and outputs {', '.join(OUTPUT_NAMES)}; "
                           f"found {inputs} -> {sorted(outputs)}")
        shape = self.compiled.input(INPUT_NAME).get_partial_shape()
        fixed = [d.get_length() if d.is_static else None for d in shape][1:]
        if len(fixed) != 3 or any(d is not None and d != e for d, e in zip(fixed, (1, size, size))):
            raise DcxError(f"{path}: the graph takes {shape} images, its model card says [N, 1, {size}, {size}]: "
                           "the card does not belong to this model")
        self._outputs = list(OUTPUT_NAMES) + ([OOD_OUTPUT] if OOD_OUTPUT in outputs else [])
        self._request = self.compiled.create_infer_request()
        self.max_batch = batch_size
        with contextlib.suppress(OSError):  # a read-only or vanished cache costs compile time, not the run
            prune_cache(cache, CACHE_BYTES)

    def _infer(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        x = images.to("cpu", torch.float32).contiguous().numpy()
        n = len(x)
        if self.max_batch is not None and n < self.max_batch:  # the compiled batch, padded
            x = np.concatenate([x, np.zeros((self.max_batch - n, *x.shape[1:]), np.float32)])
        self._request.infer({INPUT_NAME: x})
        # copies: the request's output buffers are reused by the next call
        outputs = [np.array(self._request.get_tensor(name).data[:n], dtype=np.float32) for name in self._outputs]
        return outputs[0], outputs[1], outputs[2] if len(outputs) > 2 else None

    def _release(self) -> None:
        del self._request, self.compiled
