"""dcx-report, drift across nights and dcx-calibrate: real runs, real files, a real browser.

Reports are built from real dcx-infer runs (the session's trained model and synthetic
archive, and the real samples when present) and opened in headless Chromium, which must
load them without a console message, decode every picture and finish the page script.
Screenshots are kept: the path is printed (pytest -s) and ``DCX_TEST_ARTEFACTS`` names a
folder to copy them to (default: ``dcx-artefacts`` beside pytest's temporary folders).
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import invoke
from dcx.engine.cli import main as infer
from dcx.engine.results import RowSchema, open_writer, read_rows
from dcx.export.cli import main as export
from dcx.report.cli import main as report
from dcx.core import drift
from dcx.train.calibrate_cli import main as calibrate
from dcx.core.checkpoint import load_checkpoint
from dcx.train.synth_cli import main as synth

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium absent: apt-get install -y chromium")
HOSTILE_NAME = "<img src=x onerror=alert(1)>.png"
HOSTILE_ACCESSION = "<b>HOSTILE</b>"


# --------------------------------------------------------------------------- helpers

def open_in_chromium(page: Path, workdir: Path, artefacts: Path) -> tuple[str, Path]:
    """(DOM after the page script ran, screenshot path); fails on any console message."""
    base = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={workdir / 'profile'}", "--enable-logging=stderr", "--v=0",
            "--virtual-time-budget=10000", "--window-size=1280,2200"]
    dom = subprocess.run([CHROMIUM, *base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180)
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert dom.returncode == 0 and not console, f"console: {console}\n{dom.stderr[-2000:]}"
    shot = workdir / f"{page.stem}.png"
    subprocess.run([CHROMIUM, *base, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=180)
    assert shot.is_file() and shot.stat().st_size > 10_000, "no screenshot"
    artefacts.mkdir(parents=True, exist_ok=True)
    kept = artefacts / shot.name
    shutil.copy(shot, kept)
    print(f"\nscreenshot of {page.name}: {kept}")
    return dom.stdout, kept


def page_marks(dom: str) -> dict:
    html_tag = re.search(r"<html[^>]*>", dom).group(0)
    return dict(re.findall(r'data-([a-z-]+)="([^"]*)"', html_tag))


def assert_self_contained(text: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", text, re.I)
    assert "<link" not in text.lower() and "@import" not in text
    assert "default-src 'none'" in text  # the page's own policy forbids fetching anything


def summary_of(out: Path) -> dict:
    return json.loads(out.with_name(out.stem + ".summary.json").read_text())


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> Path:
    default = tmp_path_factory.getbasetemp().parent / "dcx-artefacts"
    return Path(os.environ.get("DCX_TEST_ARTEFACTS", default))


@pytest.fixture(scope="module")
def archive(synth_archive, tmp_path_factory) -> Path:
    """24 phantoms, DICOMs (one with a hostile accession), a file with a hostile name, broken files."""
    root = tmp_path_factory.mktemp("report") / "archive"
    for src in sorted(synth_archive.rglob("*.png"))[::5][:24]:
        dest = root / src.parent.name / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
    dicoms = tmp_path_factory.mktemp("report") / "dcm"
    invoke(synth, [dicoms, "--n", 6, "--size", 128, "--formats", "dcm", "--classes", "covid,normal", "--seed", 5])
    for src in sorted(dicoms.rglob("*.dcm")):
        shutil.copy(src, root / f"dicom-{src.name}")
    hostile = sorted(root.glob("dicom-*"))[0]
    ds = pydicom.dcmread(hostile)
    ds.AccessionNumber = HOSTILE_ACCESSION
    ds.save_as(hostile)
    shutil.copy(sorted(synth_archive.glob("covid/*.png"))[0], root / HOSTILE_NAME)
    (root / "broken.png").write_bytes(b"not a png")
    (root / "empty.dcm").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def screened(trained_checkpoint, archive, tmp_path_factory) -> Path:
    """A real dcx-infer run over the archive with heatmaps; returns the result table (CSV)."""
    work = tmp_path_factory.mktemp("screened")
    out = work / "nightly.csv"
    invoke(infer, ["--engine", trained_checkpoint, archive, "--out", out, "--heatmaps", work / "heat",
                   "--batch-size", 8], expect_exit=3)
    return out


# --------------------------------------------------------------------------- statistics

def test_psi_and_ks_match_their_definitions():
    rng = np.random.default_rng(0)
    expected = drift.score_histogram(rng.beta(0.5, 2.0, 5000).tolist())
    same = drift.score_histogram(rng.beta(0.5, 2.0, 5000).tolist())
    shifted = drift.score_histogram(rng.beta(2.0, 0.5, 5000).tolist())
    e = np.add.reduceat(np.array(expected) / 5000, range(0, 100, 10))
    a = np.add.reduceat(np.array(shifted) / 5000, range(0, 100, 10))
    e, a = np.maximum(e, drift.PSI_FLOOR), np.maximum(a, drift.PSI_FLOOR)
    assert drift.psi(expected, shifted) == pytest.approx(float(np.sum((a - e) * np.log(a / e))))
    assert drift.psi(expected, same) < 0.05 < drift.PSI_WARN < drift.psi(expected, shifted)
    cdf_gap = np.abs(np.cumsum(expected) / 5000 - np.cumsum(shifted) / 5000).max()
    assert drift.ks(expected, shifted) == pytest.approx(cdf_gap) and drift.ks(expected, expected) == 0
    assert math.isnan(drift.psi(expected, [0] * drift.BINS))
    assert drift.score_histogram([0.0, 0.999, 1.0, None, float("nan")])[-1] == 2


def test_training_stores_the_validation_score_histogram(trained_checkpoint):
    card, _, _ = load_checkpoint(trained_checkpoint)
    validation = card.metrics["validation"]
    assert len(validation["score_histogram"]) == drift.BINS and sum(validation["score_histogram"]) == validation["n"]


# --------------------------------------------------------------------------- the report

@needs_chromium
def test_report_of_a_real_run_opens_in_chromium(screened, archive, tmp_path, artefacts):
    rows = list(read_rows(screened))
    page = tmp_path / "report.html"
    invoke(report, [screened, "--heatmaps", screened.parent / "heat", "--out", page])
    text = page.read_text(encoding="utf-8")
    assert_self_contained(text)

    flagged = sorted((r for r in rows if r["flagged"]), key=lambda r: -r["p_positive"])
    assert flagged, "the run flagged nothing: the report's main section would be untested"
    shown = [float(p) for p in re.findall(r'<p class=score><b>#\d+</b> p ([0-9.]+)', text)]
    assert shown == [pytest.approx(r["p_positive"], abs=1e-4) for r in flagged]  # flagged first, most probable first
    # hostile text never appears unescaped; the escaped forms are where the table put them
    assert HOSTILE_NAME not in text and HOSTILE_ACCESSION not in text
    assert "&lt;b&gt;HOSTILE&lt;/b&gt;" in text or "\\u003cb\\u003eHOSTILE" in text
    # counts by status, format, transfer syntax and reason
    assert f"<td>error</td><td class=n>{sum(r['status'] == 'error' for r in rows)}</td>" in text
    assert "<td>dicom</td>" in text and "1.2.840.10008.1.2.4.50 JPEG Baseline" in text
    assert f"Out of distribution ({sum(r['in_distribution'] is False for r in rows):,})" in text
    assert "id=score-histogram" in text and "threshold " in text

    dom, shot = open_in_chromium(page, tmp_path, artefacts)
    marks = page_marks(dom)
    assert marks.get("report") == "ready" and "script-error" not in marks
    assert int(marks["images"]) == 2 * len(flagged)  # radiograph and heatmap of each flagged image
    assert marks["images-decoded"] == marks["images"]
    assert int(marks["table-rows"]) == min(100, len(rows))
    assert HOSTILE_NAME not in dom and "&lt;img src=x onerror=alert(1)&gt;.png" in dom  # in the table, as text


@needs_chromium
def test_drift_across_nights_warns_when_scores_move(trained_checkpoint, synth_archive, tmp_path, artefacts):
    history = tmp_path / "nights.jsonl"
    like_training = tmp_path / "night1.csv"
    invoke(infer, ["--engine", trained_checkpoint, synth_archive, "--exclude", "manifest.csv", "--exclude",
                   "masks.npz", "--out", like_training, "--batch-size", 16], expect_exit=None)
    invoke(report, [like_training, "--history", history, "--out", tmp_path / "night1.html"])
    covid_only = tmp_path / "covid"
    invoke(synth, [covid_only, "--n", 40, "--size", 128, "--classes", "covid", "--seed", 9])
    shifted = tmp_path / "night2.csv"
    invoke(infer, ["--engine", trained_checkpoint, covid_only, "--exclude", "manifest.csv", "--exclude",
                   "masks.npz", "--out", shifted, "--batch-size", 16], expect_exit=None)
    page = tmp_path / "night2.html"
    for _ in range(2):  # rebuilding a report does not record the night twice
        result = invoke(report, [shifted, "--history", history, "--out", page])
    assert len(history.read_text().splitlines()) == 2

    card, _, _ = load_checkpoint(trained_checkpoint)
    reference = card.metrics["validation"]["score_histogram"]
    nights = [summary_of(like_training), summary_of(shifted)]
    values = []
    for night in nights:
        new = night["score_histogram"]["scored_this_run"]
        assert sum(new) == night["scored_this_run"]
        values.append(drift.psi(reference, new))
    assert values[1] > values[0], values
    assert drift.drifted(reference, nights[1]["score_histogram"]["scored_this_run"]), values  # covid only: a shift
    text = page.read_text(encoding="utf-8")
    assert f"{values[1]:.3f}" in text and "Score drift: tonight's PSI" in text and "DRIFT WARNING" in result.output
    rates = [n["flagged_this_run"] / n["scored_this_run"] for n in nights]
    assert all(f"{100 * r:.1f}%" in text for r in rates)
    dom, _ = open_in_chromium(page, tmp_path, artefacts)
    assert page_marks(dom)["report"] == "ready" and 'id="trend"' in dom


@needs_chromium
def test_the_browser_check_catches_a_script_error(tmp_path, artefacts):
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><p>broken</p><script>undefinedFunction();</script></body></html>")
    with pytest.raises(AssertionError, match="Uncaught ReferenceError"):
        open_in_chromium(page, tmp_path, artefacts)


def test_the_report_runs_without_loading_torch(screened, tmp_path):
    """A nightly report reads a table and thumbnails (the reference reader, no model): it must not
    pay PyTorch's import (2 CPU-s, 500 MB)."""
    page = tmp_path / "report.html"
    code = ("import sys\nfrom dcx.report.cli import main\ntry:\n    main(sys.argv[1:])\n"
            "except SystemExit as exc:\n    print('exit', exc.code, 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(screened), "--heatmaps", str(screened.parent / "heat"),
                           "--out", str(page)], capture_output=True, text=True, timeout=300)
    assert proc.stdout.splitlines()[-1] == "exit 0 False", (proc.stdout[-500:], proc.stderr[-500:])
    assert "<img src=\"data:image/jpeg;base64," in page.read_text(encoding="utf-8")  # thumbnails, read by core.reader


