"""State database: reuse of finished rows, changed files rescored, per-model keys, durability."""
from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from dcx.engine.discover import Candidate
from dcx.engine.state import StateDB
from dcx.core.errors import DcxError


def row(status="ok", p=0.5):
    return {"path": "ignored", "status": status, "p_positive": p}


FILES = [Candidate(f"/archive/{i}.png", 100 + i, 1_000 + i) for i in range(5)]


def test_lookup_returns_only_finished_unchanged_files(tmp_path):
    with StateDB(tmp_path / "s.sqlite", "model-a") as db:
        assert db.lookup(FILES) == {}
        assert db.record([(FILES[0], row(p=0.9)), (FILES[1], row("error"))]) == 2
        found = db.lookup(FILES)
        assert set(found) == {FILES[0].path, FILES[1].path}
        assert found[FILES[0].path] == {"status": "ok", "p_positive": 0.9}  # path is the caller's
        assert db.count() == {"ok": 1, "error": 1}


@pytest.mark.parametrize("changed", [Candidate("/archive/0.png", 999, 1_000), Candidate("/archive/0.png", 100, 5)])
def test_changed_size_or_mtime_is_not_done_and_its_entry_is_replaced(tmp_path, changed):
    with StateDB(tmp_path / "s.sqlite", "m") as db:
        db.record([(FILES[0], row(p=0.1))])
        assert db.lookup([changed]) == {}
        db.record([(changed, row(p=0.7))])
        assert db.lookup([changed])[changed.path]["p_positive"] == 0.7
        assert db.lookup([FILES[0]]) == {}
        assert sum(db.count().values()) == 1


def test_rows_are_kept_per_model(tmp_path):
    path = tmp_path / "s.sqlite"
    with StateDB(path, "m1") as db:
        db.record([(FILES[0], row())])
    with StateDB(path, "m2") as db:
        assert db.lookup(FILES) == {}
    with StateDB(path, "m1") as db:
        assert FILES[0].path in db.lookup(FILES)


def test_key_is_the_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with StateDB("s.sqlite", "m") as db:
        db.record([(Candidate("a/x.png", 1, 1), row())])
        assert str(tmp_path / "a/x.png") in db.lookup([Candidate(str(tmp_path / "a/x.png"), 1, 1)])
        assert "a/./x.png" in db.lookup([Candidate("a/./x.png", 1, 1)])


def test_large_lookup_and_non_utf8_names(tmp_path):
    files = [Candidate(f"/a/{i}.png", i, i) for i in range(1500)]
    odd = Candidate(b"/a/bad\xff.png".decode("utf-8", "surrogateescape"), 1, 1)
    with StateDB(tmp_path / "s.sqlite", "m") as db:
        db.record([(f, row()) for f in files[::2]] + [(odd, row())])
        found = db.lookup(files + [odd])
        assert len(found) == 751 and odd.path in found


def test_wal_mode(tmp_path):
    StateDB(tmp_path / "s.sqlite", "m").close()
    assert sqlite3.connect(tmp_path / "s.sqlite").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_committed_rows_survive_sigkill(tmp_path):
    """Each record() is durable once it returns: a process killed right after keeps them."""
    path = tmp_path / "s.sqlite"
    code = ("import os, signal\n"
            "from dcx.engine.state import StateDB\n"
            "from dcx.engine.discover import Candidate\n"
            f"db = StateDB({str(path)!r}, 'm')\n"
            "db.record([(Candidate('/x/1.png', 1, 1), {'status': 'ok'})])\n"
            "db.record([(Candidate('/x/2.png', 2, 2), {'status': 'error'})])\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -9
    with StateDB(path, "m") as db:
        assert db.count() == {"ok": 1, "error": 1}


def test_foreign_file_is_a_clear_error(tmp_path):
    bogus = tmp_path / "results.csv"
    bogus.write_text("path,size\n" * 100)
    with pytest.raises(DcxError, match="not a usable dcx state database"):
        StateDB(bogus, "m")


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "s.sqlite"
    StateDB(path, "m").close()
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    con.commit()
    con.close()
    with pytest.raises(DcxError, match="schema 99"):
        StateDB(path, "m")


def test_unwritable_location_is_a_clear_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DcxError, match="not a usable dcx state database"):
        StateDB(tmp_path / "afile" / "s.sqlite", "m")
