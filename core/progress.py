"""Progress of long work on stderr, for a person at a terminal and for a log file alike.

On a terminal the line is redrawn in place a few times a second. When stderr is a file or a
pipe (cron, systemd, Kubernetes logs) a whole line is written every ``DCX_PROGRESS_SECONDS``
seconds (default 30) and at each further tenth of a known total, so a log shows that a
nightly job is alive, how far it got and when it will finish, without drowning in lines.
``DCX_PROGRESS_SECONDS=0`` silences the log lines (the terminal display stays).
"""
from __future__ import annotations

import os
import sys
import time
from typing import TextIO

DEFAULT_LOG_SECONDS = 30.0
TERMINAL_SECONDS = 0.5


def log_interval() -> float | None:
    """Seconds between progress lines in a log; None when they are switched off."""
    raw = os.environ.get("DCX_PROGRESS_SECONDS", "")
    try:
        seconds = float(raw) if raw.strip() else DEFAULT_LOG_SECONDS
    except ValueError:
        seconds = DEFAULT_LOG_SECONDS
    return seconds if seconds > 0 else None


class Progress:
    """``label: 1,234/80,000 files (1.5%)  95.3 files/s  ETA 0:13:50  detail``.

    ``update(done)`` is cheap to call as often as work finishes; it writes only when due.
    """

    def __init__(self, label: str, total: int | None = None, unit: str = "items", *,
                 stream: TextIO | None = None):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stderr
        self.terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = TERMINAL_SECONDS if self.terminal else log_interval()
        self.started = time.perf_counter()
        self.done = 0
        self._last_write = self.started
        self._last_tenth = 0
        self._drawn = False

    def update(self, done: int, detail: str = "", *, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        if self.interval is None:
            return
        now = time.perf_counter()
        tenth = int(10 * done / self.total) if self.total else 0
        due = now - self._last_write >= self.interval
        if not self.terminal and tenth > self._last_tenth:
            due = True
        if due:
            self._last_write, self._last_tenth = now, max(tenth, self._last_tenth)
            self._write(self.line(detail, now))

    def close(self, detail: str = "", *, done: int | None = None) -> None:
        """The last figures: redrawn on a terminal, one final line in a log."""
        if done is not None:
            self.done = done
        if self.interval is None:
            return
        if self.terminal or self.done:
            self._write(self.line(detail, time.perf_counter()))
        if self.terminal and self._drawn:
            self.stream.write("\n")
            self.stream.flush()

    def line(self, detail: str = "", now: float | None = None) -> str:
        elapsed = max((now or time.perf_counter()) - self.started, 1e-9)
        text = f"{self.label}: {self.done:,}"
        if self.total:
            text += f"/{self.total:,} {self.unit} ({100 * self.done / self.total:.1f}%)"
        else:
            text += f" {self.unit}"
        text += f"  {rate(self.done / elapsed, self.unit)}"
        if self.total and self.done:
            text += f"  ETA {clock(max(0.0, (self.total - self.done) * elapsed / self.done))}"
        else:
            text += f"  {clock(elapsed)} elapsed"
        return f"{text}  {detail}" if detail else text

    def _write(self, text: str) -> None:
        if self.terminal:
            self.stream.write(f"\r{text}\x1b[K")
            self._drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def rate(per_second: float, unit: str) -> str:
    """``95.3 files/s``; slow work (a CPU training epoch) per minute, so it never reads 0.0."""
    if per_second >= 1 or per_second == 0:
        return f"{per_second:.1f} {unit}/s"
    return f"{60 * per_second:.1f} {unit}/min"


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
