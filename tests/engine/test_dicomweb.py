"""Screening a PACS over DICOMweb, against a real Orthanc with its DICOMweb plugin.

Orthanc runs on a free loopback port with its storage in a temporary folder (see
orthanc_server.py); the tests skip with the reason where Orthanc is not installed. The
archive holds the shared real DICOM files (when present) and synthetic ones in every
transfer syntax dcx-synth writes, plus a CT image the default modality filter must leave out.
"""
from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import threading
import time
from datetime import date, datetime, timezone
from pathlib import Path

import pydicom
import pytest
import requests
import torch
from pydicom.uid import generate_uid

from conftest import SHARED_DATA, invoke
from dcx.engine.cli import main
from dcx.engine.dicomweb import DicomWebClient, DicomWebSource, Query, parse_date_range
from dcx.engine.results import read_rows
from dcx.engine.run import screen
from dcx.engine.scoring import ScreenOptions
from dcx.engine.shard import Shard
from dcx.engine.state import StateDB, state_key
from dcx.core.card import ModelCard
from dcx.core.checkpoint import save_checkpoint
from dcx.core.errors import DcxError
from dcx.core.models import create_model
from dcx.train.synth import DICOM_VARIANTS, make_phantom, write_dicom
from orthanc_server import MISSING, OrthancServer, free_port

needs_orthanc = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A random-weight resnet18 checkpoint at 64 px: the rows, not the scores, are under test."""
    torch.manual_seed(0)
    card = ModelCard(arch="resnet18", classes=["covid", "normal", "pneumonia"], positive="covid",
                     threshold=0.4, input_size=64)
    return save_checkpoint(tmp_path_factory.mktemp("model") / "model.pt",
                           create_model(card.arch, len(card.classes)).eval().state_dict(), card)


def synthetic_dicoms(folder: Path, n: int, size: int = 96, seed: int = 0) -> list[Path]:
    """``n`` synthetic chest DICOMs cycling through every variant, one study each."""
    files = []
    for k in range(n):
        variant = DICOM_VARIANTS[k % len(DICOM_VARIANTS)]
        image, _ = make_phantom(("covid", "normal", "pneumonia")[k % 3], size=size, seed=seed + k)
        files.append(write_dicom(folder / f"synth-{seed}-{k}.dcm", image, variant, seed=seed,
                                 patient_id=f"SYN{seed:03d}{k:04d}", modality=("DX", "CR")[k % 2]))
    return files


def upload_unique(server: OrthancServer, files: list[Path]) -> dict[str, pydicom.Dataset]:
    """Upload files whose SOP Instance UID was not uploaded before; their headers by SOP UID."""
    stored = {}
    for path in files:
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if header.SOPInstanceUID not in stored and server.upload(path):
            stored[header.SOPInstanceUID] = header
    return stored


def _real_samples() -> list[Path]:
    """One shared real DICOM file per (transfer syntax, modality), CT left out; [] when absent."""
    chosen = {}
    for path in sorted((SHARED_DATA / "dicom").glob("*.dcm")) if (SHARED_DATA / "dicom").is_dir() else []:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "")
        if ds.Modality != "CT":
            chosen.setdefault((syntax, ds.Modality), path)
    return list(chosen.values())


def _ct_copy(source: Path, dest: Path) -> Path:
    """A real radiograph relabelled as a CT of its own study: the modality filter must skip it."""
    ds = pydicom.dcmread(source)
    ds.Modality = "CT"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(dest)
    return dest


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """(server, headers of its CR/DX instances by SOP UID, SOP UID of the CT) for the module."""
    if MISSING:
        pytest.skip(MISSING)
    folder = tmp_path_factory.mktemp("pacs")
    server = OrthancServer(folder / "orthanc").start()
    try:
        files = synthetic_dicoms(folder / "synth", len(DICOM_VARIANTS))
        images = upload_unique(server, _real_samples() + files)
        ct = upload_unique(server, [_ct_copy(files[0], folder / "ct.dcm")])
        yield server, images, next(iter(ct))
    finally:
        server.stop()


@pytest.fixture
def small_pacs(tmp_path):
    """A fresh Orthanc holding four synthetic instances (for tests that stop it or need it clean)."""
    if MISSING:
        pytest.skip(MISSING)
    server = OrthancServer(tmp_path / "orthanc").start()
    try:
        yield server, upload_unique(server, synthetic_dicoms(tmp_path / "synth", 4, size=64, seed=7))
    finally:
        server.stop()


def _options(model: Path, server: OrthancServer, folder: Path, **kwargs) -> ScreenOptions:
    """What dcx-infer builds, with a client that gives up fast (tests stop servers on purpose)."""
    client = DicomWebClient(server.dicomweb, retries=1, backoff=0.05, timeout=10)
    kwargs.setdefault("dicomweb", DicomWebSource(client, kwargs.pop("query", Query())))
    return ScreenOptions(engine=model, out=folder / "results.csv", state=folder / "state.sqlite",
                         summary=folder / "summary.json", device="cpu", batch_size=2, decode_threads=1,
                         **kwargs)


def _instance_url(server: OrthancServer, header) -> str:
    return (f"{server.dicomweb}/studies/{header.StudyInstanceUID}/series/{header.SeriesInstanceUID}"
            f"/instances/{header.SOPInstanceUID}")


def _reports_in(server: OrthancServer) -> dict[str, dict]:
    """dcx's reports the server holds (QIDO-RS, modality SR), by SOP Instance UID."""
    found = requests.get(f"{server.dicomweb}/instances", params={"Modality": "SR"}, auth=server.auth,
                         timeout=30).json() or []
    return {item["00080018"]["Value"][0]: item for item in found}


