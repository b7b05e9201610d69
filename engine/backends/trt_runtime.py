"""Which TensorRT runtime runs a plan on this machine: the full library, the lean runtime or the
dispatch runtime, decided from the plan's sidecar before TensorRT reads a byte of it.

PyPI has no full TensorRT (its ``tensorrt`` packages download the libraries from NVIDIA's index at
install time), but it has two small runtimes (``pip install 'dcx[trt-runtime]'``): the lean runtime
(``tensorrt-lean-cu13-*``) and the dispatch runtime (``tensorrt-dispatch-cu13-*``). Both run only
*version-compatible* plans (``dcx-export --version-compatible``: ``BuilderFlag.VERSION_COMPATIBLE``,
the lean runtime embedded in the plan, which the dispatch runtime needs and runs as host code).

The rules (:func:`runtime_refusal`, pure, so they are tested with made-up environments):

* every runtime: the GPU model and compute capability the plan was built for;
* a plain plan: the full library, exactly the version that built it;
* a version-compatible plan: any runtime of the same major version, at least as new as the builder
  (TensorRT: version-compatible plans run on later runtimes of that major version);
* the dispatch runtime: also needs the lean runtime embedded in the plan.

:func:`choose_runtime` takes the first of full, lean, dispatch that may run the plan.
"""
from __future__ import annotations

import importlib

from dcx.core.errors import DcxError

#: The runtimes in order of preference, and the module names each one installs as (the PyPI
#: wheels install ``tensorrt_lean_bindings`` / ``tensorrt_dispatch_bindings``; NVIDIA's
#: meta-packages and tarballs add the shorter names).
RUNTIME_MODULES = {
    "full": ("tensorrt", "tensorrt_bindings"),
    "lean": ("tensorrt_lean", "tensorrt_lean_bindings"),
    "dispatch": ("tensorrt_dispatch", "tensorrt_dispatch_bindings"),
}

NO_RUNTIME = ("reading .plan files needs TensorRT and an NVIDIA GPU: the full library (NVIDIA's index), or for "
              "plans exported with --version-compatible the runtime from PyPI (pip install 'dcx[trt-runtime]'); "
              "use the .onnx artefact on this machine")


def import_runtime(kind: str):
    """(module, None) for the runtime ``kind``, or (None, why not) -- None when it is simply not
    installed, a phrase when its bindings are there but its library does not load."""
    problem = None
    for name in RUNTIME_MODULES[kind]:
        try:
            return importlib.import_module(name), None
        except ModuleNotFoundError as exc:
            if exc.name != name:  # the bindings are there; something they need is not
                problem = f"the {name} bindings are installed but {exc.name} is missing"
        except (ImportError, OSError) as exc:  # e.g. libnvinfer*.so not found, or a PyPI stub
            first = (str(exc).splitlines() or [""])[0][:160]
            problem = f"the {name} bindings are installed but the TensorRT library does not load ({first})"
    return None, problem


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in str(text).split(".") if part.isdigit())


def runtime_refusal(built: dict, kind: str, version: str, gpu: dict) -> str | None:
    """Why runtime ``kind`` at ``version`` on ``gpu`` (``gpu_name``, ``compute_capability``)
    cannot run a plan whose sidecar build record is ``built``; None when it can."""
    if (str(built.get("gpu_name")), str(built.get("compute_capability"))) != (
            str(gpu.get("gpu_name")), str(gpu.get("compute_capability"))):
        return (f"it was built for {built.get('gpu_name')} (sm {built.get('compute_capability')}), this is "
                f"{gpu.get('gpu_name')} (sm {gpu.get('compute_capability')})")
    have, need = _version(version), _version(built.get("version", ""))
    if not built.get("version_compatible"):
        if kind != "full":
            return f"the {kind} runtime runs only plans exported with --version-compatible"
        if have != need:
            return f"it was built with TensorRT {built.get('version')} and only runs there, this is {version}"
        return None
    if kind == "dispatch" and not built.get("lean_runtime_embedded"):
        return "the dispatch runtime needs the lean runtime embedded in the plan"
    if not need or have[:1] != need[:1] or have < need:
        return (f"a version-compatible plan from TensorRT {built.get('version')} needs a runtime of "
                f"TensorRT {need[0] if need else '?'}.x at least that new, this {kind} runtime is {version}")
    return None


def choose_runtime(built: dict, installed: dict[str, str], gpu: dict, *, name: str = "this plan") -> str:
    """The first runtime of :data:`RUNTIME_MODULES` in ``installed`` (kind -> version) that may run
    the plan, or one DcxError sentence naming every installed runtime's reason."""
    if not installed:
        raise DcxError(NO_RUNTIME)
    reasons = {}
    for kind in RUNTIME_MODULES:
        if kind in installed:
            reasons[kind] = runtime_refusal(built, kind, installed[kind], gpu)
            if reasons[kind] is None:
                return kind
    why = "; ".join(f"TensorRT {kind} {installed[kind]}: {reason}" for kind, reason in reasons.items())
    hint = "" if built.get("version_compatible") else " (add --version-compatible to run it on a newer or lean runtime)"
    raise DcxError(f"{name} cannot run here ({why}): rebuild it on this machine with dcx-export{hint}")


def open_runtime(built: dict, gpu: dict, *, name: str = "this plan"):
    """The imported module of the runtime :func:`choose_runtime` picks among those installed."""
    modules, problems = {}, []
    for kind in RUNTIME_MODULES:
        module, problem = import_runtime(kind)
        if module is not None:
            modules[kind] = module
        elif problem:
            problems.append(problem)
    if not modules and problems:
        raise DcxError(f"{NO_RUNTIME} ({'; '.join(problems)})")
    kind = choose_runtime(built, {k: m.__version__ for k, m in modules.items()}, gpu, name=name)
    return modules[kind], kind
