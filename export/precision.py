"""FP32 ONNX -> the FP16 and INT8 graphs (precision lives in the graph).

TensorRT 11 is strongly typed: an engine's precision is that of its ONNX tensors. ONNX Runtime
on a CPU runs the same Q/DQ form, but wants a different flavour of it, hence two INT8 targets:

- **FP16**: every float tensor and weight in half precision, with float32 ``image``/``probs``/
  ``cam`` at the edges (``keep_io_types``), so callers never change (onnxconverter-common).
- **INT8**, explicit quantization, a Q/DQ graph from ONNX Runtime's post-training quantizer
  (ModelOpt wraps the same quantizer but pins an older onnx), per-channel int8 weights, float
  biases, Q/DQ only on the inputs of compute ops, so ``probs`` and ``cam`` come out of float ops:

  - ``tensorrt``: symmetric int8 (zero point 0) activations, one Q/DQ pair per consumer and none
    after Conv -- the form TensorRT consumes;
  - ``cpu``: asymmetric uint8 activations and ORT's default placement (shared Q/DQ pairs, outputs
    of Conv/ReLU quantized), which ONNX Runtime's CPU provider fuses into QLinearConv/ConvInteger
    kernels (u8 x s8 is the fast AVX2/AVX-512-VNNI path). On a 2-core AVX2 EPYC it runs resnet18
    about twice as fast as FP32, where the TensorRT flavour is slower than FP32 there
    (``benchmarks/README.md``, "INT8 for CPUs").

The calibration method (percentile 99.999) was chosen by measurement; the comparison with
MinMax and Entropy is in ``benchmarks/README.md`` ("INT8 calibration method").
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np

from dcx.core.artefact import INPUT_NAME
from dcx.core.errors import DcxError

#: name -> (onnxruntime CalibrationMethod, quantize_static extra options)
CALIBRATION_METHODS = {
    "minmax": ("MinMax", {}),
    "entropy": ("Entropy", {}),
    "percentile": ("Percentile", {"CalibPercentile": 99.999}),
}
#: The one used by dcx-export (measured; benchmarks/README.md).
CALIBRATION_METHOD = "percentile"

#: Who runs the INT8 graph: ONNX Runtime on a CPU, or TensorRT.
TARGETS = ("cpu", "tensorrt")

#: Layers that can be left in float: the first convolution (sees raw pixels) and the classifier head.
FLOAT_LAYERS = ("first_conv", "head")

#: Ops whose *inputs* get Q/DQ; outputs are never quantized, so probabilities and CAM stay float.
QUANTIZED_OPS = ["Conv", "Gemm", "MatMul", "Add", "MaxPool", "AveragePool", "GlobalAveragePool",
                 "BatchNormalization"]

#: Placement TensorRT fuses best (as NVIDIA ModelOpt configures this same quantizer): Q/DQ in
#: front of the compute ops only, one pair per consumer, none after Conv/ReLU/Concat/Softmax.
TENSORRT_PLACEMENT = {"OpTypesToExcludeOutputQuantization": QUANTIZED_OPS, "DedicatedQDQPair": True,
                      "ForceQuantizeNoInputCheck": True}


def quantizer_settings(target: str) -> dict:
    """quantize_static keyword arguments (less the data) that make the ``target`` flavour."""
    from onnxruntime.quantization import QuantType

    if target == "tensorrt":
        return {"activation_type": QuantType.QInt8,
                "extra_options": {"ActivationSymmetric": True, **TENSORRT_PLACEMENT}}
    if target == "cpu":
        return {"activation_type": QuantType.QUInt8, "extra_options": {"ActivationSymmetric": False}}
    raise DcxError(f"unknown INT8 target {target!r}; choose from {', '.join(TARGETS)}")


def describe_target(target: str) -> str:
    """One line for the sidecar: what the ``target`` flavour is."""
    activations = "uint8 asymmetric" if target == "cpu" else "int8 symmetric"
    return (f"onnxruntime.quantization.quantize_static (QDQ, {activations} activations, "
            f"int8 symmetric per-channel weights, target {target})")


def to_fp16(fp32_model):
    """An FP16 copy of an FP32 ModelProto with float32 inputs and outputs."""
    from onnxconverter_common import float16

    with warnings.catch_warnings():  # one warning per weight clamped to the FP16 range: expected
        warnings.simplefilter("ignore", UserWarning)
        return float16.convert_float_to_float16(fp32_model, keep_io_types=True)


def float_nodes(model, layers: Iterable[str]) -> list[str]:
    """Names of the graph nodes that make up ``layers`` (see :data:`FLOAT_LAYERS`)."""
    nodes, names = list(model.graph.node), []
    for layer in layers:
        if layer == "first_conv":
            names += [n.name for n in nodes if n.op_type == "Conv"][:1]
        elif layer == "head":  # the classifier: dcx heads are a 1x1 Conv (for the CAM), the last compute op
            names += [n.name for n in nodes if n.op_type in ("Conv", "Gemm", "MatMul")][-1:]
        else:
            raise DcxError(f"unknown float layer {layer!r}; choose from {', '.join(FLOAT_LAYERS)}")
    return names


def quantize_int8(fp32_path: str | os.PathLike, batches: Iterable[np.ndarray], *, target: str,
                  method: str = CALIBRATION_METHOD, keep_float: Iterable[str] = ()):
    """Calibrate ``fp32_path`` on ``batches`` of preprocessed images -> Q/DQ INT8 ModelProto for
    ``target``, the ``keep_float`` layers (:data:`FLOAT_LAYERS`) left unquantized."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    settings = quantizer_settings(target)
    if method not in CALIBRATION_METHODS:
        raise DcxError(f"unknown calibration method {method!r}; choose from {', '.join(CALIBRATION_METHODS)}")
    calibrate_method, calibration_options = CALIBRATION_METHODS[method]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.fed = 0
            self._it = (image for batch in batches for image in batch)

        def get_next(self):
            # One image per call: ORT's histogram calibrators stack per-call activations and
            # fail on a short last batch; per image, every call has the same shape.
            image = next(self._it, None)
            if image is None:
                return None
            self.fed += 1
            return {INPUT_NAME: np.ascontiguousarray(image[None], dtype=np.float32)}

    reader = Reader()
    with tempfile.TemporaryDirectory(prefix="dcx-int8-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        # Shape inference + graph clean-up (identities, shape arithmetic) that ORT recommends
        # before quantizing; symbolic shape inference is skipped, ONNX's own suffices here.
        quant_pre_process(os.fspath(fp32_path), os.fspath(prepared), skip_symbolic_shape=True)
        excluded = float_nodes(onnx.load(os.fspath(prepared)), keep_float)
        try:
            with _quiet_quantizer():
                quantize_static(os.fspath(prepared), os.fspath(quantized), reader, quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=settings["activation_type"],
                                weight_type=QuantType.QInt8, op_types_to_quantize=QUANTIZED_OPS,
                                nodes_to_exclude=excluded,
                                calibrate_method=getattr(CalibrationMethod, calibrate_method),
                                extra_options={"WeightSymmetric": True, "QuantizeBias": False,
                                               **settings["extra_options"], **calibration_options})
        except Exception as exc:
            if reader.fed == 0:
                raise DcxError("no calibration image could be read; INT8 needs at least one") from exc
            raise
        if reader.fed == 0:
            raise DcxError("no calibration image could be read; INT8 needs at least one")
        return onnx.load(os.fspath(quantized))


@contextlib.contextmanager
def _quiet_quantizer():
    """The quantizer prints progress to stdout and routine notices as root-logger warnings."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)

