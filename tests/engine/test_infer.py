"""dcx-infer end to end: real decoder, real backends, real state database.

One row per input file always; broken files carry reasons; reruns reuse finished rows; a run
killed midway (SIGKILL of a real process, or Ctrl-C) resumes and publishes each file once.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from conftest import invoke
from dcx.engine.cli import main
from dcx.engine.results import partial_path, read_rows
from dcx.engine.state import StateDB

BROKEN = {
    "broken/empty.png": b"",
    "broken/text.png": b"this is not a PNG, only its name says so\n",
    "broken/garbage.dcm": bytes(range(256)) * 4,
    "broken/fake-preamble.dcm": b"\0" * 128 + b"DICM" + b"\xff" * 300,
}
#: Not images at all, and not named like one: skipped, so real folders do not end in errors.
NOT_IMAGES = {"broken/notes.txt": b"radiology notes\n"}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def giant_png() -> bytes:
    """A valid PNG header claiming 100000 x 100000 pixels (a decompression bomb's opening)."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + _png_chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def archive(synth_archive, tmp_path_factory) -> Path:
    """18 phantoms in nested folders, 7 broken files, hidden entries that must not be scored."""
    root = tmp_path_factory.mktemp("infer") / "archive"
    phantoms = sorted(synth_archive.rglob("*.png"))[::7][:18]
    for i, src in enumerate(phantoms):
        dest = root / src.parent.name / f"site{i % 2}" / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
    no_ext = root / "dicomless" / "renamed"  # a PNG with neither extension nor the right name
    no_ext.parent.mkdir(parents=True)
    shutil.copy(phantoms[0], no_ext)
    for name, data in {**BROKEN, **NOT_IMAGES}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "broken/truncated.png").write_bytes(phantoms[1].read_bytes()[:200])
    (root / "broken/giant.png").write_bytes(giant_png())
    (root / ".hidden.png").write_bytes(phantoms[2].read_bytes())
    (root / ".cache").mkdir()
    (root / ".cache/x.png").write_bytes(phantoms[2].read_bytes())
    return root


