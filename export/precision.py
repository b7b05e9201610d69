"""FP32 ONNX -> the FP16 and INT8 graphs (precision lives in the graph).

TensorRT 11 is strongly typed: an engine's precision is that of its ONNX tensors. ONNX Runtime
and OpenVINO on a CPU run the same Q/DQ form, but want a different flavour of it, hence two
INT8 graphs for three targets:

- **FP16**: every float tensor and weight in half precision, with float32 ``image``/``probs``/
  ``cam`` at the edges (``keep_io_types``), so callers never change (onnxconverter-common).
- **INT8**, explicit quantization, a Q/DQ graph from ONNX Runtime's post-training quantizer
  (ModelOpt wraps the same quantizer but pins an older onnx), per-channel int8 weights, float
  biases, Q/DQ only on the inputs of compute ops, so ``probs`` and ``cam`` come out of float ops:

  - ``tensorrt``: symmetric int8 (zero point 0) activations, one Q/DQ pair per consumer and none
    after Conv -- the form TensorRT consumes;
  - ``cpu`` and ``openvino``: asymmetric uint8 activations and ORT's default placement (shared
    Q/DQ pairs, outputs of Conv/ReLU quantized), which ONNX Runtime's CPU provider fuses into
    QLinearConv kernels and OpenVINO into its own u8 x s8 ones; standalone batch norms stay
    float (:data:`CPU_QUANTIZED_OPS`); weights in a 7-bit range for ONNX Runtime
    (:data:`REDUCE_RANGE_ON_CPU`), full 8-bit for OpenVINO. The TensorRT flavour is slower than
    FP32 in ONNX Runtime on a CPU (``benchmarks/README.md``, "INT8 for CPUs").

The calibration method (percentile 99.999) and the layers left in float (the first convolution,
for CPU targets: :func:`default_float_layers`) were chosen by measurement on real radiographs
(``benchmarks/README.md``, "INT8 accuracy on real images").
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
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
#: Images whose activations the calibrator holds at once. ORT's histogram calibrators keep every
#: intermediate tensor of every image until the end: densenet121 at 224 px over 166 images took
#: more than 24 GiB and was killed; in chunks of 16 memory stays at the chunk's.
CALIBRATION_CHUNK = 16

#: Who runs the graph: ONNX Runtime on a CPU, OpenVINO on a CPU, or TensorRT.
TARGETS = ("cpu", "openvino", "tensorrt")
#: The runtime that serves (and verifies) an ONNX artefact of each target.
RUNTIME_OF_TARGET = {"cpu": "onnxruntime", "openvino": "openvino", "tensorrt": "onnxruntime"}

#: Nodes never quantized: the out-of-distribution score (0.04% of resnet18's FLOPs) is a squared
#: distance between whitened features, so int8 features would shift every score against its threshold.
ALWAYS_FLOAT_PREFIX = "/ood/"

#: Layers that can be left in float by name: the first convolution (sees raw pixels) and the classifier
#: head ("none": quantize every layer). Besides these, a backbone stage by its PyTorch name
#: (``features.4``: ``model.features[4]``, densenet121's first dense block; :func:`backbone_stages`).
FLOAT_LAYERS = ("first_conv", "head", "none")
STAGE_LAYER = re.compile(r"features\.\d+")

#: Ops whose *inputs* get Q/DQ; outputs are never quantized, so probabilities and CAM stay float.
QUANTIZED_OPS = ["Conv", "Gemm", "MatMul", "Add", "MaxPool", "AveragePool", "GlobalAveragePool",
                 "BatchNormalization"]
#: The same for CPU graphs, less the standalone batch norms (DenseNet's, before each ReLU -> conv;
#: other trunks' fold into their convolutions at export): quantized, a cxr-dev densenet121 kept
#: 93.3% of its validation decisions and cost 88.1 CPU-ms per image in OpenVINO; in float 98.9%
#: and 62.7 (FP32: 91.6). benchmarks/README.md, "CPU screening at 224 px, session 5".
CPU_QUANTIZED_OPS = [op for op in QUANTIZED_OPS if op != "BatchNormalization"]

#: Placement TensorRT fuses best (as NVIDIA ModelOpt configures this same quantizer): Q/DQ in
#: front of the compute ops only, one pair per consumer, none after Conv/ReLU/Concat/Softmax.
TENSORRT_PLACEMENT = {"OpTypesToExcludeOutputQuantization": QUANTIZED_OPS, "DedicatedQDQPair": True,
                      "ForceQuantizeNoInputCheck": True}


#: 7-bit weights for ONNX Runtime's CPU kernels: without VNNI (AVX2, AVX-512F) they multiply u8 x s8
#: pairs into 16 bits, which saturates with full 8-bit weights (measured: 88.9% decision agreement
#: on a cxr-dev resnet18 at 224 px, 96.7% with 7-bit weights; benchmarks/README.md). OpenVINO's
#: kernels do not saturate: its graphs keep full 8-bit weights.
REDUCE_RANGE_ON_CPU = True


def quantizer_settings(target: str, *, seven_bit_weights: bool | None = None) -> dict:
    """quantize_static keyword arguments (less the data) that make the ``target`` flavour;
    ``seven_bit_weights`` overrides the target's weight range (for studies)."""
    from onnxruntime.quantization import QuantType

    if seven_bit_weights is None:  # the weights' range is the runtime's
        seven_bit_weights = REDUCE_RANGE_ON_CPU and target == "cpu"
    if target == "tensorrt":
        return {"activation_type": QuantType.QInt8, "reduce_range": seven_bit_weights,
                "op_types_to_quantize": QUANTIZED_OPS,
                "extra_options": {"ActivationSymmetric": True, **TENSORRT_PLACEMENT}}
    if target in ("cpu", "openvino"):  # one CPU placement
        return {"activation_type": QuantType.QUInt8, "reduce_range": seven_bit_weights,
                "op_types_to_quantize": CPU_QUANTIZED_OPS, "extra_options": {"ActivationSymmetric": False}}
    raise DcxError(f"unknown INT8 target {target!r}; choose from {', '.join(TARGETS)}")


