"""Which TensorRT runtime may run a plan (dcx.engine.backends.trt_runtime), decided from the
sidecar for made-up environments: no GPU or TensorRT is needed to test the decision."""
from __future__ import annotations

import pytest

from dcx.engine.backends.trt_runtime import NO_RUNTIME, choose_runtime, import_runtime, runtime_refusal
from dcx.core.errors import DcxError

H200 = {"gpu_name": "NVIDIA H200", "compute_capability": "9.0"}
PLAIN = {"version": "11.2.1.2", **H200}
COMPATIBLE = {**PLAIN, "version_compatible": True, "lean_runtime_embedded": True}


def one_sentence(built, installed, gpu=H200) -> str:
    with pytest.raises(DcxError) as err:
        choose_runtime(built, installed, gpu, name="m.plan")
    message = err.value.message
    assert "\n" not in message and message.count(". ") == 0
    return message


@pytest.mark.parametrize("built, installed, expected", [
    (PLAIN, {"full": "11.2.1.2"}, "full"),
    (PLAIN, {"full": "11.2.1.2", "lean": "11.4.0.106"}, "full"),
    (COMPATIBLE, {"full": "11.4.0.106"}, "full"),  # a newer 11.x runs a version-compatible plan
    (COMPATIBLE, {"lean": "11.4.0.106"}, "lean"),
    (COMPATIBLE, {"dispatch": "11.2.1.2"}, "dispatch"),
    (COMPATIBLE, {"full": "11.1.0.106", "dispatch": "11.4.0.106"}, "dispatch"),  # full too old: next one
    (COMPATIBLE, {"lean": "11.4.0.106", "dispatch": "11.4.0.106"}, "lean"),
])
def test_the_first_runtime_that_may_run_the_plan_is_chosen(built, installed, expected):
    assert choose_runtime(built, installed, H200) == expected


def test_a_plain_plan_needs_the_full_library_of_its_own_version():
    message = one_sentence(PLAIN, {"full": "11.4.0.106", "lean": "11.4.0.106", "dispatch": "11.4.0.106"})
    assert "11.2.1.2" in message and "11.4.0.106" in message
    assert "only plans exported with --version-compatible" in message and "add --version-compatible" in message


@pytest.mark.parametrize("runtime", ["11.1.0.106", "10.16.1.11", "12.0.0.1"])
def test_a_version_compatible_plan_needs_a_newer_runtime_of_its_major_version(runtime):
    assert "at least that new" in one_sentence(COMPATIBLE, {"lean": runtime})


def test_dispatch_needs_the_embedded_lean_runtime():
    built = {**COMPATIBLE, "lean_runtime_embedded": False}
    assert "lean runtime embedded" in one_sentence(built, {"dispatch": "11.4.0.106"})
    assert choose_runtime(built, {"lean": "11.4.0.106"}, H200) == "lean"


def test_another_gpu_is_refused_by_every_runtime_naming_both():
    a100 = {"gpu_name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}
    message = one_sentence(COMPATIBLE, {"full": "11.4.0.106", "lean": "11.4.0.106"}, gpu=a100)
    assert "NVIDIA H200 (sm 9.0)" in message and "NVIDIA A100-SXM4-80GB (sm 8.0)" in message
    assert runtime_refusal(COMPATIBLE, "lean", "11.4.0.106", {**H200, "compute_capability": "9.1"})


def test_no_runtime_installed_says_where_each_comes_from():
    assert one_sentence(COMPATIBLE, {}) == NO_RUNTIME
    assert "dcx[trt-runtime]" in NO_RUNTIME and "NVIDIA's index" in NO_RUNTIME


def test_bindings_without_their_library_are_named_as_such(tmp_path, monkeypatch):
    """The bindings import, their native library does not (what a PyPI stub or a missing
    libnvinfer gives): not 'TensorRT is not installed'."""
    package = tmp_path / "tensorrt_lean"
    package.mkdir()
    (package / "__init__.py").write_text("raise OSError('libnvinfer_lean.so.11: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module, problem = import_runtime("lean")
    assert module is None
    assert "tensorrt_lean bindings are installed" in problem and "libnvinfer_lean.so.11" in problem


def test_export_names_a_broken_builder_too(tmp_path, monkeypatch):
    from dcx.export.tensorrt_build import tensorrt_unavailable_reason

    package = tmp_path / "tensorrt"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('libnvinfer.so.11: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "bindings are installed but the TensorRT library does not load" in tensorrt_unavailable_reason()


@pytest.mark.gpu
def test_version_compatible_plan_is_built_recorded_and_run(trained_checkpoint, tmp_path, monkeypatch):
    """On a GPU machine with the full builder: --version-compatible is recorded in the sidecar and
    the engine runs the plan (the full library is preferred when it is there)."""
    pytest.importorskip("tensorrt", reason="no full TensorRT builder (NVIDIA's index)")
    import json

    from conftest import invoke
    from dcx.engine.backends import open_backend
    from dcx.core.artefact import sidecar_path
    from dcx.export.cli import main

    monkeypatch.setenv("DCX_CACHE_DIR", str(tmp_path / "cache"))
    plan = tmp_path / "vc.plan"
    invoke(main, [trained_checkpoint, "--precision", "fp32", "--max-batch", 8, "--opt-batch", 4,
                  "--version-compatible", "--out", plan])
    record = json.loads(sidecar_path(plan).read_text())["tensorrt"]
    assert record["version_compatible"] is True and record["lean_runtime_embedded"] is True
    with open_backend(plan, device="cuda") as backend:
        assert backend.runtime_kind == "full"
