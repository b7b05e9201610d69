"""One run per output: an exclusive lock beside the output, held for the whole run.

Two runs on one ``--out`` would both write ``<out>.partial``, interleave rows and overwrite
each other's summary. The lock is ``flock`` on ``<out>.lock``: the kernel drops it when the
holder exits, however it exits (Ctrl-C, SIGKILL, a crash), so a stale lock never blocks the
next night. The file keeps the holder's pid, host and start time so the refusal can name
them. It is never deleted: unlinking a lock file while another run waits on it would let two
runs hold two different files.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

from dcx.core.errors import DcxError


def lock_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".lock")


class OutputLock:
    """``with OutputLock(out):`` -- raises :class:`DcxError` naming the holder when another
    process (on this host, or on another host where the file system supports flock) has it."""

    def __init__(self, out: str | os.PathLike):
        self.path = lock_path(out)
        self._fd: int | None = None

    def __enter__(self) -> "OutputLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise DcxError(f"cannot create the lock file {self.path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read_holder(fd))
            os.close(fd)
            raise DcxError(f"another dcx run is writing this output ({holder}; lock {self.path}); "
                           "wait for it to finish or choose another --out") from None
        except OSError as exc:
            os.close(fd)
            raise DcxError(f"cannot lock {self.path}: {exc.strerror or exc}") from exc
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.now(tz=timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc_info) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None


def _read_holder(fd: int) -> dict:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        return holder if isinstance(holder, dict) else {}
    except ValueError:
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "holder unknown"
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
            f"started {holder.get('started', '?')}")
