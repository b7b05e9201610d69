"""Shared fixtures: real sample data when present, a synthetic archive and a small trained model.

The synthetic archive and the model are made once per test session through the real
``dcx-synth`` and ``dcx-train`` commands, so every downstream test exercises real artefacts.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Progress lines would interleave with the command output the tests read; tests/test_progress.py
# switches them on where they are the subject.
os.environ["DCX_PROGRESS_SECONDS"] = "0"
# Caches (OpenVINO compiled models, TensorRT timing caches) go to a folder of this test session,
# not to the user's ~/.cache/dcx.
os.environ["DCX_CACHE_DIR"] = tempfile.mkdtemp(prefix="dcx-test-cache-")
# Tests import openvino directly too (importorskip): without its telemetry, as dcx does
# (dcx.engine.backends.openvino_backend.import_openvino says why).
sys.modules.setdefault("openvino_telemetry", None)


def invoke(command, args, expect_exit: int | None = 0):
    """Run a click command in-process; fail with its output when the exit code is unexpected."""
    result = CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)
    if expect_exit is not None:
        assert result.exit_code == expect_exit, result.output
    return result


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU: torch sees no CUDA device on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real samples absent: {SHARED_DATA} (they live beside the repo, never in it)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synth_archive(tmp_path_factory) -> Path:
    """120 small PNG phantoms in covid/normal/pneumonia folders plus manifest.csv."""
    from dcx.train.synth_cli import main

    out = tmp_path_factory.mktemp("synth") / "archive"
    invoke(main, [out, "--n", 120, "--size", 128, "--seed", 0])
    return out


@pytest.fixture(scope="session")
def trained_run(synth_archive, tmp_path_factory) -> Path:
    """A resnet18 trained for a few epochs at 64 px on the synthetic archive: its run folder."""
    from dcx.train.train_cli import main

    run = tmp_path_factory.mktemp("runs") / "r18"
    invoke(main, ["--data", synth_archive, "--arch", "resnet18", "--img-size", 64, "--epochs", 3,
                  "--batch-size", 16, "--weights", "none", "--seed", 0, "--out", run])
    return run


@pytest.fixture(scope="session")
def trained_checkpoint(trained_run) -> Path:
    return trained_run / "best.pt"
