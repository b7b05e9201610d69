"""ONNX -> TensorRT plan, and the check that a plan belongs to the machine that opens it.

TensorRT is imported lazily, only here, so every other part of dcx works without it.
Precision comes from the ONNX graph (FP16 tensors, Q/DQ INT8) because the network is
strongly typed: on TensorRT 10 through ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``,
on TensorRT 11 always (the flag is deprecated and ignored there).

A plan is only valid for the GPU model and TensorRT version that built it, and it carries no
model card, so its sidecar ``<plan>.json`` records both the card and the build environment;
:mod:`dcx.engine.backends.trt_runtime` refuses a plan from another GPU or TensorRT
version *before* TensorRT deserializes it (a mismatched plan can take the process down).

The timing cache (measured kernel timings) persists across builds: per TensorRT version and
GPU under ``$DCX_CACHE_DIR`` (default ``~/.cache/dcx``), so the second build of any model on
the same box skips most autotuning.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from dcx.core.artefact import INPUT_NAME, read_sidecar, sha256_file, sidecar_path
from dcx.core.errors import DcxError
from dcx.core.files import atomic_path, cache_dir, write_json
from dcx.engine.backends.trt_runtime import import_runtime

#: Exit status of dcx-export when the ONNX artefacts were written but the plan could not be built.
EXIT_PLAN_NOT_BUILT = 3


def tensorrt_unavailable_reason() -> str | None:
    """Why no plan can be built here (one phrase), or None when TensorRT and a GPU are present."""
    module, problem = import_runtime("full")
    if module is None:
        return problem or ("the tensorrt Python package is not installed (the full builder comes from NVIDIA's "
                           "index, not PyPI)")
    if not hasattr(module, "Builder"):
        return f"{module.__name__} has no builder (a runtime-only installation)"
    import torch

    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA device"
    return None


def default_timing_cache(environment: dict) -> Path:
    root = cache_dir()
    gpu = "".join(c if c.isalnum() else "-" for c in environment["gpu_name"])
    return root / f"tensorrt-{environment['version']}-{gpu}-sm{environment['compute_capability']}.timing-cache"


def build_plan(onnx_path: str | os.PathLike, out: str | os.PathLike, *, min_batch: int = 1, opt_batch: int = 64,
               max_batch: int = 256, workspace_gb: float = 4.0, timing_cache: Path | None = None,
               version_compatible: bool = False) -> Path:
    """Build ``out`` (a serialized engine) from an exported ONNX file and write ``<out>.json``.

    ``version_compatible``: ``BuilderFlag.VERSION_COMPATIBLE`` with the lean runtime embedded, so
    newer TensorRT runtimes of the same major version -- the lean and dispatch runtimes from PyPI
    too -- can run the plan on this GPU model (a little slower to load; the sidecar says so)."""
    import tensorrt as trt

    onnx_path, out = Path(onnx_path), Path(out)
    source = read_sidecar(onnx_path)
    if source is None:
        raise DcxError(f"{onnx_path} has no sidecar {sidecar_path(onnx_path).name}; export it with dcx-export first")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise DcxError(f"batch profile must satisfy 1 <= min <= opt <= max; got {min_batch}, {opt_batch}, {max_batch}")
    environment = build_environment()
    size = source["card"]["input_size"]
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_strongly_typed_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DcxError(f"TensorRT cannot parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (min_batch, 1, size, size), (opt_batch, 1, size, size), (max_batch, 1, size, size))
    config.add_optimization_profile(profile)
    cache_path = timing_cache or default_timing_cache(environment)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)

    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DcxError(f"TensorRT failed to build a plan from {onnx_path}; see the TensorRT log above")
    build_seconds = time.perf_counter() - started
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    _write_bytes_atomic(cache_path, config.get_timing_cache().serialize())
    _write_bytes_atomic(out, serialized)

    artefact = {**source["artefact"], "onnx_sha256": sha256_file(onnx_path), "plan_sha256": sha256_file(out),
                "source_onnx": onnx_path.name}
    tensorrt = {**environment, "precision": artefact["precision"], "strongly_typed": True,
                "version_compatible": version_compatible, "lean_runtime_embedded": version_compatible,
                "profile": {"min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch},
                "workspace_bytes": int(workspace_gb * (1 << 30)), "timing_cache": os.fspath(cache_path),
                "build_seconds": round(build_seconds, 1)}
    write_json(sidecar_path(out), {"card": source["card"], "artefact": artefact, "tensorrt": tensorrt,
                                          **{k: v for k, v in source.items() if k in ("calibration", "source")}})
    return out


def _strongly_typed_flags(trt) -> int:
    """TensorRT 10 needs the flag; TensorRT 11 is strongly typed always and ignores it."""
    if int(trt.__version__.split(".")[0]) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _write_bytes_atomic(path: Path, data) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(memoryview(data))


def build_environment() -> dict:
    """TensorRT version and the GPU a plan built now is tied to (recorded in its sidecar, where
    :mod:`dcx.engine.backends.trt_runtime` reads it before any runtime loads the plan)."""
    import tensorrt as trt
    import torch

    major, minor = torch.cuda.get_device_capability()
    return {"version": trt.__version__, "gpu_name": torch.cuda.get_device_name(),
            "compute_capability": f"{major}.{minor}"}
