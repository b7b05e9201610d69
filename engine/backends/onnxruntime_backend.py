"""ONNX Runtime backend: the exported ``.onnx`` artefact, on the CUDA provider or the CPU.

The CPU is the common case (a 2-core box screening overnight), so the session is tuned
for throughput there: one intra-op thread per usable core, all graph optimisations,
sequential execution (these graphs are chains of convolutions; parallel branches gain
nothing and an inter-op pool would compete with decoding for the same cores), and pool
threads that sleep rather than spin between runs, leaving those cycles to the decoders, and
no CPU memory arena (the arena keeps every batch's peak allocation: -250 MiB on densenet121 at
batch 32, same speed; benchmarks/README.md).

Inputs are bound in place through IOBinding from the torch tensor's memory (host or CUDA),
so a batch is never copied on its way in.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from dcx.core.artefact import INPUT_NAME, OOD_OUTPUT, OUTPUT_NAMES, read_card, read_precision
from dcx.core.errors import DcxError
from dcx.core.files import usable_cores

from .base import Backend

_TENSOR_TYPES = {"tensor(float)": (np.float32, torch.float32), "tensor(float16)": (np.float16, torch.float16)}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, *, device: str = "auto", threads: int | None = None):
        import onnxruntime as ort

        self.card = read_card(path)
        self.precision = read_precision(path)
        cuda = device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()
        if device == "gpu" and not cuda:
            raise DcxError("device gpu: ONNX Runtime needs onnxruntime-gpu (pip install 'dcx[gpu]') and a "
                           "CUDA device PyTorch can see; use device cpu")
        if cuda:
            self.device = torch.device("cuda", torch.cuda.current_device())
            providers = [("CUDAExecutionProvider", {"device_id": self.device.index}), "CPUExecutionProvider"]
        else:
            self.device = torch.device("cpu")
            providers = ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(os.fspath(path), sess_options=cpu_tuned_options(threads),
                                                providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
            raise DcxError(f"{path}: ONNX Runtime cannot load it ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from exc
        if cuda and not got_cuda(self.session):
            if device == "cuda":
                raise DcxError(CUDA_FELL_BACK)
            self.device = torch.device("cpu")  # auto: say where it really runs
        inputs = self.session.get_inputs()
        outputs = [o.name for o in self.session.get_outputs()]
        if [i.name for i in inputs] != [INPUT_NAME] or not set(OUTPUT_NAMES) <= set(outputs):
            raise DcxError(f"{path}: expected input {INPUT_NAME!r} and outputs {', '.join(OUTPUT_NAMES)}; "
                           f"found {[i.name for i in inputs]} -> {outputs}")
        if inputs[0].type not in _TENSOR_TYPES:
            raise DcxError(f"{path}: unsupported input type {inputs[0].type}")
        expected, fixed = (1, self.card.input_size, self.card.input_size), inputs[0].shape[1:]
        if len(fixed) != 3 or any(isinstance(d, int) and d != e for d, e in zip(fixed, expected)):
            raise DcxError(f"{path}: the graph takes {inputs[0].shape[1:]} images, its model card says "
                           f"{list(expected)}: the card does not belong to this model")
        self._np_dtype, self._torch_dtype = _TENSOR_TYPES[inputs[0].type]
        self._outputs = list(OUTPUT_NAMES) + ([OOD_OUTPUT] if OOD_OUTPUT in outputs else [])

    def _infer(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        x = images.to(self.device, self._torch_dtype).contiguous()
        if x.is_cuda:  # ONNX Runtime reads on its own stream: the batch must be complete first
            torch.cuda.current_stream(self.device).synchronize()
        binding = self.session.io_binding()
        binding.bind_input(INPUT_NAME, self.device.type, self.device.index or 0, self._np_dtype,
                           tuple(x.shape), x.data_ptr())
        for name in self._outputs:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        outputs = [o.astype(np.float32, copy=False) for o in binding.copy_outputs_to_cpu()]
        return outputs[0], outputs[1], outputs[2] if len(outputs) > 2 else None

    def _release(self) -> None:
        del self.session


#: ONNX Runtime drops the CUDA provider, with a warning the log level hides, when its CUDA or cuDNN
#: libraries are missing or of another major version than the onnxruntime-gpu build expects.
CUDA_FELL_BACK = ("device cuda: ONNX Runtime could not start its CUDA provider (CUDA or cuDNN libraries missing "
                  "or not the versions this onnxruntime-gpu build needs) and would run on the CPU; install the "
                  "matching nvidia-*-cu13 libraries or use device cpu")


def got_cuda(session) -> bool:
    """Whether ``session`` really runs on the CUDA provider (it falls back to the CPU silently)."""
    return "CUDAExecutionProvider" in session.get_providers()


def cpu_tuned_options(threads: int | None = None):
    """SessionOptions for batch throughput on a small CPU (see the module docstring)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or usable_cores()
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = False
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: provider notices would repeat on every run
    return options