def _content(ds, meaning: str):
    return next(item for item in ds.ContentSequence if item.ConceptNameCodeSequence[0].CodeMeaning == meaning)


# --------------------------------------------------------------------------- tests


@needs_orthanc
def test_screens_every_image_instance_and_stores_reports_that_reference_it(pacs, model, tmp_path):
    server, images, ct_uid = pacs
    out, sr_dir = tmp_path / "nightly.csv", tmp_path / "sr"
    args = ["--engine", model, server.dicomweb, "--device", "cpu", "--out", out, "--batch-size", 8,
            "--sr-to", server.dicomweb, "--sr-dir", sr_dir]
    result = invoke(main, args)
    rows = list(read_rows(out))
    assert f"structured reports: {len(images)} stored+written" in result.output

    assert sorted(r["sop_uid"] for r in rows) == sorted(images)  # one row per image, no CT
    assert ct_uid not in {r["sop_uid"] for r in rows}
    assert [r["status"] for r in rows] == ["ok"] * len(images), [r["reason"] for r in rows]
    assert all(r["path"] == _instance_url(server, images[r["sop_uid"]]) for r in rows)
    assert "patient_name" not in rows[0] and "patient_id" not in rows[0]
    assert {r["sr_status"] for r in rows} == {"stored+written"}

    reports = {p.stem: pydicom.dcmread(p) for p in sr_dir.glob("*.dcm")}
    assert set(_reports_in(server)) == set(reports)  # Orthanc accepted every report
    by_source = {}
    for ds in reports.values():
        source = _content(ds, "Source").ReferencedSOPSequence[0]
        by_source[source.ReferencedSOPInstanceUID] = ds
        header = images[source.ReferencedSOPInstanceUID]
        assert source.ReferencedSOPClassUID == header.SOPClassUID
        assert ds.StudyInstanceUID == header.StudyInstanceUID and ds.PatientID == header.get("PatientID", "")
        evidence = ds.CurrentRequestedProcedureEvidenceSequence[0]
        assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == header.SeriesInstanceUID
    assert set(by_source) == set(images)
    for row in rows:
        ds = by_source[row["sop_uid"]]
        p = float(_content(ds, "Probability of covid").MeasuredValueSequence[0].NumericValue)
        assert p == pytest.approx(row["p_positive"], abs=1e-6)
        decision = _content(ds, "Screening decision").ConceptCodeSequence[0].CodeValue
        assert decision == ("flagged" if row["flagged"] else "not-flagged")
        assert _content(ds, "Comment").TextValue.startswith("Not for diagnostic use")
    if shutil.which("dsrdump"):
        dump = subprocess.run(["dsrdump", str(next(iter(sr_dir.glob("*.dcm"))))], capture_output=True,
                              text=True, timeout=30)
        assert dump.returncode == 0 and "Probability of covid" in dump.stdout, dump.stderr

    # the next night: nothing new to score, no report sent twice
    stored_before = _reports_in(server)
    result = invoke(main, args)
    assert "0 read this run" in result.output
    assert list(read_rows(out)) == rows
    assert _reports_in(server).keys() == stored_before.keys()

    # every modality: the CT is scored, dcx's own reports are skipped rows, images come from state
    invoke(main, ["--engine", model, server.dicomweb, "--device", "cpu", "--out", out, "--modality", "any"])
    everything = {r["path"].rsplit("/", 1)[1]: r for r in read_rows(out)}
    assert everything[ct_uid]["status"] == "ok"
    assert all(everything[uid]["status"] == "skipped" and "no pixel data" in everything[uid]["reason"]
               and everything[uid]["sop_uid"] == uid for uid in reports)
    assert len(everything) == len(images) + 1 + len(reports)