def describe_target(target: str) -> str:
    """One line for the sidecar: what the ``target`` flavour is."""
    activations = "int8 symmetric" if target == "tensorrt" else "uint8 asymmetric"
    weights = "7-bit range" if quantizer_settings(target)["reduce_range"] else "int8"
    return (f"onnxruntime.quantization.quantize_static (QDQ, {activations} activations, "
            f"{weights} symmetric per-channel weights, target {target})")


def to_fp16(fp32_model):
    """An FP16 copy of an FP32 ModelProto with float32 inputs and outputs."""
    from onnxconverter_common import float16

    with warnings.catch_warnings():  # one warning per weight clamped to the FP16 range: expected
        warnings.simplefilter("ignore", UserWarning)
        return float16.convert_float_to_float16(fp32_model, keep_io_types=True)


def default_float_layers(target: str) -> tuple[str, ...]:
    """Layers left in float unless asked otherwise. The classifier head on every target: with it
    in float the last feature map stays float, and the out-of-distribution score reads those
    features (quantized, they marked 47 of the README demo's 60 images out of distribution, FP32 1;
    the head is a 1x1 convolution to K classes, nothing to gain in INT8). On CPUs also the first
    convolution, which sees the raw pixels (quantizing it flipped screening decisions of a
    real-data resnet18; float cost about 6% in OpenVINO with three input channels, less folded
    to one by :func:`folds_gray_stem`)."""
    return ("head",) if target == "tensorrt" else ("first_conv", "head")