def expected_files(root: Path) -> set[str]:
    """What discovery must find, computed independently: every non-hidden regular file."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.update(os.path.join(dirpath, f) for f in filenames if not f.startswith("."))
    return found


def run_infer(engine, archive, out, *extra, expect_exit=3):
    invoke(main, ["--engine", engine, archive, "--out", out, "--batch-size", 4, *extra], expect_exit=expect_exit)
    summary = json.loads(out.with_name(out.name.rsplit(".", 1)[0] + ".summary.json").read_text())
    return list(read_rows(out)), summary


def by_path(rows):
    return {r["path"]: r for r in rows}


def test_one_row_per_file_broken_ones_with_reasons(trained_checkpoint, archive, tmp_path):
    rows, summary = run_infer(trained_checkpoint, archive, tmp_path / "r.csv")
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) and set(paths) == expected_files(archive)
    broken = {str(archive / n) for n in [*BROKEN, "broken/truncated.png", "broken/giant.png"]}
    for row in rows:
        if row["path"] in broken:
            assert row["status"] == "error" and row["reason"], row
            assert row["p_positive"] is None and row["flagged"] is None
        elif Path(row["path"]).relative_to(archive).as_posix() in NOT_IMAGES:
            assert row["status"] == "skipped" and row["reason"].startswith("not an image"), row
        else:
            assert row["status"] == "ok", row
            probs = [v for k, v in row.items() if k.startswith("p_") and k != "p_positive"]
            assert abs(sum(probs) - 1) < 1e-4 and row["flagged"] == (row["p_positive"] >= row["threshold"])
    reasons = {Path(r["path"]).name: r["reason"] for r in rows if r["status"] == "error"}
    assert "empty" in reasons["empty.png"] and "unsupported format" in reasons["text.png"]
    assert "100000x100000" in reasons["giant.png"]  # refused from its header, nothing allocated
    assert summary["counts"] == {"ok": len(rows) - len(broken) - len(NOT_IMAGES), "skipped": len(NOT_IMAGES),
                                 "error": len(broken)}
    assert summary["completed"] and summary["decoded_this_run"] == len(rows)
    assert set(summary["stage_s"]) == {"discover", "state", "read", "decode", "preprocess", "infer", "write"}
    assert summary["stage_s"]["decode"] > 0 and summary["setup_s"] > 0
    assert 0 < summary["first_scores_s"] < summary["wall_s"] and summary["images_per_s_after_first"] > 0
    assert 0 < summary["cpu_s"] <= summary["wall_s"] * os.cpu_count() + 0.5  # process CPU, this run only
    assert by_path(rows)[str(archive / "dicomless/renamed")]["format"] == "png"  # by content


def test_rerun_reuses_rows_and_rescores_only_changed_files(trained_checkpoint, archive, tmp_path):
    work = tmp_path / "arch"
    shutil.copytree(archive, work)
    first, _ = run_infer(trained_checkpoint, work, tmp_path / "r.csv")
    again, summary = run_infer(trained_checkpoint, work, tmp_path / "r.csv")
    assert again == first and summary["decoded_this_run"] == 0 and summary["reused_from_state"] == len(first)
    assert summary["first_scores_s"] is None and summary["images_per_s_after_first"] is None  # nothing scored

    changed = sorted(work.rglob("*.png"))[3]
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    shutil.copy(changed, work / "new.png")
    third, summary = run_infer(trained_checkpoint, work, tmp_path / "r.csv")
    assert summary["decoded_this_run"] == 2 and summary["reused_from_state"] == len(first) - 1
    assert len(third) == len(first) + 1 and len({r["path"] for r in third}) == len(third)
    assert by_path(third)[str(work / "new.png")]["p_positive"] == by_path(third)[str(changed)]["p_positive"]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_other_formats_hold_the_same_rows(trained_checkpoint, archive, tmp_path, fmt):
    csv_rows, _ = run_infer(trained_checkpoint, archive, tmp_path / "r.csv", "--no-state")
    rows, summary = run_infer(trained_checkpoint, archive, tmp_path / f"r.{fmt}", "--no-state")
    assert summary["format"] == fmt and rows == csv_rows


def test_sigkill_midway_then_resume_scores_only_the_rest(trained_checkpoint, archive, tmp_path):
    """A real dcx-infer process is SIGKILLed right after its third batch commit; the rerun
    reuses exactly what was committed and the published output has every file once."""
    out, state = tmp_path / "r.csv", tmp_path / "r.state.sqlite"
    killer = (
        "import os, signal, sys\n"
        "from dcx.engine import state\n"
        "real, calls = state.StateDB.record, []\n"
        "def record(self, finished):\n"
        "    n = real(self, finished)\n"
        "    calls.append(n)\n"
        "    if len(calls) == 3:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return n\n"
        "state.StateDB.record = record\n"
        "from dcx.engine.cli import main\n"
        "main()\n")
    args = ["--engine", trained_checkpoint, archive, "--out", out, "--batch-size", 4]
    proc = subprocess.run([sys.executable, "-c", killer, *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert "img/s" not in proc.stderr  # no progress bar when stderr is not a terminal
    assert not out.exists() and partial_path(out).exists()  # never published half a table
    model_rows = sqlite3.connect(state).execute("SELECT COUNT(*) FROM results").fetchone()[0]
    assert model_rows == 12  # three committed batches of 4

    rows, summary = run_infer(trained_checkpoint, archive, out)
    total = len(expected_files(archive))
    assert summary["reused_from_state"] == 12 and summary["decoded_this_run"] == total - 12
    assert len(rows) == total and {r["path"] for r in rows} == expected_files(archive)


def test_ctrl_c_keeps_finished_rows_and_exits_130(trained_checkpoint, archive, tmp_path, monkeypatch):
    out = tmp_path / "r.csv"
    real, calls = StateDB.record, []

    def interrupted(self, finished):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, finished)

    monkeypatch.setattr(StateDB, "record", interrupted)
    result = invoke(main, ["--engine", trained_checkpoint, archive, "--out", out, "--batch-size", 4],
                    expect_exit=130)
    assert "run the same command again to resume" in result.output
    assert not out.exists() and partial_path(out).exists()
    summary = json.loads((tmp_path / "r.summary.json").read_text())
    assert summary["completed"] is False
    monkeypatch.setattr(StateDB, "record", real)
    rows, summary = run_infer(trained_checkpoint, archive, out)
    assert summary["reused_from_state"] == 8 and len(rows) == len(expected_files(archive))


def test_outputs_inside_the_archive_are_never_scored(trained_checkpoint, archive, tmp_path):
    work = tmp_path / "arch"
    shutil.copytree(archive, work)
    first, _ = run_infer(trained_checkpoint, work, work / "results.csv", "--heatmaps", work / "heat")
    second, summary = run_infer(trained_checkpoint, work, work / "results.csv", "--heatmaps", work / "heat")
    assert len(second) == len(first) == len(expected_files(archive)) and summary["decoded_this_run"] == 0
    assert not any("results" in r["path"] or "/heat/" in r["path"] for r in second)


def test_heatmaps_for_flagged_images_named_without_the_file_name(trained_checkpoint, archive, tmp_path):
    heat = tmp_path / "heat"
    rows, _ = run_infer(trained_checkpoint, archive, tmp_path / "r.csv", "--heatmaps", heat, "--no-state")
    flagged = [r for r in rows if r["flagged"]]
    assert {Path(r["heatmap"]) for r in flagged} == set(heat.glob("*.png"))
    assert all(r["heatmap"] is None for r in rows if not r["flagged"])
    stems = {Path(r["path"]).stem for r in rows}
    assert not any(Path(r["heatmap"]).stem in stems for r in flagged)
    if not flagged:
        pytest.skip("the small model flagged nothing here")
    from PIL import Image

    with Image.open(flagged[0]["heatmap"]) as im:
        assert im.mode == "RGB" and im.size[0] == im.size[1] > 0


def test_files_from_list_and_globs(trained_checkpoint, archive, tmp_path):
    listing = tmp_path / "list.txt"
    chosen = sorted(expected_files(archive))[:5]
    listing.write_text("".join(p + "\n" for p in chosen) + "missing.png\n", encoding="utf-8")
    rows, _ = run_infer(trained_checkpoint, archive, tmp_path / "r.csv", "--files-from", listing, "--no-state",
                        "--exclude", "*.txt")
    assert [r["path"] for r in rows] == [p for p in chosen if not p.endswith(".txt")] + [str(archive / "missing.png")]
    assert rows[-1]["reason"] == "file not found"


def test_existing_output_is_not_overwritten_without_force(trained_checkpoint, archive, tmp_path):
    out = tmp_path / "precious.csv"
    out.write_text("keep me\n")
    result = invoke(main, ["--engine", trained_checkpoint, archive, "--out", out], expect_exit=1)
    assert "--force" in result.output and out.read_text() == "keep me\n"
    invoke(main, ["--engine", trained_checkpoint, archive, "--out", out, "--force"], expect_exit=3)
    assert out.read_text().startswith("path,")


def test_default_output_is_named_after_the_archive(trained_checkpoint, archive, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    invoke(main, ["--engine", trained_checkpoint, archive, "--format", "jsonl"], expect_exit=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "archive.dcx.jsonl", "archive.dcx.jsonl.lock", "archive.dcx.state.sqlite", "archive.dcx.summary.json"]


def test_usage_errors(trained_checkpoint, archive, tmp_path):
    assert "ARCHIVE" in invoke(main, ["--engine", trained_checkpoint], expect_exit=2).output
    assert "archive not found" in invoke(main, ["--engine", trained_checkpoint, tmp_path / "nope"], expect_exit=1).output
    (tmp_path / "model.bin").write_bytes(b"no model dcx knows")
    bad = invoke(main, ["--engine", tmp_path / "model.bin", archive, "--out", tmp_path / "r.csv"], expect_exit=1)
    assert "cannot tell the backend of model.bin" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "r.csv").exists()


def test_help_and_usage_errors_answer_without_loading_torch(tmp_path):
    """--help and a bad command line come back at once: PyTorch (2 s to import) loads only for a run."""
    code = ("import sys\n"
            "from dcx.engine.cli import main\n"
            "try:\n"
            "    main(sys.argv[1:])\n"
            "except SystemExit as exc:\n"
            "    print('exit', exc.code, 'torch' in sys.modules)\n")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not read before the command line is checked")
    cases = ((["--help"], 0), (["--engine", model], 2), (["--engine", tmp_path / "nope.onnx", tmp_path], 2),
             (["--engine", model, tmp_path / "nope"], 1), (["--engine", model, tmp_path, "--ray", "not an address"], 2))
    for args, exit_code in cases:
        proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
        assert proc.stdout.splitlines()[-1] == f"exit {exit_code} False", (args, proc.stdout, proc.stderr)


def test_onnx_engine_matches_the_checkpoint(trained_checkpoint, archive, tmp_path):
    from dcx.export.cli import main as export

    onnx = tmp_path / "model.onnx"
    invoke(export, [trained_checkpoint, "--precision", "fp32", "--out", onnx])
    pt_rows, _ = run_infer(trained_checkpoint, archive, tmp_path / "pt.csv", "--no-state")
    onnx_rows, summary = run_infer(onnx, archive, tmp_path / "onnx.csv", "--no-state")
    assert summary["backend"] == "onnxruntime"
    assert [r["status"] for r in onnx_rows] == [r["status"] for r in pt_rows]
    deltas = [abs(a["p_positive"] - b["p_positive"]) for a, b in zip(pt_rows, onnx_rows) if a["status"] == "ok"]
    assert deltas and max(deltas) <= 1e-4


@pytest.mark.parametrize("folder", ["cxr-dev", "dicom"])
def test_shared_data_one_row_per_file_all_scored(trained_checkpoint, shared_data, tmp_path, folder):
    root = shared_data / folder
    # The fixture model learnt synthetic phantoms: real films are mostly out of distribution for it
    # (exit 4), which is the OOD score doing its job; every file is still scored.
    result = invoke(main, ["--engine", trained_checkpoint, root, "--out", tmp_path / "r.csv", "--no-state",
                           "--exclude", "manifest.csv", "--exclude", "*.md"], expect_exit=None)
    assert result.exit_code in (0, 4), result.output
    rows = list(read_rows(tmp_path / "r.csv"))
    assert all(r["ood_score"] is not None and r["in_distribution"] is not None for r in rows)
    assert all(r["flagged"] is None for r in rows if r["in_distribution"] is False)
    expected = {p for p in expected_files(root) if not p.endswith(("manifest.csv", ".md"))}
    assert len(rows) == len(expected) and {r["path"] for r in rows} == expected
    assert [r for r in rows if r["status"] != "ok"] == []
    if folder == "dicom":  # every file here carries its UIDs; patient columns only on request
        assert all(r["study_uid"] and r["series_uid"] and r["sop_uid"] for r in rows)
        assert "patient_name" not in rows[0] and "patient_id" not in rows[0]


def test_dicom_series_rules_and_phi_columns(trained_checkpoint, shared_data, tmp_path):
    root = shared_data / "dicom"
    result = invoke(main, ["--engine", trained_checkpoint, root, "--out", tmp_path / "r.csv", "--no-state",
                           "--include", "udacity__*", "--series-rules", "--include-phi"], expect_exit=None)
    assert result.exit_code in (0, 4), result.output  # 4: real films are unlike the fixture's phantoms
    rows = {Path(r["path"]).name: r for r in read_rows(tmp_path / "r.csv")}
    assert len(rows) == 6 and "patient_id" in rows["udacity__test1.dcm"]
    for name in ("udacity__test4.dcm", "udacity__test5.dcm"):  # BodyPart RIBCAGE, Modality CT
        assert rows[name]["status"] == "skipped" and rows[name]["reason"], rows[name]
    assert rows["udacity__test1.dcm"]["status"] == "ok"


def test_progress_line_shows_rate_and_eta(archive, monkeypatch):
    import io
    import time

    from dcx.engine import run, scoring

    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setenv("DCX_PROGRESS_SECONDS", "3600")
    stats = scoring.Stats()
    progress = run._Progress(scoring.ScreenOptions(engine=Path("m.pt"), out=Path("r.csv"), root=archive), stats)
    deadline = time.monotonic() + 30
    while progress.line.total is None and time.monotonic() < deadline:  # the counting pass runs in a thread
        time.sleep(0.01)
    stats.files, stats.inferred = 5, 4
    progress.close()
    line = stderr.getvalue()
    assert f"5/{len(expected_files(archive))} files" in line and "img/s" in line and "ETA 0:" in line


def test_images_unlike_the_training_data_are_counted_apart(trained_run, tmp_path):
    """Phantoms from the held-out split stay in distribution; noise and inverted phantoms do
    not: they are never flagged, the summary counts them, and dcx-infer exits 4."""
    import numpy as np
    from PIL import Image

    from dcx.train.data import read_samples

    work = tmp_path / "mixed"
    work.mkdir()
    films = [s.path for s in read_samples(trained_run / "splits" / "test.csv")][:6]
    for i, film in enumerate(films):
        shutil.copy(film, work / f"film{i}{Path(film).suffix}")
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (128, 128), dtype=np.uint8)).save(work / f"noise{i}.png")
    for i, film in enumerate(films[:2]):
        pixels = np.asarray(Image.open(film).convert("L"))
        Image.fromarray(255 - pixels).save(work / f"inverted{i}.png")
    rows, summary = run_infer(trained_run / "best.pt", work, tmp_path / "r.csv", "--no-state", expect_exit=0)
    run_infer(trained_run / "best.pt", work, tmp_path / "r2.csv", "--no-state", "--ood-exit", expect_exit=4)
    rows = {Path(r["path"]).name.split(".")[0]: r for r in rows}
    unusual = [r for name, r in rows.items() if name.startswith(("noise", "inverted"))]
    assert all(r["in_distribution"] is False and r["flagged"] is None and r["p_positive"] is not None
               for r in unusual)
    assert sum(r["in_distribution"] for name, r in rows.items() if name.startswith("film")) >= 5
    assert summary["out_of_distribution"] == sum(r["in_distribution"] is False for r in rows.values())
    assert summary["flagged"] == sum(bool(r["flagged"]) for r in rows.values())
    assert summary["ood_threshold"] > 0