@needs_orthanc
def test_resumes_after_the_server_stops_mid_run_and_scores_only_new_instances(model, tmp_path):
    server = OrthancServer(tmp_path / "orthanc").start()
    try:
        headers = upload_unique(server, synthetic_dicoms(tmp_path / "synth", 12, size=64, seed=3))
        options = _options(model, server, tmp_path, query=Query(since="last-run"))
        partial = tmp_path / "results.csv.partial"

        def stop_after_first_batches():
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if partial.exists() and len(partial.read_text().splitlines()) >= 3:  # header + one batch
                    server.stop(kill=True)
                    return
                time.sleep(0.005)

        killer = threading.Thread(target=stop_after_first_batches)
        killer.start()
        with pytest.raises(DcxError, match="rerun the same command to resume"):
            screen(options)
        killer.join()
        with StateDB(options.state, _profile(options)) as state:
            committed = sum(state.count().values())
        assert 2 <= committed < len(headers)

        server.start()  # same storage, same port
        summary = screen(options)
        rows = list(read_rows(options.out))
        assert sorted(r["sop_uid"] for r in rows) == sorted(headers)
        assert summary["reused_from_state"] == committed
        assert summary["scored_this_run"] == len(headers) - committed

        # a new instance arrives; 'since the last run' no longer matches the 2020 studies, so only
        # a study dated today is listed, and it is the only one scored
        new = synthetic_dicoms(tmp_path / "new", 1, size=64, seed=11)[0]
        ds = pydicom.dcmread(new)
        ds.StudyDate = date.today().strftime("%Y%m%d")
        ds.save_as(new)
        upload_unique(server, [new])
        summary = screen(options)
        assert summary["files"] == 1 and summary["scored_this_run"] == 1
        summary = screen(_options(model, server, tmp_path))  # without --since: all, nothing rescored
        assert summary["files"] == len(headers) + 1 and summary["scored_this_run"] == 0
    finally:
        server.stop()


def _profile(options: ScreenOptions) -> str:
    from dcx.engine.backends import read_engine_card
    from dcx.engine.scoring import state_profile

    return state_profile(read_engine_card(options.engine).model_id, options)