def folds_gray_stem(target: str) -> bool:
    """Whether graphs for ``target`` fold the first convolution for the gray input
    (:class:`dcx.core.models.GrayStem`). On CPUs: resnet18's INT8 graph ran 3-4% faster in
    OpenVINO (dcx-bench model, 20 calls taking turns; its float first layer took half the time).
    Not for TensorRT: its INT8 flavour quantizes the first convolution with symmetric activations,
    and raw [0, 1] gray uses half of that range where normalised pixels used all of it (a test
    model's decisions then moved: 94.4% agreement); a GPU has compute to spare for the 3-channel
    layer."""
    return target != "tensorrt"


def float_nodes(model, layers: Iterable[str]) -> list[str]:
    """Names of the graph nodes that make up ``layers`` (:data:`FLOAT_LAYERS` or stages)."""
    nodes, names = list(model.graph.node), []
    for layer in layers:
        if layer == "none":
            continue
        if layer == "first_conv":
            names += _first_conv(model.graph)
        elif layer == "head":  # the classifier: dcx heads are a 1x1 Conv (for the CAM), the last compute op
            names += [n.name for n in nodes if n.op_type in ("Conv", "Gemm", "MatMul")  # before the OOD score's,
                      and not n.name.startswith(ALWAYS_FLOAT_PREFIX)][-1:]  # wherever the graph's order puts it
        elif STAGE_LAYER.fullmatch(layer):
            stage = [n.name for n in nodes if n.name.startswith(f"/features/{layer}/")]
            if not stage:
                modules = [module for group in backbone_stages(model) for module in group]
                raise DcxError(f"this model has no backbone stage {layer!r}; its stages: {', '.join(modules)}")
            names += stage
        else:
            raise DcxError(f"unknown float layer {layer!r}; choose from {', '.join(FLOAT_LAYERS)} or a backbone "
                           "stage (features.N)")
    return names


