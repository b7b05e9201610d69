"""dcx-bench smoke tests: the commands run on tiny data and write what they promise.

No timing is asserted anywhere (a shared CI machine makes any figure noise); what is
asserted is structure, that the real dcx-infer ran, and that parity passes for a faithful
export and fails for a different model.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import invoke
from dcx.benchmarks.cli import main
from dcx.benchmarks.decode_bench import cpu_ceiling
from dcx.benchmarks.engine_runs import resolve_reference, run_infer
from dcx.benchmarks.measure import python_child, run_child, summarise
from dcx.core.errors import DcxError


@pytest.fixture(scope="module")
def fp32_onnx(trained_checkpoint, tmp_path_factory):
    """The conftest model exported by the real dcx-export (its sidecar names the checkpoint)."""
    from dcx.export.cli import main as export

    out = tmp_path_factory.mktemp("bench-export") / "r18-fp32.onnx"
    invoke(export, [trained_checkpoint, "--precision", "fp32", "--out", out])
    return out


@pytest.fixture(scope="module")
def other_model(trained_checkpoint, tmp_path_factory):
    """Same architecture, classes and input size, other (untrained) weights: not the reference."""
    from dcx.export.onnx_export import export_onnx
    from dcx.core.checkpoint import load_checkpoint
    from dcx.core.models import create_model

    card, _, _ = load_checkpoint(trained_checkpoint)
    torch.manual_seed(123)
    model = create_model(card.arch, len(card.classes))
    return export_onnx(model, card, tmp_path_factory.mktemp("bench-other") / "other.onnx")


def test_summarise_median_and_spread():
    s = summarise([3.0, 1.0, 2.0, 10.0])
    assert (s["n"], s["median"], s["min"], s["max"]) == (4, 2.5, 1.0, 10.0)
    assert s["q1"] <= s["median"] <= s["q3"]
    assert summarise([5.0])["median"] == 5.0


def test_run_child_reports_that_child_peak_memory():
    child = run_child(python_child("b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"))
    assert child.returncode == 0
    assert child.peak_rss_bytes > 300 * 2**20
    small = run_child(python_child("import sys; sys.exit(3)"))
    assert small.returncode == 3
    assert small.peak_rss_bytes < 100 * 2**20  # its own, not this (torch-holding) process's


def test_reference_resolved_from_sidecar_and_mismatch_refused(fp32_onnx, trained_checkpoint, tmp_path):
    path, how = resolve_reference(fp32_onnx, None)
    assert path.resolve() == trained_checkpoint.resolve() and "sidecar" in how
    impostor = tmp_path / "other.pt"
    impostor.write_bytes(trained_checkpoint.read_bytes() + b"\0")
    with pytest.raises(DcxError, match="not the checkpoint"):
        resolve_reference(fp32_onnx, impostor)


def test_throughput_smoke(fp32_onnx, synth_archive, tmp_path):
    out, md = tmp_path / "t.json", tmp_path / "t.md"
    result = invoke(main, ["throughput", "--engine", fp32_onnx, "--data", synth_archive, "--repeat", 2,
                           "--no-warmup", "--limit", 12, "--batch-size", 8, "--peer-workers", 0,
                           "--out", out, "--markdown", md])
    report = json.loads(out.read_text())
    assert report["data"]["counts"]["ok"] == 12
    assert report["engine"]["backend"] == "onnxruntime" and report["engine"]["batch_size"] == 8
    assert set(report["dcx"]["stage_s"]) >= {"discover", "decode", "infer", "write"}
    assert report["dcx"]["images_per_s"]["n"] == 2 and report["dcx"]["images_per_s"]["median"] > 0
    assert report["dcx"]["peak_rss_bytes"] > 0 and report["peer"]["peak_rss_bytes"] > 0
    assert report["peer"]["batch_size"] == 20 and report["peer"]["images_per_s"]["median"] > 0
    assert "sidecar" in report["reference"]["resolved_from"]
    assert report["ratios"]["dcx_over_peer"] > 0 and report["ratios"]["dcx_over_model_only"] > 0
    assert report["ratios"]["process_wall_peer_over_dcx"] == pytest.approx(
        report["peer"]["process_wall_s"]["median"] / report["dcx"]["process_wall_s"]["median"])
    # same weights on both sides: the peer's resizer differs slightly, its decisions barely
    assert report["peer_agreement"]["files"] == 12
    assert report["peer_agreement"]["max_abs_delta_p"] < 0.1
    assert "dcx / peer" in md.read_text() and "dcx / peer" in result.output and "whole processes" in md.read_text()
    # the CPU budget: every part measured on the same files, and the ceiling they imply
    decoding, cpu = report["decoding"], report["cpu"]
    assert decoding["engine_decoder"]["images"] == 12 and 0 < decoding["codec_only"]["images"] <= 12
    assert min(cpu[k] for k in ("dcx_ms_per_image", "model_ms_per_image", "decoder_ms_per_image",
                                "codec_ms_per_image")) > 0
    assert cpu["ceiling_images_per_s"] == cpu_ceiling(cpu["cores"], cpu["decoder_ms_per_image"],
                                                      cpu["model_ms_per_image"])
    # each repetition's run against the model-only and decoder passes measured right after it
    model_passes, decoder_passes = report["model_only"]["passes"], decoding["engine_decoder"]["passes"]
    assert len(model_passes) == len(decoder_passes) == 2
    ceilings = [cpu_ceiling(cpu["cores"], d["cpu_ms_per_image"], m["cpu_ms_per_image"])
                for d, m in zip(decoder_passes, model_passes)]
    assert cpu["ceiling_per_repetition"] == ceilings
    rates = report["dcx"]["images_per_s"]["values"]
    assert cpu["dcx_over_ceiling"]["values"] == [r / c for r, c in zip(rates, ceilings)]
    assert report["model_only"]["cpu_ms_per_image"] == cpu["model_ms_per_image"] > 0
    assert "CPU budget" in result.output and "DALI's codec alone" in result.output
    # 12 files at batch 8: a first chunk of 8, then 4 more at the run's pace after it
    first, after = report["dcx"]["first_scores_s"]["median"], report["dcx"]["images_per_s_after_first"]["median"]
    assert 0 < first < report["dcx"]["wall_s"]["median"] and after > 0
    assert cpu["after_first_over_ceiling"]["values"] == [
        a / c for a, c in zip(report["dcx"]["images_per_s_after_first"]["values"], ceilings)]
    assert "each run against its own repetition's ceiling" in result.output
    assert "first scores came after" in result.output
    # the first 12 files are all of one class: no parity gate, and the report says why
    assert "needs images of the positive class" in report["parity"]["skipped"]
    assert "parity gate: not run" in result.output
    invoke(main, ["throughput", "--engine", fp32_onnx, "--data", synth_archive, "--out", out], expect_exit=1)


def test_throughput_gates_the_same_run_against_the_reference(fp32_onnx, synth_archive, tmp_path):
    labelled = tmp_path / "labelled"
    for folder in sorted(p for p in synth_archive.iterdir() if p.is_dir()):
        (labelled / folder.name).mkdir(parents=True)
        for image in sorted(folder.glob("*.png"))[:4]:
            (labelled / folder.name / image.name).symlink_to(image)
    out = tmp_path / "t.json"
    result = invoke(main, ["throughput", "--engine", fp32_onnx, "--data", labelled, "--repeat", 1, "--no-warmup",
                           "--no-peer", "--out", out])
    parity = json.loads(out.read_text())["parity"]
    assert parity["data"]["files"] == 12 and parity["data"]["positives"] == 4
    assert parity["passed"] and parity["agreement"]["max_abs_delta_p"] < 1e-3  # FP32: same decisions
    assert {g["name"] for g in parity["gates"]} >= {"flag agreement"}
    assert "parity gate" in result.output and "PASSED" in result.output


def test_throughput_parity_says_why_without_labels(fp32_onnx, synth_archive, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for image in sorted(synth_archive.glob("*/*.png"))[:4]:
        (flat / f"{image.parent.name}-{image.name}").symlink_to(image)
    out = tmp_path / "t.json"
    result = invoke(main, ["throughput", "--engine", fp32_onnx, "--data", flat, "--repeat", 1, "--no-warmup",
                           "--no-peer", "--out", out])
    assert "no labels" in json.loads(out.read_text())["parity"]["skipped"]
    assert "parity gate: not run" in result.output


def test_cpu_ceiling_is_cores_over_cost_per_image():
    assert cpu_ceiling(2, 15.0, 25.0) == 50.0  # 2 cores, 40 ms of CPU per image
    assert cpu_ceiling(1, 10.0) == 100.0


def test_each_dcx_infer_run_starts_fresh(fp32_onnx, synth_archive, tmp_path):
    """A state database left in the run folder must not let a repetition reuse rows (0 img/s)."""
    listing = tmp_path / "two.txt"
    listing.write_text("".join(f"{p}\n" for p in sorted((synth_archive / "normal").iterdir())[:2]))
    for _ in range(2):
        run = run_infer(fp32_onnx, tmp_path / "run", files_from=listing)
        assert run.summary["scored_this_run"] == 2 and run.summary["reused_from_state"] == 0


def test_model_smoke(fp32_onnx, trained_checkpoint, tmp_path):
    out = tmp_path / "m.json"
    invoke(main, ["model", "--engine", fp32_onnx, "--engine", trained_checkpoint, "--batch-sizes", "1,4",
                  "--warmup", 0, "--repeat", 1, "--out", out])
    models = json.loads(out.read_text())["models"]
    assert [(m["backend"], [r["batch_size"] for r in m["results"]]) for m in models] == \
        [("onnxruntime", [1, 4]), ("pytorch", [1, 4])]
    assert all(r["images_per_s"] > 0 for m in models for r in m["results"])


def test_model_bench_times_the_artefacts_in_turn(fp32_onnx, trained_checkpoint):
    """Call by call, so a machine whose speed drifts slows every artefact alike."""
    from dcx.benchmarks.model_bench import bench_backends
    from dcx.engine.backends import open_backend

    calls = []
    with open_backend(fp32_onnx) as onnx_backend, open_backend(trained_checkpoint) as torch_backend:
        for name, backend in (("onnx", onnx_backend), ("torch", torch_backend)):
            real = backend.infer
            backend.infer = lambda images, real=real, name=name: calls.append(name) or real(images)
        rows = bench_backends([onnx_backend, torch_backend], [2], warmup=1, repeat=3)
    assert calls == ["onnx", "torch"] + ["onnx", "torch"] * 3
    assert [len(r) for r in rows] == [1, 1] and all(r[0]["cpu_ms_per_image"] > 0 for r in rows)


def test_parity_passes_for_the_fp32_export(fp32_onnx, trained_checkpoint, synth_archive, tmp_path):
    out = tmp_path / "parity"
    result = invoke(main, ["parity", "--reference", trained_checkpoint, "--engine", fp32_onnx,
                           "--data", synth_archive, "--out", out])
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] and "PASSED" in result.output
    assert report["data"]["scored_by_both"] == report["data"]["files"] == 120
    assert report["decomposition"]["backend_only"]["max_abs_delta_p"] < 1e-4  # same decoder: FP32 numerics only
    for key in ("sensitivity", "specificity", "auc", "accuracy"):
        assert key in report["reference"] and key in report["engine"] and key in report["deltas"]
    assert (out / "roc.png").stat().st_size > 0
    assert len((out / "per_image.csv").read_text().splitlines()) == 121


def test_parity_fails_for_a_different_model(other_model, trained_checkpoint, synth_archive, tmp_path):
    out = tmp_path / "parity"
    invoke(main, ["parity", "--reference", trained_checkpoint, "--engine", other_model, "--data", synth_archive,
                  "--no-decompose", "--out", out], expect_exit=1)
    report = json.loads((out / "parity.json").read_text())
    assert not report["passed"]
    assert any(not g["passed"] for g in report["gates"])


def test_archive_replicates_files_as_links(synth_archive, tmp_path):
    out = tmp_path / "big"
    invoke(main, ["archive", synth_archive, out, "--n", 25])
    made = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(made) == 25
    assert all(os.stat(p).st_nlink >= 2 for p in made)  # hard links: no disk spent


def test_archs_reports_cost_and_speed_of_each_exported_graph(tmp_path):
    from dcx.core.models import model_cost

    result = invoke(main, ["archs", "--archs", "squeezenet1_1,mobilenet_v2", "--size", 64, "--batch-size", 4,
                           "--repeat", 1, "--out", tmp_path / "a.json"])
    report = json.loads((tmp_path / "a.json").read_text())
    assert [r["arch"] for r in report["architectures"]] == ["squeezenet1_1", "mobilenet_v2"]
    for record in report["architectures"]:
        assert record["params"] == model_cost(record["arch"], 64)["params"]
        assert record["images_per_s"] > 0 and record["cpu_ms_per_image"] > 0
    assert "| mobilenet_v2 |" in result.output
    refused = invoke(main, ["archs", "--archs", "vgg16"], expect_exit=1)
    assert refused.output.startswith("Error: unknown architecture vgg16")


def test_cpu_screening_script_parses_and_refuses_a_missing_data_folder(tmp_path):
    """benchmarks/cpu_screening.sh makes the README's CPU tables; it must at least parse and stop
    with the reason, before training anything, when its data is not there."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "cpu_screening.sh"
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    run = subprocess.run(["bash", script, tmp_path / "out"], capture_output=True, text=True,
                         env={**os.environ, "DATA": str(tmp_path / "missing")})
    assert run.returncode == 1 and f"no data at {tmp_path / 'missing'}" in run.stdout
    assert not (tmp_path / "out").exists()