@needs_orthanc
def test_a_report_that_cannot_be_stored_keeps_its_row_and_is_sent_by_the_rerun(small_pacs, model, tmp_path):
    server, headers = small_pacs
    nowhere = DicomWebClient(f"http://127.0.0.1:{free_port()}/dicom-web", retries=0)
    screen(_options(model, server, tmp_path, sr_store=nowhere))
    rows = list(read_rows(tmp_path / "results.csv"))
    assert len(rows) == len(headers) and {r["status"] for r in rows} == {"ok"}
    assert all(r["sr_status"].startswith("error: not stored") for r in rows)
    assert _reports_in(server) == {}

    summary = screen(_options(model, server, tmp_path, sr_store=DicomWebClient(server.dicomweb)))
    assert summary["scored_this_run"] == 0
    assert {r["sr_status"] for r in read_rows(tmp_path / "results.csv")} == {"stored"}
    assert len(_reports_in(server)) == len(headers)
    summary = screen(_options(model, server, tmp_path, sr_store=DicomWebClient(server.dicomweb)))
    assert {r["sr_status"] for r in read_rows(tmp_path / "results.csv")} == {"stored"}


@needs_orthanc
def test_credentials_come_from_the_environment_or_netrc_and_never_reach_the_output(model, tmp_path, monkeypatch):
    password = "s3cret-Pw-for-test"
    server = OrthancServer(tmp_path / "orthanc", users={"dcx": password}).start()
    try:
        upload_unique(server, synthetic_dicoms(tmp_path / "synth", 1, size=64, seed=5))
        for name in ("DCX_DICOMWEB_TOKEN", "DCX_DICOMWEB_USER", "DCX_DICOMWEB_PASSWORD"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("NETRC", str(tmp_path / "absent-netrc"))
        args = ["--engine", model, server.dicomweb, "--device", "cpu", "--out", tmp_path / "r.csv"]

        refused = invoke(main, args, expect_exit=1)
        assert refused.output.count("Error:") == 1 and "401" in refused.output
        assert "DCX_DICOMWEB_USER" in refused.output

        monkeypatch.setenv("DCX_DICOMWEB_USER", "dcx")
        monkeypatch.setenv("DCX_DICOMWEB_PASSWORD", password)
        result = invoke(main, args)
        assert "1 ok" in result.output

        monkeypatch.delenv("DCX_DICOMWEB_USER")
        monkeypatch.delenv("DCX_DICOMWEB_PASSWORD")
        netrc = tmp_path / "netrc"
        netrc.write_text(f"machine 127.0.0.1 login dcx password {password}\n")
        netrc.chmod(0o600)
        monkeypatch.setenv("NETRC", str(netrc))
        result = invoke(main, args + ["--no-state", "--out", tmp_path / "netrc.csv"])
        assert "1 ok" in result.output
        for written in tmp_path.glob("*.*"):
            if written.is_file() and written.suffix in (".csv", ".json", ".sqlite"):
                assert password.encode() not in written.read_bytes(), written
    finally:
        server.stop()


@needs_orthanc
def test_bad_urls_and_ray_stop_with_one_error_line(pacs, model, tmp_path):
    server = pacs[0]
    base = ["--engine", model, "--device", "cpu", "--out", tmp_path / "r.csv"]
    for archive, expected in [
        (f"http://dcx:pw@127.0.0.1:{server.port}/dicom-web", "credentials in the URL are refused"),
        (f"{server.url}/not-dicom-web", "404"),
        ("http://127.0.0.1:notaport/dicom-web", "bad port"),
    ]:
        result = invoke(main, base + [archive], expect_exit=1)
        assert result.output.count("Error:") == 1 and expected in result.output, result.output
        assert "pw@" not in result.output
    result = invoke(main, base + [server.dicomweb, "--ca-bundle", tmp_path / "absent.pem"], expect_exit=1)
    assert result.output.count("Error:") == 1 and "--ca-bundle" in result.output
    result = invoke(main, base + [server.dicomweb, "--ray=local"], expect_exit=1)
    assert "--ray" in result.output and "--shard" in result.output


@needs_orthanc
def test_shards_split_the_pacs_by_study(pacs):
    server, images, _ = pacs
    source = DicomWebSource(DicomWebClient(server.dicomweb))
    everything = [c.path for c in source.candidates()]
    parts = [[c.path for c in source.candidates(Shard(i, 3))] for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(everything) and len(everything) == len(images)
    studies = [{p.split("/studies/")[1].split("/")[0] for p in part} for part in parts]
    assert not (studies[0] & studies[1] or studies[1] & studies[2] or studies[0] & studies[2])


# --------------------------------------------------------------------------- without Orthanc


def test_reports_of_a_folder_archive_come_from_the_file_headers(model, tmp_path):
    folder = tmp_path / "archive"
    files = synthetic_dicoms(folder, 2, size=64, seed=9)
    (folder / "notes.txt").write_text("not an image")
    invoke(main, ["--engine", model, folder, "--device", "cpu", "--out", tmp_path / "r.csv",
                  "--sr-dir", tmp_path / "sr"])  # the text file is a skipped row: no report
    assert rows_by_status(tmp_path / "r.csv") == {"ok": 2, "skipped": 1}
    rows = {Path(r["path"]).name: r for r in read_rows(tmp_path / "r.csv")}
    assert rows["notes.txt"]["sr_status"] is None
    reports = [pydicom.dcmread(p) for p in (tmp_path / "sr").glob("*.dcm")]
    sources = {pydicom.dcmread(f).SOPInstanceUID for f in files}
    assert {_content(ds, "Source").ReferencedSOPSequence[0].ReferencedSOPInstanceUID for ds in reports} == sources
    assert all(rows[f.name]["sr_status"] == "written" for f in files)
    if shutil.which("dsrdump"):
        for path in (tmp_path / "sr").glob("*.dcm"):
            dump = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, timeout=30)
            assert dump.returncode == 0 and ("Not flagged" in dump.stdout or "Flagged for review" in dump.stdout)
    if shutil.which("dciodvfy"):  # the report adds no IOD error of its own (it inherits its source's)
        source_of = {pydicom.dcmread(f).SOPInstanceUID: f for f in files}
        for path in (tmp_path / "sr").glob("*.dcm"):
            source = source_of[_content(pydicom.dcmread(path), "Source").ReferencedSOPSequence[0].ReferencedSOPInstanceUID]
            assert _iod_errors(path) <= _iod_errors(source), _iod_errors(path)


def rows_by_status(results: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in read_rows(results):
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


def _iod_errors(path: Path) -> set[str]:
    check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=30)
    return {line.split(" Module=")[0] for line in (check.stdout + check.stderr).splitlines()
            if line.startswith("Error") and "invalid data values" not in line}


class _HostilePacs(http.server.BaseHTTPRequestHandler):
    """A DICOMweb server answering one study of four instances: 1.1 after two 503s, 1.2 as a
    multipart body cut before its closing boundary, 1.3 as an HTML page, 1.4 cut off midway once;
    its series query is cut off midway once too."""

    dicom = b""
    hits: dict[str, int] = {}

    def do_GET(self):
        path = self.path.split("?")[0]
        self.hits[path] = self.hits.get(path, 0) + 1
        base = "/dicom-web/studies"
        if path == base:
            return self._json([{"0020000D": {"vr": "UI", "Value": ["1.2.3"]}}])
        if path == f"{base}/1.2.3/series":
            series = json.dumps([{"0020000E": {"vr": "UI", "Value": ["1.2.3.4"]},
                                  "00080060": {"vr": "CS", "Value": ["DX"]}}]).encode()
            if self.hits[path] == 1:  # the first answer is cut off mid-body (the PACS stopped): retried
                return self._send(200, "application/dicom+json", series[: len(series) // 2], len(series))
            return self._send(200, "application/dicom+json", series)
        if path == f"{base}/1.2.3/series/1.2.3.4/instances":
            return self._json([{"00080018": {"vr": "UI", "Value": [uid]}} for uid in ("1.1", "1.2", "1.3", "1.4")])
        sop = path.rsplit("/", 1)[1]
        if sop == "1.1" and self.hits[path] <= 2:
            return self._send(503, "text/plain", b"busy")
        part = b"--XyZ\r\nContent-Type: application/dicom\r\n\r\n" + self.dicom
        if sop == "1.1":
            return self._send(200, 'multipart/related; type="application/dicom"; boundary=XyZ', part + b"\r\n--XyZ--\r\n")
        if sop == "1.2":
            return self._send(200, 'multipart/related; type="application/dicom"; boundary=XyZ', part[:-100])
        if sop == "1.4":  # the first answer is cut off mid-body (a PACS restarting): retried
            whole = part + b"\r\n--XyZ--\r\n"
            body = whole[: len(whole) // 2] if self.hits[path] == 1 else whole
            return self._send(200, 'multipart/related; type="application/dicom"; boundary=XyZ', body, len(whole))
        return self._send(200, "text/html", b"<html>login</html>")

    def _json(self, value):
        self._send(200, "application/dicom+json", json.dumps(value).encode())

    def _send(self, status, content_type, body, length=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_retries_busy_answers_and_makes_malformed_ones_error_rows(model, tmp_path):
    _HostilePacs.dicom = synthetic_dicoms(tmp_path, 1, size=64)[0].read_bytes()
    _HostilePacs.hits = {}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HostilePacs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = DicomWebClient(f"http://127.0.0.1:{server.server_address[1]}/dicom-web", retries=2, backoff=0.01)
        options = ScreenOptions(engine=model, out=tmp_path / "r.csv", device="cpu", batch_size=4,
                                decode_threads=1, dicomweb=DicomWebSource(client))
        screen(options)
    finally:
        server.shutdown()
        server.server_close()
    rows = {r["path"].rsplit("/", 1)[1]: r for r in read_rows(tmp_path / "r.csv")}
    assert rows["1.1"]["status"] == "ok", rows["1.1"]["reason"]
    assert _HostilePacs.hits["/dicom-web/studies/1.2.3/series/1.2.3.4/instances/1.1"] == 3
    assert rows["1.2"]["status"] == "error" and "closing boundary" in rows["1.2"]["reason"]
    assert rows["1.3"]["status"] == "error" and "not multipart" in rows["1.3"]["reason"]
    assert rows["1.4"]["status"] == "ok", rows["1.4"]["reason"]
    assert _HostilePacs.hits["/dicom-web/studies/1.2.3/series/1.2.3.4/instances/1.4"] == 2
    assert _HostilePacs.hits["/dicom-web/studies/1.2.3/series"] == 2


def test_study_date_filters():
    assert Query(study_dates=parse_date_range("2024-01-01..2024-01-31")).date_filter(None) == "20240101-20240131"
    assert Query(study_dates=parse_date_range("20240101-")).date_filter(None) == "20240101-"
    assert Query(study_dates=parse_date_range("2024-03-05")).date_filter(None) == "20240305"
    last = datetime(2024, 5, 10, 2, 0, tzinfo=timezone.utc)
    assert Query(since="last-run").date_filter(last) == "20240509-"  # a day of margin
    assert Query(since="last-run").date_filter(None) is None  # first run: everything
    assert Query(study_dates=parse_date_range("2024-01-01..2024-12-31"), since="last-run").date_filter(last) \
        == "20240509-20241231"
    with pytest.raises(DcxError):
        parse_date_range("2024-02-01..2024-01-01")


def test_state_keys_dicomweb_instances_by_sop_uid():
    a = state_key("http://pacs-a:8042/dicom-web/studies/1.2/series/1.3/instances/1.2.3.4")
    b = state_key("https://pacs-b/wado/studies/1.2/series/1.3/instances/1.2.3.4")
    assert a == b == b"dicomweb:sop:1.2.3.4"
    assert state_key("relative/instances/1.2.3.4") != a
