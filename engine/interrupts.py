"""Ctrl-C and SIGTERM stop a run the same way, once.

Kubernetes and Slurm stop jobs with SIGTERM, a terminal with SIGINT; both must save what is
done and exit 130 (rerun to resume). A second signal while the run is saving its state must
not abort the saving with a traceback: it is reported and ignored.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Within the block, the first SIGINT or SIGTERM raises KeyboardInterrupt in the main
    thread; later ones only print a note. Outside the main thread this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def on_signal(signum, frame):
        nonlocal fired
        if fired:
            os.write(2, b"\nstill saving finished rows; please wait\n")
            return
        fired = True
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