def test_report_without_validation_distribution_or_ood_columns_says_so(screened, tmp_path):
    summary = summary_of(screened)
    del summary["model"]["validation"]  # a model trained before the card stored it
    old = tmp_path / "old.summary.json"
    old.write_text(json.dumps(summary))
    invoke(report, [screened, "--summary", old, "--out", tmp_path / "r.html"])
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "holds no validation score distribution" in text and "PSI and KS cannot be computed" in text


@needs_chromium
def test_ten_thousand_rows_stay_fast(screened, tmp_path, artefacts):
    """10,000 rows (a real run's files, scored by a seeded generator) with out-of-distribution
    columns: pictures only for the first flagged and OOD rows, the rest in the paged table."""
    ok = [r for r in read_rows(screened) if r["status"] == "ok"]
    schema = RowSchema(("covid", "normal", "pneumonia"), "covid", 0.5, "m" * 12)
    rng = np.random.default_rng(1)
    table = tmp_path / "big.jsonl"
    with open_writer(table, schema.columns + ["ood_score", "in_distribution"]) as writer:
        for i in range(10_000):
            p = rng.dirichlet((0.4, 1, 1))
            row = schema.row(ok[i % len(ok)]["path"], 1, 0, status="ok", format="png", probs=p)
            writer.write([{**row, "ood_score": float(rng.random()), "in_distribution": bool(i % 50)}])
        writer.commit()
    shutil.copy(screened.with_name("nightly.summary.json"), tmp_path / "big.summary.json")
    page = tmp_path / "big.html"
    invoke(report, [table, "--out", page, "--max-pictures", 60])
    assert page.stat().st_size < 8_000_000
    text = page.read_text(encoding="utf-8")
    assert "Out of distribution (200)" in text and text.count("<article class=card") == 60 + 60
    dom, _ = open_in_chromium(page, tmp_path, artefacts)
    marks = page_marks(dom)
    assert marks["report"] == "ready" and marks["images-decoded"] == marks["images"] == str(60 + 60)
    assert marks["table-rows"] == "100" and int(marks["ready-ms"]) < 5000, marks
    print(f"10,000 rows: {page.stat().st_size / 1e6:.2f} MB, ready {marks['ready-ms']} ms after navigation start")


