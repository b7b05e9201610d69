"""The import rule of dcx, checked on the source of every module with ``ast``.

``core`` imports nothing else of dcx; ``train`` and ``engine`` import only ``core``; ``export``
may import ``core``, ``train`` and ``engine``; ``benchmarks`` anything. Imports of dcx sit at
the top of a module, never inside a function where they could hide a cycle; two exceptions: the
lazy backends, each loaded only when its kind of model file is opened (so TensorRT is never
loaded on a machine serving ONNX), and the commands that load their work's modules after checking
their command line (so ``--help`` and usage errors answer without importing PyTorch, 2 s); no
module imports such a command, so no cycle can hide there.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "core": {"core"},
    "train": {"core", "train"},
    "engine": {"core", "engine"},
    "export": {"core", "train", "engine", "export"},
    "report": {"core", "train", "engine", "report"},
    "benchmarks": {"core", "train", "engine", "export", "benchmarks"},
}
LAZY_BACKENDS = {f"engine.backends.{name}_backend" for name in ("tensorrt", "onnxruntime", "openvino", "torch")}
LAZY_IN_COMMAND = {
    "engine/cli.py": {"engine.run", "engine.scoring", "engine.ray_runner", "engine.backends"},
    "export/cli.py": {"export.pipeline"},
    "train/train_cli.py": {"core.checkpoint", "train.folds", "train.trainer"},
    "train/eval_cli.py": {"core.checkpoint", "train.evaluate", "train.plots"},
    "train/ood_cli.py": {"core.checkpoint", "train.ood"},
    "train/calibrate_cli.py": {"core.checkpoint", "train.evaluate"},
    "benchmarks/cli.py": {f"benchmarks.{name}" for name in ("throughput", "model_bench", "arch_cost", "parity",
                                                            "peer_baseline", "gpu_check", "ood_eval")},
}
MODULES = sorted(p for layer in ALLOWED for p in (ROOT / layer).rglob("*.py"))


def dcx_imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported module as 'layer.module', inside a function?, line) for every dcx import of ``path``."""
    package = path.relative_to(ROOT).with_suffix("").parts
    package = package[:-1]  # the package a relative import starts from
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets = []
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = list(package[: len(package) - child.level + 1])
                    module = ".".join(base + ([child.module] if child.module else []))
                    targets = [module] if child.module else [f"{module}.{a.name}" for a in child.names]
                elif child.module and child.module.split(".")[0] == "dcx":
                    targets = [child.module.removeprefix("dcx.")]
                    if child.module == "dcx":
                        targets = [a.name for a in child.names]
            elif isinstance(child, ast.Import):
                targets = [a.name.removeprefix("dcx.") for a in child.names if a.name.split(".")[0] == "dcx"]
            found.extend((t, in_function, child.lineno) for t in targets)
            visit(child, nested)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def test_every_layer_has_modules():
    assert {p.relative_to(ROOT).parts[0] for p in MODULES} == set(ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_and_sit_at_module_level(path):
    layer = path.relative_to(ROOT).parts[0]
    lazy = LAZY_BACKENDS | LAZY_IN_COMMAND.get(path.relative_to(ROOT).as_posix(), set())
    problems = []
    for target, in_function, line in dcx_imports(path):
        if target.split(".")[0] not in ALLOWED[layer]:
            problems.append(f"line {line}: {layer} imports dcx.{target}")
        if in_function and target not in lazy:
            problems.append(f"line {line}: dcx.{target} imported inside a function")
    assert not problems, "\n".join(problems)


def test_no_module_imports_a_command_that_loads_lazily():
    commands = {Path(name).with_suffix("").as_posix().replace("/", ".") for name in LAZY_IN_COMMAND}
    importers = [f"{path.relative_to(ROOT)} imports dcx.{target}" for path in MODULES
                 for target, _, _ in dcx_imports(path) if target in commands]
    assert not importers


def test_the_checker_sees_relative_and_absolute_imports(tmp_path):
    """The rule is only as good as the parser: it must resolve both spellings."""
    module = ROOT / "engine" / "backends" / "__init__.py"
    targets = {t for t, _, _ in dcx_imports(module)}
    assert "engine.backends.base" in targets and "core.errors" in targets
    assert {t for t, lazy, _ in dcx_imports(module) if lazy} == LAZY_BACKENDS
