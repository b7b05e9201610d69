"""Busy seconds per stage, with nesting: while an inner stage runs, the outer one's clock stops.

The decoder's work interleaves (reading a file may fall back to decoding it with the reference
reader), so a flat timer per call would count those seconds twice; this one counts each once.
"""
from __future__ import annotations

import contextlib
import time


class StageClock:
    """``with clock("read"): ...`` adds the seconds spent there (minus nested stages) to
    ``clock.seconds["read"]``. Not thread-safe: one clock per thread."""

    def __init__(self, stages: tuple[str, ...]):
        self.seconds = dict.fromkeys(stages, 0.0)
        self._running: list[str] = []
        self._since = 0.0

    @contextlib.contextmanager
    def __call__(self, stage: str):
        self._switch()
        self._running.append(stage)
        try:
            yield
        finally:
            self._switch()
            self._running.pop()

    def _switch(self) -> None:
        """Credit the time since the last switch to the innermost running stage."""
        now = time.perf_counter()
        if self._running:
            self.seconds[self._running[-1]] += now - self._since
        self._since = now
