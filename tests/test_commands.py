"""Every command answers ``--help`` and a mistyped model path at once: PyTorch (2 s, 500 MB to
import) loads only for work.

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


MISSING_MODEL = [("dcx-infer", ["--engine", "nope.onnx", "."]), ("dcx-export", ["nope.pt", "--precision", "fp32"]),
                 ("dcx-eval", ["nope.pt", "--data", ".", "--out", "e"]), ("dcx-fit-ood", ["nope.pt"]),
                 ("dcx-calibrate", ["nope.pt", "--data", ".", "--out", "s.json"])]


@pytest.mark.parametrize("name, args", MISSING_MODEL, ids=[name for name, _ in MISSING_MODEL])
def test_a_missing_model_file_is_a_usage_error_before_torch_loads(name, args, tmp_path):
    """The commonest mistake, a mistyped model path, answers at once (exit 2), not after 3-5 s."""
    code = (f"import sys\nfrom {console_scripts()[name]} import main\ntry:\n    main({args!r}, prog_name={name!r})\n"
            "except SystemExit as exc:\n    print('exit', exc.code, 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert "nope" in proc.stderr and "does not exist" in proc.stderr, proc.stderr
    assert proc.stdout.splitlines()[-1] == "exit 2 False", (name, proc.stdout[-300:], proc.stderr[-500:])


@pytest.mark.parametrize("name", sorted(console_scripts()))
def test_a_command_ends_without_the_last_garbage_collection(name):
    """dcx.core.errors.skip_final_collection: the objects are hidden from the collector by the time
    the exit handlers registered before the command (run after its own) see them."""
    code = (f"import atexit, gc\natexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"
            f"from {console_scripts()[name]} import main\nmain(['--help'], prog_name={name!r})\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == "frozen True", proc.stderr[-2000:]
