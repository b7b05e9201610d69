"""GPU paths that must fail loudly or fall back truthfully, tested on a CPU machine with the
real components: ONNX Runtime's silent CPU fallback, --ray's device choice, DALI's absence."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from dcx.engine import ray_runner, scoring
from dcx.engine.backends.onnxruntime_backend import cpu_tuned_options, got_cuda
from dcx.engine.decode import module_available
from dcx.core.errors import DcxError


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_a_session_that_asked_for_cuda_and_fell_back_is_detected(tmp_path):
    """The CPU build of ONNX Runtime, asked for the CUDA provider, does what a GPU build with
    mismatched CUDA libraries does: warns (hidden at dcx's log level) and runs on the CPU."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    asked = ort.InferenceSession(str(path), sess_options=cpu_tuned_options(1),
                                 providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert got_cuda(asked) is ("CUDAExecutionProvider" in ort.get_available_providers())
    assert not got_cuda(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))


def _pool(resources: dict, device: str):
    cluster = SimpleNamespace(cluster_resources=lambda: resources)
    return ray_runner._actor_pool(cluster, scoring.ScreenOptions(engine=Path("m.onnx"), out=Path("o"), device=device))


def test_ray_auto_stays_auto_on_gpu_actors_so_each_backend_decides():
    options, resources = _pool({"GPU": 2, "CPU": 16}, "auto")
    assert options.device == "auto" and resources["num_gpus"] == 1 and resources["concurrency"] == 2
    assert _pool({"GPU": 1, "CPU": 4}, "gpu")[0].device == "gpu"
    options, resources = _pool({"CPU": 4}, "auto")
    assert options.device == "cpu" and resources == {"num_cpus": 1, "concurrency": 3}
    with pytest.raises(DcxError, match="no GPU"):
        _pool({"CPU": 4}, "gpu")


def test_a_missing_parent_package_is_not_installed_rather_than_a_crash():
    assert not module_available("dcx_no_such_namespace.dali")  # find_spec raises here
    assert not module_available("dcx.no_such_module")
    assert module_available("dcx.engine.decode")
