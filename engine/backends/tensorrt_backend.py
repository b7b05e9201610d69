"""TensorRT backend: a serialized engine (``.plan``/``.engine``) built by ``dcx-export``.

TensorRT 10/11 name-based API: one execution context on its own torch CUDA stream,
``set_input_shape`` per batch, ``set_tensor_address`` with the ``data_ptr()`` of torch CUDA
tensors, ``execute_async_v3``. Input and output buffers are allocated once, at the largest
batch of the plan's optimization profile, and reused; larger batches are split by
:meth:`Backend.infer`. TensorRT is imported only here, when a plan is opened.

A plan only runs on the GPU model and TensorRT version that built it (a version-compatible
plan: on that GPU with any newer runtime of the same major version, the lean and dispatch
runtimes from PyPI included; :mod:`.trt_runtime`), and carries no model card, so the sidecar
``<plan>.json`` supplies both: the card, and what the plan was built with, checked before
TensorRT ever sees the file (a mismatched plan can crash the process instead of failing cleanly).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from dcx.core.artefact import INPUT_NAME, OOD_OUTPUT, OUTPUT_NAMES, read_card, read_sidecar
from dcx.core.errors import DcxError

from .base import Backend
from .trt_runtime import NO_RUNTIME, open_runtime


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, path: str | os.PathLike, *, device: str = "auto", threads: int | None = None):
        del threads  # TensorRT runs on the GPU; there is no CPU pool to size
        path = Path(path)
        if device == "cpu":
            raise DcxError(f"{path.name} is a TensorRT plan, which runs on an NVIDIA GPU only; "
                           "use the .onnx artefact with device cpu")
        if not torch.cuda.is_available():
            raise DcxError(NO_RUNTIME)
        self.card = read_card(path)
        sidecar = read_sidecar(path) or {}
        built = sidecar.get("tensorrt")
        if not built:
            raise DcxError(f"{path.name} has no TensorRT build record in its sidecar; rebuild it with dcx-export")
        major, minor = torch.cuda.get_device_capability()
        here = {"gpu_name": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}
        trt, self.runtime_kind = open_runtime(built, here, name=path.name)
        self.precision = sidecar.get("artefact", {}).get("precision", "unknown")
        self.device = torch.device("cuda", torch.cuda.current_device())
        self._logger = trt.Logger(trt.Logger.WARNING)  # must outlive the runtime
        self._runtime = trt.Runtime(self._logger)
        if built.get("version_compatible"):  # the embedded lean runtime runs as host code
            self._runtime.engine_host_code_allowed = True
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise DcxError(f"{path}: TensorRT cannot deserialize this plan (corrupt or truncated file)")
        self._context = self._engine.create_execution_context()
        self._check_io(trt, path)
        low, _, high = self._engine.get_tensor_profile_shape(INPUT_NAME, 0)
        self._min_batch, self.max_batch = int(low[0]), int(high[0])
        self._stream = torch.cuda.Stream(self.device)
        self._buffers = self._allocate(trt)

    def _check_io(self, trt, path: Path) -> None:
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if inputs != [INPUT_NAME] or not set(OUTPUT_NAMES) <= set(names):
            raise DcxError(f"{path}: expected input {INPUT_NAME!r} and outputs {', '.join(OUTPUT_NAMES)}; "
                           f"the plan has {names}")
        self._outputs = list(OUTPUT_NAMES) + ([OOD_OUTPUT] if OOD_OUTPUT in names else [])

    def _allocate(self, trt) -> dict[str, torch.Tensor]:
        """One buffer per I/O tensor, shaped for the profile's largest batch."""
        dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
        size = self.card.input_size
        self._context.set_input_shape(INPUT_NAME, (self.max_batch, 1, size, size))
        buffers = {}
        for name in (INPUT_NAME, *self._outputs):
            dtype = dtypes.get(self._engine.get_tensor_dtype(name))
            if dtype is None:
                raise DcxError(f"plan tensor {name!r} has type {self._engine.get_tensor_dtype(name)}; "
                               "expected float32 or float16")
            shape = tuple(self._context.get_tensor_shape(name))
            buffers[name] = torch.empty(shape, dtype=dtype, device=self.device)
        return buffers

    def _infer(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        n = len(images)
        rows = max(n, self._min_batch)  # a profile may demand more rows; the extra ones are ignored
        size = self.card.input_size
        # The batch may still be being written on the caller's stream (e.g. a DALI copy).
        if images.is_cuda:
            self._stream.wait_stream(torch.cuda.current_stream(images.device))
        with torch.cuda.stream(self._stream):
            self._buffers[INPUT_NAME][:n].copy_(images, non_blocking=True)
            self._context.set_input_shape(INPUT_NAME, (rows, 1, size, size))
            for name, buffer in self._buffers.items():
                self._context.set_tensor_address(name, buffer[:rows].data_ptr())
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed; see the TensorRT log above")
            outputs = [self._buffers[name][:n].float().to("cpu", non_blocking=False) for name in self._outputs]
        self._stream.synchronize()
        return outputs[0].numpy(), outputs[1].numpy(), outputs[2].numpy() if len(outputs) > 2 else None

    def _release(self) -> None:
        self._stream.synchronize()
        del self._buffers, self._context, self._engine, self._runtime, self._logger
        torch.cuda.empty_cache()
