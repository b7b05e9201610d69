"""Measuring tools: repeated timings summarised as median and spread, and child processes
run with their own peak memory.

Every measured run happens in a fresh child process. That is how users run dcx (one
``dcx-infer`` per night), it keeps one run's caches and thread pools out of the next, and it
lets the kernel report that child's own resident-set high-water mark (``wait4``), which a
``getrusage(RUSAGE_SELF)`` inside one long benchmark process could not separate.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass


def summarise(values: list[float]) -> dict:
    """Median, min, max and quartiles of repeated measurements (n=1 allowed)."""
    values = [float(v) for v in values]
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {"n": len(ordered), "median": statistics.median(ordered), "min": ordered[0], "max": ordered[-1],
            "q1": q1, "q3": q3, "values": values}


@dataclass
class ChildRun:
    """Outcome of one child process."""

    command: list[str]
    returncode: int
    wall_s: float
    peak_rss_bytes: int  # the child's (and its waited-for descendants') resident-set maximum
    output: str


def run_child(command: list[str], *, env: dict | None = None) -> ChildRun:
    """Run ``command`` to completion; wall time and the kernel's peak RSS of that very child."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    # Read the pipe before reaping so a chatty child never blocks on a full pipe.
    output = proc.stdout.read().decode("utf-8", "replace")
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return ChildRun(command, proc.returncode, wall, usage.ru_maxrss * 1024, output)  # ru_maxrss is KiB on Linux


def python_module(module: str, *args: str) -> list[str]:
    """A command running ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]
