"""dcx-export --target openvino: the artefact records its runtime, is verified through OpenVINO,
and the engine serves it with OpenVINO, never with another runtime."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from conftest import invoke
from dcx.core.artefact import RUNTIME_KEY, read_runtime, sidecar_path
from dcx.core.errors import DcxError
from dcx.core.files import cache_dir
from dcx.engine.backends import open_backend
from dcx.engine.cli import main as infer_main
from dcx.engine.results import partial_path
from dcx.export.cli import main
from dcx.export.samples import Batches, evaluation_samples

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'dcx[openvino]')")


@pytest.fixture(scope="module")
def openvino_int8(trained_checkpoint, synth_archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("ov") / "m.onnx"
    result = invoke(main, [trained_checkpoint, "--precision", "int8", "--target", "openvino", "--calib", synth_archive,
                           "--calib-samples", 32, "--out", out])
    return out, result


def test_int8_for_openvino_is_verified_and_served_by_openvino(openvino_int8, trained_checkpoint):
    out, result = openvino_int8
    sidecar = json.loads(sidecar_path(out).read_text())
    assert sidecar["artefact"]["runtime"] == "openvino" == read_runtime(out)
    assert {p.key: p.value for p in onnx.load(str(out)).metadata_props}[RUNTIME_KEY] == "openvino"
    assert set(sidecar["verification"]) == {"openvino"} and sidecar["verification"]["openvino"]["passed"]
    assert "OpenVINO vs PyTorch" in result.output and "int8 for openvino" in result.output
    calibration = sidecar["calibration"]
    assert calibration["target"] == "openvino" and calibration["float_layers"] == ["first_conv", "head"]

    with open_backend(out, device="auto") as backend, open_backend(trained_checkpoint, device="cpu") as reference:
        assert backend.name == "openvino" and backend.precision == "int8" and backend.device.type == "cpu"
        samples, _ = evaluation_samples(backend.card, None)
        images, _ = next(iter(Batches(samples[:16], backend.card, 16)))
        probs, cam, ood = backend.infer(images)
        ref_probs, ref_cam, ref_ood = reference.infer(images)
    assert probs.shape == ref_probs.shape and probs.dtype == np.float32 and cam.shape == ref_cam.shape
    assert np.abs(probs - ref_probs).max() < 0.05  # INT8 close to FP32, not a different model
    assert np.allclose(probs.sum(1), 1, atol=1e-4) and (ood is None) == (ref_ood is None)
    # compiled once, then loaded from $DCX_CACHE_DIR/openvino (conftest points it at a test folder)
    assert list((cache_dir() / "openvino").glob("*.blob"))


def test_loading_keeps_the_compiled_model_cache_to_its_budget(openvino_int8, monkeypatch):
    """A stale blob that takes the cache over its budget goes when a model loads; the blobs in
    budget, and the one just compiled, stay."""
    import dcx.engine.backends.openvino_backend as openvino_backend

    out, _ = openvino_int8
    folder = cache_dir() / "openvino"
    folder.mkdir(parents=True, exist_ok=True)
    kept = {path: path.stat().st_size for path in folder.glob("*.blob")}
    stale = folder / "stale.blob"
    with open(stale, "wb") as f:
        f.truncate(200 << 20)  # sparse: a large size on no disk
    os.utime(stale, (1e9, 1e9))  # written and last read in 2001
    monkeypatch.setattr(openvino_backend, "CACHE_BYTES", sum(kept.values()) + (100 << 20))
    with open_backend(out, batch_size=3):  # a batch no other test compiles: a new blob
        pass
    blobs = set(folder.glob("*.blob"))
    assert not stale.exists() and set(kept) < blobs


def test_serving_openvino_sends_no_telemetry(openvino_int8, tmp_path):
    """A fresh process that opens an OpenVINO artefact and scores with it leaves
    openvino-telemetry unimported and forks no process to send a usage event."""
    out, _ = openvino_int8
    script = (
        "import multiprocessing, sys, torch\n"
        "from dcx.engine.backends import open_backend\n"
        f"with open_backend({str(out)!r}, batch_size=2) as backend:\n"
        "    backend.infer(torch.rand(2, 1, backend.card.input_size, backend.card.input_size))\n"
        "print('openvino' in sys.modules, sys.modules.get('openvino_telemetry', 'absent'),\n"
        "      len(multiprocessing.active_children()))\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["True", "None", "0"]


def test_fp32_for_openvino_matches_pytorch(trained_checkpoint, tmp_path):
    out = tmp_path / "fp32.onnx"
    invoke(main, [trained_checkpoint, "--precision", "fp32", "--target", "openvino", "--out", out])
    assert read_runtime(out) == "openvino"
    with open_backend(out) as backend, open_backend(trained_checkpoint, device="cpu") as reference:
        images = torch.rand(5, 1, backend.card.input_size, backend.card.input_size)
        assert np.abs(backend.infer(images)[0] - reference.infer(images)[0]).max() < 1e-4


def test_a_batch_size_compiles_a_static_batch_and_pads_smaller_ones(openvino_int8):
    """The engine's batch is compiled in (OpenVINO's INT8 kernels run faster with a static shape);
    fewer images are padded and more are split, and every row comes out as without it."""
    out, _ = openvino_int8
    with open_backend(out) as dynamic, open_backend(out, batch_size=4) as static:
        assert dynamic.max_batch is None and static.max_batch == 4
        assert [d.get_length() for d in static.compiled.input("image").get_partial_shape()][0] == 4
        px = static.card.input_size
        images = torch.rand(7, 1, px, px, generator=torch.Generator().manual_seed(1))
        for n in (1, 3, 4, 7):  # padded, padded, exact, split into 4 + 3 (padded)
            want, got = dynamic.infer(images[:n]), static.infer(images[:n])
            assert all(len(g) == n for g in got if g is not None)
            for w, g in zip(want, got):
                if w is not None:
                    np.testing.assert_allclose(g, w, atol=1e-5)


def test_dcx_infer_serves_it_with_openvino(openvino_int8, synth_archive, tmp_path):
    out, _ = openvino_int8
    files = tmp_path / "files.txt"
    files.write_text("".join(f"{p}\n" for p in sorted(synth_archive.glob("*/*.png"))[:6]))
    invoke(infer_main, ["--engine", out, "--files-from", files, "--out", tmp_path / "run.csv"])
    summary = json.loads((tmp_path / "run.summary.json").read_text())
    assert summary["backend"] == "openvino" and summary["precision"] == "int8" and summary["counts"]["ok"] == 6


def test_openvino_artefact_refuses_the_gpu_a_plan_and_a_missing_runtime(openvino_int8, tmp_path, monkeypatch):
    out, _ = openvino_int8
    with pytest.raises(DcxError, match="runs on the CPU"):
        open_backend(out, device="gpu")
    result = invoke(main, [out, "--out", tmp_path / "m.plan"], expect_exit=1)
    assert "INT8 graph made for openvino" in result.output
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    with pytest.raises(DcxError, match=r"not installed: pip install 'dcx\[openvino\]'"):
        open_backend(out, device="cpu")


def test_a_model_that_fails_to_load_while_decoding_starts_leaves_no_output(openvino_int8, synth_archive, tmp_path,
                                                                           monkeypatch):
    """On a CPU, decoding starts before the model loads; a model that then fails to load (here:
    OpenVINO missing) is one Error line, with no result table and no partial table left behind."""
    out, _ = openvino_int8
    monkeypatch.setitem(sys.modules, "openvino", None)
    result = invoke(infer_main, ["--engine", out, synth_archive, "--device", "cpu", "--out", tmp_path / "r.csv"],
                    expect_exit=1)
    assert result.output.startswith("Error:") and "not installed" in result.output
    assert not (tmp_path / "r.csv").exists() and not partial_path(tmp_path / "r.csv").exists()


def test_unknown_runtime_is_refused(openvino_int8, tmp_path):
    out, _ = openvino_int8
    copy = tmp_path / "m.onnx"
    copy.write_bytes(out.read_bytes())
    payload = json.loads(sidecar_path(out).read_text())
    payload["artefact"]["runtime"] = "tvm"
    sidecar_path(copy).write_text(json.dumps(payload))
    with pytest.raises(DcxError, match="runtime 'tvm'"):
        open_backend(copy)
