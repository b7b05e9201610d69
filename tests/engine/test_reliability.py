"""Nightly runs that can be trusted: one run per output, model identity, change detection,
signals, unwritable places and planted links -- each as a user would meet it."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import invoke
from dcx.engine import interrupts
from dcx.engine.cli import main
from dcx.engine.discover import Candidate
from dcx.engine.lock import OutputLock, lock_path
from dcx.engine.results import partial_path, read_rows
from dcx.engine.scoring import Stats, chunks
from dcx.core.errors import DcxError


@pytest.fixture(scope="module")
def small_archive(synth_archive, tmp_path_factory) -> Path:
    """10 phantoms in two folders."""
    root = tmp_path_factory.mktemp("reliab") / "archive"
    for i, src in enumerate(sorted(synth_archive.rglob("*.png"))[::11][:10]):
        dest = root / f"site{i % 2}" / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
    return root


@pytest.fixture(scope="module")
def onnx_model(trained_checkpoint, tmp_path_factory) -> Path:
    from dcx.export.cli import main as export

    onnx = tmp_path_factory.mktemp("model") / "model.onnx"
    invoke(export, [trained_checkpoint, "--precision", "fp32", "--out", onnx])
    return onnx


def infer(engine, archive, out, *extra, expect_exit=0):
    result = invoke(main, ["--engine", engine, archive, "--out", out, "--batch-size", 4, *extra],
                    expect_exit=expect_exit)
    summary_path = out.with_name(out.name.rsplit(".", 1)[0] + ".summary.json")
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return result, summary


def _files(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- 1. one run per output

HOLDER = ("import sys, time\nfrom dcx.engine.lock import OutputLock\n"
          "with OutputLock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n")


def test_a_second_run_on_a_locked_output_names_the_holder_and_touches_nothing(
        trained_checkpoint, small_archive, tmp_path):
    out = tmp_path / "r.csv"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result, summary = infer(trained_checkpoint, small_archive, out, expect_exit=1)
        assert f"pid {holder.pid}" in result.output and socket.gethostname() in result.output
        assert result.output.count("Error:") == 1
        assert summary is None and not out.exists() and not partial_path(out).exists()
    finally:
        holder.kill()
        holder.wait()
    _, summary = infer(trained_checkpoint, small_archive, out)  # the kernel dropped the dead holder's lock
    assert summary["completed"] and summary["files"] == 10


def test_two_concurrent_runs_publish_one_exact_table(trained_checkpoint, small_archive, tmp_path):
    out = tmp_path / "r.csv"
    cmd = [sys.executable, "-m", "dcx.engine.cli", "--engine", str(trained_checkpoint), str(small_archive),
           "--out", str(out), "--batch-size", "2"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for code, err in results:
        assert code == 0 or (code == 1 and "another dcx run is writing this output" in err), err
    rows = list(read_rows(out))
    assert sorted(r["path"] for r in rows) == sorted(_files(small_archive))
    summary = json.loads((tmp_path / "r.summary.json").read_text())
    assert summary["completed"] is True and summary["files"] == 10


def test_lock_file_is_never_scored_and_is_reusable(tmp_path):
    out = tmp_path / "r.csv"
    with OutputLock(out):
        with pytest.raises(DcxError, match=f"pid {os.getpid()}"):
            OutputLock(out).__enter__()
    with OutputLock(out):
        pass
    assert lock_path(out).exists()


# --------------------------------------------------------------------------- 2. model identity

def test_model_swapped_under_a_stale_sidecar_is_refused_before_scoring(onnx_model, small_archive, tmp_path):
    import onnx

    model = tmp_path / "model.onnx"
    shutil.copy(onnx_model, model)
    shutil.copy(onnx_model.with_name("model.onnx.json"), tmp_path / "model.onnx.json")
    retrained = onnx.load(str(onnx_model))
    retrained.producer_version = "retrained"
    onnx.save(retrained, str(model))  # the new model file, the old sidecar
    result, summary = infer(model, small_archive, tmp_path / "r.csv", expect_exit=1)
    assert "is not the file its sidecar" in result.output and "Traceback" not in result.output
    assert summary is None


def test_card_whose_input_size_disagrees_with_the_graph_is_refused(onnx_model, small_archive, tmp_path):
    model = tmp_path / "model.onnx"
    shutil.copy(onnx_model, model)
    sidecar = json.loads(onnx_model.with_name("model.onnx.json").read_text())
    sidecar["card"]["input_size"] = sidecar["card"]["input_size"] * 2
    (tmp_path / "model.onnx.json").write_text(json.dumps(sidecar))
    result, summary = infer(model, small_archive, tmp_path / "r.csv", expect_exit=1)
    assert "the card does not belong to this model" in result.output and summary is None


def test_a_re_exported_model_file_is_never_served_old_rows(trained_checkpoint, onnx_model, small_archive, tmp_path):
    from dcx.export.cli import main as export

    model, out = tmp_path / "model.onnx", tmp_path / "r.csv"
    shutil.copy(onnx_model, model)
    shutil.copy(onnx_model.with_name("model.onnx.json"), tmp_path / "model.onnx.json")
    _, first = infer(model, small_archive, out)
    invoke(export, [trained_checkpoint, "--precision", "fp16", "--out", model, "--force"])
    _, second = infer(model, small_archive, out)
    assert first["model_id"] == second["model_id"]  # same card, other weights
    assert second["reused_from_state"] == 0 and second["decoded_this_run"] == 10


# --------------------------------------------------------------------------- 6. change detection

def test_rewrite_with_same_size_and_mtime_is_rescored(trained_checkpoint, small_archive, tmp_path):
    work = tmp_path / "a"
    shutil.copytree(small_archive, work)
    out = tmp_path / "r.csv"
    infer(trained_checkpoint, work, out)
    victim, donor = sorted(work.rglob("*.png"))[:2]
    st = victim.stat()
    data = donor.read_bytes()
    victim.write_bytes(data[: st.st_size].ljust(st.st_size, b"\0"))  # same size
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # touch -r: same mtime
    assert victim.stat().st_size == st.st_size and victim.stat().st_mtime_ns == st.st_mtime_ns
    _, summary = infer(trained_checkpoint, work, out)
    assert summary["decoded_this_run"] == 1 and summary["reused_from_state"] == 9


def test_schema_1_state_database_is_migrated_and_its_rows_rescored(tmp_path):
    import sqlite3

    from dcx.engine.state import StateDB

    path = tmp_path / "s.sqlite"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                     "INSERT INTO meta VALUES ('schema_version', '1');"
                     "CREATE TABLE results (path BLOB NOT NULL, model_id TEXT NOT NULL, size INTEGER NOT NULL,"
                     " mtime_ns INTEGER NOT NULL, status TEXT NOT NULL, row TEXT NOT NULL,"
                     " PRIMARY KEY (path, model_id)) WITHOUT ROWID;"
                     "INSERT INTO results VALUES (CAST('/a.png' AS BLOB), 'm', 10, 5, 'ok', '{}');")
    db.commit()
    db.close()
    f = Candidate("/a.png", 10, 5, ctime_ns=7, inode=3)
    with StateDB(path, "m") as state:
        assert state.lookup([f]) == {}
        state.record([(f, {"path": f.path, "status": "ok"})])
        assert state.lookup([f]) == {f.path: {"status": "ok"}}


# --------------------------------------------------------------------------- 5. bounded batches

def test_a_chunk_holds_at_most_max_bytes_of_files_to_read():
    files = [Candidate(f"/f{i}", 100 << 20, 1) for i in range(7)]
    cut = [len(c.todo) for c in chunks(files, None, 64, Stats(), max_bytes=256 << 20)]
    assert cut == [2, 2, 2, 1]
    alone = [len(c.todo) for c in chunks([Candidate("/big", 900 << 20, 1)] + files[:1], None, 64, Stats(),
                                         max_bytes=256 << 20)]
    assert alone == [1, 1]  # a file above the cap still goes, alone


# --------------------------------------------------------------------------- 8. heatmaps

def test_heatmaps_added_to_a_nightly_job_are_drawn_for_reused_rows(trained_checkpoint, small_archive, tmp_path):
    out, heat = tmp_path / "r.csv", tmp_path / "heat"
    _, first = infer(trained_checkpoint, small_archive, out)
    assert first["flagged"] > 0
    _, second = infer(trained_checkpoint, small_archive, out, "--heatmaps", heat)
    flagged = [r for r in read_rows(out) if r["flagged"]]
    assert flagged and all(r["heatmap"] and Path(r["heatmap"]).is_file() for r in flagged)
    assert second["decoded_this_run"] == len(flagged)
    _, third = infer(trained_checkpoint, small_archive, out, "--heatmaps", heat)
    assert third["decoded_this_run"] == 0


# --------------------------------------------------------------------------- 9, 17. one-line errors

def test_summary_naming_a_folder_is_one_error(trained_checkpoint, small_archive, tmp_path):
    (tmp_path / "s").mkdir()
    result, _ = infer(trained_checkpoint, small_archive, tmp_path / "r.csv", "--summary", tmp_path / "s",
                      expect_exit=1)
    assert "Error:" in result.output and "is a directory" in result.output


def test_out_naming_a_folder_says_so_before_asking_for_force(trained_checkpoint, small_archive, tmp_path):
    (tmp_path / "o").mkdir()
    result, _ = infer(trained_checkpoint, small_archive, tmp_path / "o", expect_exit=1)
    assert "is a directory" in result.output and "--force" not in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_heatmap_folder_is_refused_before_the_run(trained_checkpoint, small_archive, tmp_path):
    heat = tmp_path / "heat"
    heat.mkdir()
    heat.chmod(0o500)
    result, summary = infer(trained_checkpoint, small_archive, tmp_path / "r.csv", "--heatmaps", heat,
                            expect_exit=1)
    assert "cannot write into --heatmaps folder" in result.output and summary is None


FULL_DISK = ("import resource, signal, sys\n"
             "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
             "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))\n"
             "sys.argv[1:2] = []\n"
             "from dcx.engine.cli import main\nmain()\n")


@pytest.mark.parametrize("where", ["results", "state", "heatmaps"])
def test_a_full_disk_is_one_error_line(trained_checkpoint, small_archive, tmp_path, where):
    """RLIMIT_FSIZE makes every write past the limit fail (EFBIG), as a full disk does (ENOSPC):
    the same code paths, without filling a real disk."""
    out = tmp_path / "r.csv"
    args = ["--engine", trained_checkpoint, small_archive, "--out", out, "--batch-size", 2]
    limit = 1500  # results: the header fits, the first rows do not
    if where == "results":
        args += ["--no-state"]
    if where == "state":  # a state database that is already large: its next page does not fit
        limit = 40_000
    if where == "heatmaps":
        args += ["--heatmaps", tmp_path / "heat", "--no-state"]
        limit = 4_000  # above the CSV (about 2.5 kB), below one heatmap PNG (about 5.5 kB)
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(limit), *map(str, args)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("Error:") == 1, proc.stderr
    assert {"results": "r.csv.partial", "state": "state database", "heatmaps": "heatmap"}[where] in proc.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- 10. planted link

def test_symlink_planted_at_the_partial_output_is_not_followed(trained_checkpoint, small_archive, tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    out = tmp_path / "r.csv"
    partial_path(out).symlink_to(victim)
    infer(trained_checkpoint, small_archive, out, "--no-state")
    assert victim.read_text() == "keep me\n"
    assert len(list(read_rows(out))) == 10 and not partial_path(out).exists()


# --------------------------------------------------------------------------- 13. signals

def test_ctrl_c_during_start_up_exits_130(trained_checkpoint, small_archive, tmp_path, monkeypatch):
    from dcx.engine import cli

    def interrupted(device):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_default_batch_size", interrupted)
    result = invoke(main, ["--engine", trained_checkpoint, small_archive, "--out", tmp_path / "r.csv"],
                    expect_exit=130)
    assert "interrupted" in result.output


def test_a_second_signal_during_shutdown_is_ignored():
    before = signal.getsignal(signal.SIGTERM)
    cleaned = False
    with pytest.raises(KeyboardInterrupt):
        with interrupts.handled():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler raises before this ends
            finally:
                os.kill(os.getpid(), signal.SIGINT)  # the impatient second Ctrl-C
                time.sleep(0.05)
                cleaned = True
    assert cleaned
    assert signal.getsignal(signal.SIGTERM) == before  # restored


TERMINATOR = ("import os, signal\n"
              "from dcx.engine import state\n"
              "real, calls = state.StateDB.record, []\n"
              "def record(self, finished):\n"
              "    n = real(self, finished)\n"
              "    calls.append(n)\n"
              "    if len(calls) == 2:\n"
              "        os.kill(os.getpid(), signal.SIGTERM)\n"
              "        os.kill(os.getpid(), signal.SIGTERM)\n"
              "    return n\n"
              "state.StateDB.record = record\n"
              "from dcx.engine.cli import main\nmain()\n")


def test_sigterm_saves_finished_rows_and_exits_130(trained_checkpoint, small_archive, tmp_path):
    out = tmp_path / "r.csv"
    args = ["--engine", trained_checkpoint, small_archive, "--out", out, "--batch-size", 2]
    proc = subprocess.run([sys.executable, "-c", TERMINATOR, *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and "run the same command again" in proc.stderr
    assert not out.exists()
    _, summary = infer(trained_checkpoint, small_archive, out)
    assert summary["reused_from_state"] == 4 and summary["files"] == 10
