"""Every command answers ``--help`` at once: PyTorch (2 s, 500 MB to import) loads only for work.

A command module imports its work's modules inside the command, after checking its command
line (tests/test_layering.py lists them). Three commands still import PyTorch for their
options: dcx-train and dcx-bench list the model registry's architectures (``dcx.core.models``,
PyTorch modules), dcx-fit-ood shows the OOD fit's default rejection rate (``dcx.train.ood``).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOAD_TORCH_FOR_OPTIONS = {"dcx-train", "dcx-bench", "dcx-fit-ood"}


def console_scripts() -> dict[str, str]:
    """name -> module of each ``dcx-NAME=dcx.MODULE:main`` entry point in setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    entries = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
               and isinstance(node.value, str) and node.value.startswith("dcx-") and "=dcx." in node.value]
    return {name: target.split(":")[0] for name, target in (entry.split("=") for entry in entries)}


def test_setup_declares_the_commands_this_test_knows():
    assert LOAD_TORCH_FOR_OPTIONS < set(console_scripts()) and len(console_scripts()) >= 10


@pytest.mark.parametrize("name", sorted(console_scripts()))
def test_help_answers_without_loading_torch(name):
    module = console_scripts()[name]
    code = (f"import sys\nfrom {module} import main\ntry:\n    main(['--help'], prog_name={name!r})\n"
            "except SystemExit as exc:\n    print('exit', exc.code, 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "Usage:" in proc.stdout, proc.stderr
    torch_loaded = name in LOAD_TORCH_FOR_OPTIONS
    assert proc.stdout.splitlines()[-1] == f"exit 0 {torch_loaded}", (name, proc.stdout[-300:], proc.stderr[-500:])
