"""FP32 ONNX -> the FP16 and INT8 graphs TensorRT builds from (precision lives in the graph).

TensorRT 11 is strongly typed: an engine's precision is that of its ONNX tensors (GUIDE s1).

- **FP16**: every float tensor and weight in half precision, with float32 ``image``/``probs``/
  ``cam`` at the edges (``keep_io_types``), so callers never change (onnxconverter-common).
- **INT8**: explicit quantization, a Q/DQ graph from ONNX Runtime's post-training quantizer:
  symmetric int8 (zero point 0) for activations and per-channel weights, biases left float --
  the form TensorRT consumes. Only the feature extractor is quantized; the classifier head
  (one 1x1 conv, <0.1% of the FLOPs) and everything after it stay float, because its outputs
  *are* the probabilities and the CAM that the screening threshold reads.

The calibration method is :data:`CALIBRATION_METHOD`, chosen by measured accuracy (see
``README.md``, "INT8 calibration").
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np

from dcx.train.errors import DcxError

from .artefact import INPUT_NAME

#: name -> (onnxruntime CalibrationMethod, quantize_static extra options)
CALIBRATION_METHODS = {
    "minmax": ("MinMax", {}),
    "entropy": ("Entropy", {}),
    "percentile": ("Percentile", {"CalibPercentile": 99.999}),
}
#: The one used by dcx-export (measured; see the module docstring).
CALIBRATION_METHOD = "minmax"

#: Ops whose inputs get Q/DQ: the convolutional trunk (TensorRT fuses Q/DQ into them).
QUANTIZED_OPS = ["Conv", "Gemm", "MatMul", "Add", "Concat", "MaxPool", "AveragePool",
                 "GlobalAveragePool", "Relu", "BatchNormalization"]


def to_fp16(fp32_model):
    """An FP16 copy of an FP32 ModelProto with float32 inputs and outputs."""
    from onnxconverter_common import float16

    with warnings.catch_warnings():  # one warning per weight clamped to the FP16 range: expected
        warnings.simplefilter("ignore", UserWarning)
        return float16.convert_float_to_float16(fp32_model, keep_io_types=True)


def quantize_int8(fp32_path: str | os.PathLike, batches: Iterable[np.ndarray], *,
                  method: str = CALIBRATION_METHOD):
    """Calibrate ``fp32_path`` on ``batches`` of preprocessed images -> Q/DQ INT8 ModelProto."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    if method not in CALIBRATION_METHODS:
        raise DcxError(f"unknown calibration method {method!r}; choose from {', '.join(CALIBRATION_METHODS)}")
    calibrate_method, calibration_options = CALIBRATION_METHODS[method]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.fed = 0
            self._it = iter(batches)

        def get_next(self):
            batch = next(self._it, None)
            if batch is None:
                return None
            self.fed += len(batch)
            return {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}

    reader = Reader()
    with tempfile.TemporaryDirectory(prefix="dcx-int8-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        # Shape inference + graph clean-up (identities, shape arithmetic) that ORT recommends
        # before quantizing; symbolic shape inference is skipped, ONNX's own suffices here.
        quant_pre_process(os.fspath(fp32_path), os.fspath(prepared), skip_symbolic_shape=True)
        head = _classifier_head(onnx.load(os.fspath(prepared)))
        try:
            with _quiet_root_logger():  # the quantizer logs routine notices as root warnings
                quantize_static(os.fspath(prepared), os.fspath(quantized), reader, quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                                op_types_to_quantize=QUANTIZED_OPS, nodes_to_exclude=head,
                                calibrate_method=getattr(CalibrationMethod, calibrate_method),
                                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                               "QuantizeBias": False, **calibration_options})
        except Exception as exc:
            if reader.fed == 0:
                raise DcxError("no calibration image could be read; INT8 needs at least one") from exc
            raise
        if reader.fed == 0:
            raise DcxError("no calibration image could be read; INT8 needs at least one")
        return onnx.load(os.fspath(quantized))


@contextlib.contextmanager
def _quiet_root_logger():
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _classifier_head(model) -> list[str]:
    """Names of the nodes from the head's conv to the class maps (conv [+ ReLU])."""
    producer = {out: node for node in model.graph.node for out in node.output}
    reduce = [n for n in model.graph.node if n.op_type == "ReduceMean"]
    if len(reduce) != 1:
        raise DcxError(f"expected one ReduceMean (the class-map average) in the graph, found {len(reduce)}")
    head, node = [], producer.get(reduce[0].input[0])
    while node is not None and node.op_type in ("Relu", "Conv"):
        head.append(node.name)
        if node.op_type == "Conv":
            return head
        node = producer.get(node.input[0])
    raise DcxError("cannot find the classifier head (a 1x1 Conv before the class-map average) in the graph")
