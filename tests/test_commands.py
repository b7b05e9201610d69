"""Every command answers ``--help`` at once: PyTorch (2 s, 500 MB to import) loads only for work.

A command module imports its work's modules inside the command, after checking its command
line (tests/test_layering.py lists them); the options' choices and defaults come from modules
that need no PyTorch (``dcx.core.registry``, ``dcx.train.config``, ...).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def console_scripts() -> dict[str, str]:
    """name -> module of each ``dcx-NAME=dcx.MODULE:main`` entry point in setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    entries = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
               and isinstance(node.value, str) and node.value.startswith("dcx-") and "=dcx." in node.value]
    return {name: target.split(":")[0] for name, target in (entry.split("=") for entry in entries)}


def test_setup_declares_the_commands():
    assert {"dcx-infer", "dcx-export", "dcx-train", "dcx-report", "dcx-bench"} < set(console_scripts())


HELP = [(name, ["--help"]) for name in sorted(console_scripts())] + [("dcx-bench", ["throughput", "--help"])]


@pytest.mark.parametrize("name, args", HELP, ids=[" ".join([name, *args]) for name, args in HELP])
def test_help_answers_without_loading_torch(name, args):
    module = console_scripts()[name]
    code = (f"import sys\nfrom {module} import main\ntry:\n    main({args!r}, prog_name={name!r})\n"
            "except SystemExit as exc:\n    print('exit', exc.code, 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "Usage:" in proc.stdout, proc.stderr
    assert proc.stdout.splitlines()[-1] == "exit 0 False", (name, proc.stdout[-300:], proc.stderr[-500:])