def test_hostile_values_stay_text(tmp_path):
    schema = RowSchema(("covid", "normal"), "covid", 0.5, "</script><script>alert(1)</script>")
    bad = "</script><script>alert(2)</script><!--"
    row = schema.row(bad, 1, 0, status="error", reason="<img src=x onerror=alert(3)>", format=bad)
    with open_writer(tmp_path / "t.csv", schema.columns) as writer:
        writer.write([row])
        writer.commit()
    (tmp_path / "t.summary.json").write_text(json.dumps({"model_id": bad, "engine": bad, "model": {"arch": bad}}))
    invoke(report, [tmp_path / "t.csv"])
    text = (tmp_path / "t.report.html").read_text(encoding="utf-8")
    assert "<script>alert" not in text and "<img src=x" not in text and "<!--" not in text
    data = re.search(r"<script type=application/json id=dcx-rows>(.*?)</script>", text, re.S).group(1)
    assert json.loads(data)["rows"][0][0] == bad


# --------------------------------------------------------------------------- site calibration

def test_calibrate_writes_a_site_file_that_dcx_infer_applies(trained_run, trained_checkpoint, archive, tmp_path):
    site = tmp_path / "site.json"
    result = invoke(calibrate, [trained_checkpoint, "--data", trained_run / "splits" / "test.csv",
                                "--target-sensitivity", 1.0, "--out", site])
    assert "Wilson" in result.output
    payload = json.loads(site.read_text())
    card, _, _ = load_checkpoint(trained_checkpoint)
    assert payload["model_id"] == card.model_id and payload["format"] == "dcx-site/1"
    point = payload["calibration"]["site_threshold"]
    assert point["sensitivity"] == 1.0 and point["tp"] == payload["calibration"]["positives"]
    for key in ("sensitivity", "specificity"):
        low, high = point[f"{key}_ci95"]
        assert low <= point[key] <= high and high - low > 0

    out = tmp_path / "r.csv"
    invoke(infer, ["--engine", trained_checkpoint, archive, "--out", out], expect_exit=3)
    first = list(read_rows(out))
    assert {r["threshold_source"] for r in first} == {"card"}
    again = invoke(infer, ["--engine", trained_checkpoint, archive, "--out", out, "--site", site], expect_exit=3)
    rows = list(read_rows(out))
    assert summary_of(out)["decoded_this_run"] == 0, again.output  # reused rows follow the site threshold
    assert summary_of(out)["threshold_source"] == "site"
    for row in rows:
        assert row["threshold"] == pytest.approx(payload["threshold"]) and row["threshold_source"] == "site"
        if row["status"] == "ok":
            assert row["flagged"] == (row["p_positive"] >= payload["threshold"])

    onnx = tmp_path / "m.onnx"  # an exported artefact carries the checkpoint's card, so the site file fits it
    invoke(export, [trained_checkpoint, "--precision", "fp32", "--out", onnx])
    invoke(infer, ["--engine", onnx, archive, "--out", tmp_path / "o.csv", "--site", site], expect_exit=3)
    assert {r["threshold_source"] for r in read_rows(tmp_path / "o.csv")} == {"site"}

    payload["model_id"] = "0123456789ab"
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(payload))
    refused = invoke(infer, ["--engine", trained_checkpoint, archive, "--out", tmp_path / "x.csv", "--site", foreign],
                     expect_exit=1)
    assert "calibrated for model 0123456789ab" in refused.output and not (tmp_path / "x.csv").exists()