def backbone_stages(model) -> list[tuple[str, ...]]:
    """The backbone's stages from the input on, less the first convolution's: its modules that hold
    a Conv (``features.N``, as PyTorch names them), a module joining the stage before when all its
    convolutions read maps of the size that stage's last one read. A stage is what works at one
    resolution: a DenseNet transition reads its dense block's maps (and leaving the block in float
    while its transition quantizes those maps did not keep a cxr-dev densenet121's decisions over
    all 300 images), while ResNet's next layer starts by reading the last layer's maps and goes on
    at half their size."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    sizes = {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim[-2:])
             for v in [*inferred.graph.value_info, *inferred.graph.input]}
    reads: dict[str, list[tuple]] = {}  # module -> the map size each of its convolutions reads
    for node in model.graph.node:
        parts = node.name.split("/")
        if node.op_type == "Conv" and len(parts) > 2 and parts[1] == "features" and STAGE_LAYER.fullmatch(parts[2]):
            reads.setdefault(parts[2], []).append(sizes.get(node.input[0]))
    stages: list[tuple[str, ...]] = []
    for module in list(reads)[1:]:
        if stages and set(reads[module]) == {reads[stages[-1][-1]][-1]}:
            stages[-1] += (module,)
        else:
            stages.append((module,))
    return stages


def float_layer_plans(model, layers: tuple[str, ...], *, search: bool) -> list[tuple[str, ...]]:
    """The float layers an INT8 export tries, in order, until one passes the accuracy gates:
    ``layers``, then (with ``search``) ``layers`` and the backbone's first stage
    (:func:`backbone_stages`), its first two, ... up to half of its stages, beyond which INT8 saves
    little over FP32. From the input on, because the early high-resolution stages were the
    sensitive ones: a cxr-dev densenet121 kept 98.9% of its validation decisions quantized
    throughout, 100% with its first stage in float (and 69 against 88 CPU-ms per image in FP32,
    OpenVINO); benchmarks/README.md."""
    plans = [tuple(layers)]
    if search:
        stages = backbone_stages(model)
        for k in range(1, math.ceil(len(stages) / 2) + 1):
            plans.append(tuple(layers) + tuple(module for stage in stages[:k] for module in stage))
    return plans


def _first_conv(graph) -> list[str]:
    """The first Conv node, with the Add of a constant right after it: the border map of a
    stem folded for gray input (:class:`dcx.core.models.GrayStem`), the same layer."""
    convs = [n for n in graph.node if n.op_type == "Conv"][:1]
    constants = {t.name for t in graph.initializer}
    border = [n for n in graph.node if convs and n.op_type == "Add" and convs[0].output[0] in n.input
              and any(name in constants for name in n.input)]
    return [n.name for n in convs + border]


def quantize_int8(fp32_path: str | os.PathLike, batches: Iterable[np.ndarray], *, target: str,
                  method: str = CALIBRATION_METHOD, keep_float: Iterable[str] = (),
                  seven_bit_weights: bool | None = None, calibration_cache: str | os.PathLike | None = None):
    """Calibrate ``fp32_path`` on ``batches`` of preprocessed images -> Q/DQ INT8 ModelProto for
    ``target``, the ``keep_float`` layers (:func:`float_nodes`) left unquantized.

    ``calibration_cache``: a JSON file of the activation ranges; written by the first call that
    names it, read (no calibration) by later ones for the same graph and method, whatever they
    leave in float: ranges cover every tensor of the graph."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    settings = quantizer_settings(target, seven_bit_weights=seven_bit_weights)
    if method not in CALIBRATION_METHODS:
        raise DcxError(f"unknown calibration method {method!r}; choose from {', '.join(CALIBRATION_METHODS)}")
    calibrate_method, calibration_options = CALIBRATION_METHODS[method]

    images = [np.ascontiguousarray(image[None], dtype=np.float32) for batch in batches for image in batch]
    if not images:
        raise DcxError("no calibration image could be read; INT8 needs at least one")

    class Reader(CalibrationDataReader):
        """One image per call: ORT's histogram calibrators stack per-call activations and fail on
        a short last batch; per image, every call has the same shape. ``set_range`` lets the
        quantizer calibrate in chunks (below)."""

        def __init__(self):
            self._range = iter(images)

        def __len__(self) -> int:
            return len(images)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._range = iter(images[start_index:end_index])

        def get_next(self):
            image = next(self._range, None)
            return None if image is None else {INPUT_NAME: image}

    with tempfile.TemporaryDirectory(prefix="dcx-int8-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        # Shape inference + graph clean-up (identities, shape arithmetic) that ORT recommends
        # before quantizing; symbolic shape inference is skipped, ONNX's own suffices here.
        quant_pre_process(os.fspath(fp32_path), os.fspath(prepared), skip_symbolic_shape=True)
        graph = onnx.load(os.fspath(prepared))
        excluded = float_nodes(graph, keep_float) + [n.name for n in graph.graph.node
                                                     if n.name.startswith(ALWAYS_FLOAT_PREFIX)]
        with _quiet_quantizer():
            quantize_static(os.fspath(prepared), os.fspath(quantized), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=settings["activation_type"],
                            reduce_range=settings["reduce_range"],
                            weight_type=QuantType.QInt8, op_types_to_quantize=settings["op_types_to_quantize"],
                            nodes_to_exclude=excluded,
                            calibrate_method=getattr(CalibrationMethod, calibrate_method),
                            calibration_cache_path=calibration_cache,
                            extra_options={"WeightSymmetric": True, "QuantizeBias": False,
                                           "CalibStridedMinMax": _chunk(len(images)),
                                           **settings["extra_options"], **calibration_options})
        return onnx.load(os.fspath(quantized))


def _chunk(n: int, most: int = CALIBRATION_CHUNK) -> int:
    """The largest divisor of ``n`` up to ``most``: ORT calibrates ``n`` images in equal chunks
    (its "CalibStridedMinMax", which every calibrator honours), merging histograms between them."""
    return max(d for d in range(1, min(n, most) + 1) if n % d == 0)


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

