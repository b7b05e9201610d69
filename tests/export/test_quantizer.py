"""What each INT8 target's quantizer leaves in float and how wide its weights are, on a small
graph with a batch norm that no convolution absorbs (as DenseNet's, before each ReLU -> conv)."""
import numpy as np
import onnx
import pytest
import torch

from dcx.core.artefact import INPUT_NAME
from dcx.export.precision import quantize_int8


@pytest.fixture(scope="module")
def fp32_graph(tmp_path_factory):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.BatchNorm2d(8),
                                torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3)).eval()
    with torch.no_grad():  # a trained-looking norm, so its inputs are worth calibrating
        model[2].running_mean.uniform_(0.0, 0.5)
        model[2].running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("quantizer") / "fp32.onnx"
    torch.onnx.export(model, (torch.rand(1, 1, 16, 16),), str(path), input_names=[INPUT_NAME], output_names=["out"],
                      dynamic_axes={INPUT_NAME: {0: "N"}}, opset_version=17, dynamo=False)
    assert "BatchNormalization" in {n.op_type for n in onnx.load(str(path)).graph.node}
    return path


def _quantized(path, target):
    images = [np.random.default_rng(0).random((4, 1, 16, 16), dtype=np.float32)]
    return quantize_int8(path, images, target=target, method="minmax")


def _fed_by(model, op_type: str) -> set[str]:
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    return {producer.get(n.input[0]) for n in model.graph.node if n.op_type == op_type}


def _largest_weight(model) -> int:
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    return max(int(np.abs(inits[n.input[0]].astype(np.int16)).max()) for n in model.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8)


@pytest.mark.parametrize("target, norm_quantized, seven_bit", [("cpu", False, True), ("openvino", False, False),
                                                               ("tensorrt", True, False)])
def test_each_target_quantizes_its_own_way(fp32_graph, target, norm_quantized, seven_bit):
    """CPU graphs keep the lone batch norm float (quantized, a real densenet121 lost decisions and
    ran slower in OpenVINO); ONNX Runtime's graph keeps 7-bit weights (its kernels saturate 8-bit
    ones without VNNI), OpenVINO's and TensorRT's full 8-bit ones."""
    model = _quantized(fp32_graph, target)
    assert ("DequantizeLinear" in _fed_by(model, "BatchNormalization")) == norm_quantized
    assert _fed_by(model, "Conv") == {"DequantizeLinear"}  # the convolutions are INT8 on every target
    assert (_largest_weight(model) <= 64) == seven_bit
