"""The state database: what a nightly run has already scored, so the next run skips it.

SQLite, one row per (file, model): the file's absolute path, size, mtime and ctime
(nanoseconds) and inode number, the model profile (model id and the model file's hash), the
row's status and the finished result row as JSON. A file counts as done for a model when all
of these match; a changed file is scored again and its entry replaced.

Why ctime and inode, not a content digest: a rewrite that keeps size and mtime (``touch -r``,
``cp -p``, a tool restoring timestamps) cannot set the ctime back -- the kernel stamps it on
every write, ``utime`` and rename, and only a change of the system clock forges it -- and a
file replaced by another (``mv new old``) has another inode. Both come free with the ``stat``
discovery already makes, so an unchanged file is still never opened; a digest would read
every file of the archive every night and still miss changes outside the bytes it samples.
The cost is a rescore when only metadata changed (chmod, chown, a restore from backup). WAL mode; the run commits once per batch, before the rows reach the output
file, so Ctrl-C, a crash or SIGKILL lose at most the batch in flight.

How the output stays exact (each file once) after a kill: the database, not the output file,
is the source of truth. Every run re-materialises its output from scratch in discovery
order -- rows of unchanged files come back from the database, new ones are scored -- into
``<output>.partial``, renamed onto the output when the run completes. A killed run therefore
never leaves duplicates or half rows to repair; the rerun simply re-lists the archive and
reuses everything committed. Rows of every status are reused (an ``error`` row of an
unchanged file stays an error; touch or replace the file to retry it).
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
from pathlib import Path
from typing import Iterable

from dcx.core.errors import DcxError

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    path     BLOB NOT NULL,     -- os.fsencode(absolute path): exact even for non-UTF-8 names
    model_id TEXT NOT NULL,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    status   TEXT NOT NULL,
    row      TEXT NOT NULL,     -- the result row as JSON, without its path
    ctime_ns INTEGER,           -- schema 2; NULL in rows kept from schema 1 (never match)
    inode    INTEGER,
    PRIMARY KEY (path, model_id)
) WITHOUT ROWID;
"""

#: Schema 1 lacked ctime and inode: its rows stay, never match, and are replaced as rescored.
_MIGRATE_FROM_1 = """
ALTER TABLE results ADD COLUMN ctime_ns INTEGER;
ALTER TABLE results ADD COLUMN inode INTEGER;
UPDATE meta SET value = '2' WHERE key = 'schema_version';
"""

#: SQLite's default limit on host parameters per statement is 32766; stay well below.
_LOOKUP_CHUNK = 500


#: A DICOMweb instance URL (see dcx.engine.dicomweb): keyed by its SOP Instance UID.
_DICOMWEB_INSTANCE = re.compile(r"^https?://.*/instances/([0-9.]+)$", re.IGNORECASE)


def state_key(path: str) -> bytes:
    """The database key of a file: its absolute path as bytes (spelling of the root does not
    matter). A DICOMweb instance is keyed by its SOP Instance UID alone, so a server that
    moves or changes its name keeps its history."""
    match = _DICOMWEB_INSTANCE.match(path)
    if match:
        return b"dicomweb:sop:" + match.group(1).encode("ascii")
    return os.fsencode(os.path.abspath(path))


class StateDB:
    """Finished rows of one model, keyed by file; safe to use from two threads (one lock)."""

    def __init__(self, path: str | os.PathLike, model_id: str):
        self.path = Path(path)
        self.model_id = model_id
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            self._check_version()
        except (sqlite3.DatabaseError, OSError) as exc:
            raise DcxError(f"{self.path} is not a usable dcx state database ({exc}); "
                           "pass another --state path or --no-state") from exc
        self._lock = threading.Lock()

    def _check_version(self) -> None:
        found = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if found is None:
            self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif found[0] == "1":
            self._db.executescript(_MIGRATE_FROM_1)
        elif found[0] != str(SCHEMA_VERSION):
            raise DcxError(f"{self.path} has state schema {found[0]}, this dcx writes {SCHEMA_VERSION}; "
                           "pass another --state path")

    def lookup(self, files: Iterable) -> dict[str, dict]:
        """Finished rows of the given files (:class:`~dcx.engine.discover.Candidate`) whose
        size, mtime, ctime and inode still match, by path; the rows lack ``path`` (the caller sets it)."""
        wanted = {state_key(f.path): f for f in files}
        found: dict[str, dict] = {}
        keys = list(wanted)
        with self._lock:
            for i in range(0, len(keys), _LOOKUP_CHUNK):
                part = keys[i : i + _LOOKUP_CHUNK]
                marks = ",".join("?" * len(part))
                query = (f"SELECT path, size, mtime_ns, ctime_ns, inode, row FROM results "
                         f"WHERE model_id = ? AND path IN ({marks})")
                for key, *stat, row in self._db.execute(query, (self.model_id, *part)):
                    f = wanted[key]
                    if stat == [f.size, f.mtime_ns, f.ctime_ns, f.inode]:
                        found[f.path] = json.loads(row)
        return found

    def record(self, finished: Iterable[tuple]) -> int:
        """Store ``(file, row)`` pairs in one transaction (committed on return); returns the count."""
        values = [(state_key(f.path), self.model_id, f.size, f.mtime_ns, row["status"],
                   json.dumps({k: v for k, v in row.items() if k != "path"}), f.ctime_ns, f.inode)
                  for f, row in finished]
        if not values:
            return 0
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:  # a full disk, a quota, a lost mount: one line, no traceback
                raise DcxError(f"cannot write the state database {self.path}: {exc}") from exc
        return len(values)

    def get_meta(self, key: str) -> str | None:
        """A run-level value (e.g. when the last DICOMweb run completed), or None."""
        with self._lock:
            found = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return found[0] if found else None

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def count(self) -> dict[str, int]:
        """Stored rows of this model per status (for summaries and tests)."""
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM results WHERE model_id = ? GROUP BY status",
                                    (self.model_id,)).fetchall()
        return dict(rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "StateDB":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
