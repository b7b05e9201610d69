"""dcx-bench gpu-check on this machine: the CPU half of the DALI bit-depth rule is measured for
real, the GPU checks are skipped with their reason (or run, where a GPU is), the report is written."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from dcx.benchmarks.cli import main

pytest.importorskip("nvidia.dali", reason="DALI is not installed")


def test_gpu_check_measures_what_it_can_and_skips_the_rest(tmp_path):
    args = ["gpu-check", "--out", str(tmp_path), "--only", "environment", "--only", "dali_bit_depth",
            "--only", "torch_cuda_parity", "--only", "tensorrt"]
    result = CliRunner().invoke(main, args)
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert list(checks) == ["environment", "torch_cuda_parity", "dali_bit_depth", "tensorrt"]
    assert result.exit_code == 0, result.output
    bit_depth = checks["dali_bit_depth"]
    assert bit_depth["status"] == "pass"
    cpu = bit_depth["details"]["cpu"]
    assert cpu["jpeg2000-12.dcm"]["measured_gain"] == pytest.approx(1.0, abs=1e-3)  # raw on the CPU
    assert cpu["gray8.png"]["measured_gain"] == pytest.approx(257.0, rel=1e-3)
    assert not cpu["jpeg-lossless-sv1-12.dcm"]["decoded"]  # the CPU backend fails lossless JPEG
    if not torch.cuda.is_available():
        assert checks["torch_cuda_parity"] == {**checks["torch_cuda_parity"], "status": "skipped",
                                               "reason": "torch sees no CUDA device"}
        assert bit_depth["details"]["gpu"].startswith("skipped")
    assert "| dali_bit_depth | pass |" in (tmp_path / "gpu-check.md").read_text()


def test_unknown_check_names_are_refused(tmp_path):
    result = CliRunner().invoke(main, ["gpu-check", "--out", str(tmp_path), "--only", "warp_drive"])
    assert result.exit_code == 1 and result.output.startswith("Error: unknown check warp_drive")