def test_calibrate_youden_and_bad_input(trained_run, trained_checkpoint, tmp_path):
    site = tmp_path / "site.json"
    invoke(calibrate, [trained_checkpoint, "--data", trained_run / "splits" / "val.csv", "--youden", "--out", site])
    assert json.loads(site.read_text())["policy"] == "youden on the site sample"
    both = invoke(calibrate, [trained_checkpoint, "--data", trained_run / "splits" / "val.csv", "--youden",
                              "--target-sensitivity", 0.9, "--out", tmp_path / "b.json"], expect_exit=2)
    assert "contradict" in both.output
    exists = invoke(calibrate, [trained_checkpoint, "--data", trained_run / "splits" / "val.csv", "--out", site],
                    expect_exit=1)
    assert "exists" in exists.output


# --------------------------------------------------------------------------- real samples

@needs_chromium
def test_report_on_the_real_samples(shared_data, trained_checkpoint, tmp_path, artefacts):
    listing = tmp_path / "files.txt"
    real = sorted((shared_data / "cxr-dev").rglob("*.png"))[::10] + sorted((shared_data / "dicom").rglob("*.dcm"))
    listing.write_text("".join(f"{p}\n" for p in real))
    out = tmp_path / "real.csv"
    invoke(infer, ["--engine", trained_checkpoint, "--files-from", listing, "--out", out, "--heatmaps",
                   tmp_path / "heat", "--batch-size", 8], expect_exit=None)
    rows = list(read_rows(out))
    assert len(rows) == len(real)
    page = tmp_path / "real.html"
    invoke(report, [out, "--heatmaps", tmp_path / "heat", "--out", page, "--max-pictures", 40])
    assert_self_contained(page.read_text(encoding="utf-8"))
    dom, _ = open_in_chromium(page, tmp_path, artefacts)
    marks = page_marks(dom)
    flagged = sum(bool(r["flagged"]) for r in rows)
    unusual = sum(r["in_distribution"] is False for r in rows)  # a thumbnail each, no heatmap
    assert marks["report"] == "ready"
    assert marks["images-decoded"] == marks["images"] == str(2 * min(flagged, 40) + min(unusual, 40))
